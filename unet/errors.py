"""Errors for bad input. Each message names the input, what was expected and what was found."""


class UNetError(ValueError):
    """Bad input to the library or a job: the command line prints it as one line and exits with 2."""


class CheckpointError(UNetError):
    """A checkpoint that is missing, truncated, not safetensors, or whose config does not fit its weights."""
