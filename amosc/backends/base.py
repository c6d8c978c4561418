"""The backend interface and registry.

A backend turns a :class:`~amosc.ir.nodes.Program` and float inputs into a
:class:`RunResult`. Backends register under the entry-point group
``amosc.backends`` (the built-in ones too), so a third-party package adds one
with, in its pyproject.toml::

    [project.entry-points."amosc.backends"]
    mychip = "mypkg.backend:MyChipBackend"

and it then appears in ``amosc backends`` and in every ``--backend`` choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

import numpy as np

from ..errors import BackendError

GROUP = "amosc.backends"


@dataclass
class RunResult:
    """What a backend returns for N inputs.

    ``output``: integer readout y (N, classes); ``logits``: its float decoding;
    ``spikes``: {population: spikes per input (N,)}; ``rasters`` (when recorded):
    {population: (N, K, *shape) uint8, unit k of the code for input n};
    ``latency``: steps from an input's first spike to its output, inclusive;
    ``steps``: time steps simulated; ``interval``: steps between inputs entering
    a lane (pipelining), 0 when every input had its own lane.
    """

    output: np.ndarray
    logits: np.ndarray
    spikes: dict
    rasters: dict = field(default_factory=dict)
    latency: int = 0
    steps: int = 0
    interval: int = 0
    extra: dict = field(default_factory=dict)


class Backend:
    """Interface. Subclasses set ``name`` and ``description`` and implement :meth:`run`."""

    name = "?"
    description = ""

    def available(self) -> str | None:
        """None when usable here, else the reason it is not."""
        return None

    def run(self, program, x: np.ndarray, *, record: bool = False, interval: int = 0,
            lanes: int | None = None) -> RunResult:
        raise NotImplementedError


def _entry_points():
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_names() -> list[str]:
    names = set(_entry_points())
    names.update(_BUILTIN)
    return sorted(names)


_BUILTIN = {"reference": "amosc.backends.reference:ReferenceBackend",
            "lava": "amosc.backends.lava:LavaBackend",
            "lava-loihi": "amosc.backends.lava:LavaLoihiBackend"}


def get_backend(name: str) -> Backend:
    eps = _entry_points()
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:
            raise BackendError(f"backend {name!r} failed to load from {eps[name].value}: {exc}") from None
    elif name in _BUILTIN:
        import importlib
        mod, _, attr = _BUILTIN[name].partition(":")
        cls = getattr(importlib.import_module(mod), attr)
    else:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    backend = cls() if isinstance(cls, type) else cls
    why = backend.available()
    if why:
        raise BackendError(f"backend {name!r} is not usable here: {why}")
    return backend
