"""Errors raised by amosc. Every user-facing failure is an :class:`AmoscError`.

The CLI prints ``error: <message>`` for any of them and exits with status 2;
anything else is a bug in amosc: one ``internal error`` line and status 70, the
traceback only under ``--debug`` or ``AMOSC_DEBUG=1`` (docs/architecture.md#exit-codes).
"""


class AmoscError(Exception):
    """Base class: a problem with the user's input or with a program."""


class ModelError(AmoscError):
    """The ONNX model cannot be read or uses something amosc does not support."""


class CalibrationError(AmoscError):
    """Calibration or input data has the wrong shape, dtype or values."""


class RangeError(AmoscError):
    """A layer cannot be represented in the integer ranges of the target (``layer``: its
    population's name, when one layer is at fault)."""

    def __init__(self, message: str = "", layer: str | None = None):
        super().__init__(message)
        self.layer = layer


class IRError(AmoscError):
    """A program violates the IR's invariants (see docs/ir.md)."""


class ArtifactError(AmoscError):
    """An .amos file is missing, corrupt or of an unsupported version."""


class BackendError(AmoscError):
    """A backend is unknown, unavailable or failed while running a program."""


class ResourceError(AmoscError):
    """A program or a command would exceed a resource limit (neurons, memory, steps)."""


class CalibrationWarning(UserWarning):
    """The calibration data looks wrong for the model (the program may be useless)."""


class PrecisionWarning(UserWarning):
    """The compiler gave a layer less precision than requested (e.g. a fitted unit whose
    worst-case input does not fit the accumulator at the requested K)."""
