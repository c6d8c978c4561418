"""Python entry points behind :class:`~amosc.ir.nodes.Program`'s convenience methods."""

from __future__ import annotations

import numpy as np

from .backends.base import RunResult, get_backend
from .compiler.calibrate import check_input_array


def run_program(program, x: np.ndarray, backend: str = "reference", **kw) -> RunResult:
    """Run ``program`` on float inputs x (N, *input_shape) with the named backend.

    Keywords go to the backend's ``run``: ``record`` (spike rasters), ``interval``
    (pipelined: a new input every ``interval`` steps) and ``lanes``.
    """
    x = check_input_array(x, program.input_pop.shape, "input")
    return get_backend(backend).run(program, x, **kw)
