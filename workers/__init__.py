"""Celery task wrappers and the embedded runner: glue between dfusion_core and services."""
