"""The `dfusion` command line."""
