"""Errors the library raises on bad input; callers (CLI, HTTP) turn them into clear messages."""


class DfmscdError(Exception):
    """Base class: anything the user can fix by changing their input."""


class CardError(DfmscdError):
    """The model card is malformed or inconsistent."""


class CheckpointError(DfmscdError):
    """A weights file is unreadable, unsafe, or does not match its architecture."""


class ConfigError(DfmscdError):
    """Hyperparameters, budget or student list are invalid."""


class UnknownArchitectureError(DfmscdError, KeyError):
    """The architecture name is not in the model zoo."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown architecture"


class ExportError(DfmscdError):
    """A student could not be exported to a format, or its exported file failed verification."""
