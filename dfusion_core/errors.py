"""The library's exception hierarchy: one root, a few kinds callers can act on."""


class DFusionError(Exception):
    """Root of every error dfusion_core raises on purpose."""


class ConfigError(DFusionError, ValueError):
    """A setting or argument is invalid; the message names it and says how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ItemError(ConfigError):
    """An item word does not map onto the prompt's tokens."""


class TrajectoryError(DFusionError):
    """A stored trajectory is malformed or does not fit the model it is used with."""


class BlobNotFound(DFusionError, KeyError):
    """A key is absent from a BlobStore."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "blob not found"
