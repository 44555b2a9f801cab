"""Exceptions of the runtime."""


class ModelLoadError(ValueError):
    """A model folder or file could not be loaded; the message names the file (and tensor)."""
