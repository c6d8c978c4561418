"""Python entry points behind :class:`~amosc.ir.nodes.Program`'s convenience methods."""

from __future__ import annotations

import numpy as np

from .backends.base import RunResult, get_backend
from .compiler.calibrate import check_input_array
from .errors import ResourceError


def run_program(program, x: np.ndarray, backend: str = "reference", **kw) -> RunResult:
    """Run ``program`` on float inputs x (N, *input_shape) with the named backend.

    Keywords go to the backend's ``run``: ``record`` (spike rasters), ``interval``
    (pipelined: a new input every ``interval`` steps) and ``lanes``.
    """
    x = check_input_array(x, program.input_pop.shape, "input")
    check_interval(program, kw.get("interval", 0))
    return get_backend(backend).run(program, x, **kw)


def check_interval(program, interval: int) -> None:
    """An interval is 0 (every input its own lane) up to the program's latency: beyond it,
    inputs no longer overlap and every further step is idle."""
    if not isinstance(interval, (int, np.integer)) or not 0 <= interval <= max(program.latency, 1):
        raise ResourceError(f"interval {interval!r} is outside 0..{max(program.latency, 1)} (the program's "
                            "latency; a longer interval only adds idle steps)")
