"""amosc: compile ONNX image classifiers to AMOS spiking networks (at most one spike per neuron)."""

__version__ = "0.1.0"

from .errors import AmoscError  # noqa: E402


def compile(model_path, calib, **options):  # noqa: A001 - the public name users expect
    """Compile an ONNX model; see :func:`amosc.compiler.pipeline.compile_model`."""
    from .compiler.pipeline import compile_model
    return compile_model(model_path, calib, **options)


def load(path):
    """Load a compiled ``.amos`` program."""
    from .ir.serialize import load as _load
    return _load(path)


__all__ = ["AmoscError", "compile", "load", "__version__"]
