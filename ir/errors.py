"""Errors that reach the user as one line: every nlpress failure derives from NlpressError."""


class NlpressError(Exception):
    """A failure that the command line reports as one line and exit code 1."""


class UsageError(NlpressError):
    """A wrong option, pass name or argument: exit code 2."""


class ModelLoadError(NlpressError):
    """A file that is missing, truncated or not a valid ONNX model."""


class VerificationError(NlpressError):
    """A model that fails the checker or differs numerically from its reference."""
