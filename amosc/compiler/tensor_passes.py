"""Passes over the tensor IR (:mod:`amosc.ir.tensor`): ``TensorGraph -> TensorGraph``.

:func:`run_tensor_passes` verifies the graph after each pass and names the pass that
broke it, like the integer-level manager in :mod:`amosc.compiler.pipeline`. The passes:

- ``drop_dead_gates``: remove gates nothing reads (e.g. a Sigmoid fused into a SiLU unit);
- ``expand_fitted`` (:mod:`.expand`, after calibration): replace every fitted gate by its
  ADC segments and re-mix the inputs of balanced product square pairs.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import IRError
from ..ir.tensor import TensorGraph, verify_graph


def drop_dead_gates(g: TensorGraph) -> TensorGraph:
    """Remove gates with no path to the readout."""
    live = set(g.readout.maps)
    for gate in reversed(g.gates):
        if gate.name in live:
            live.update(gate.expr.maps)
    return replace(g, gates=[gate for gate in g.gates if gate.name in live])


def run_tensor_passes(g: TensorGraph, passes, dump=None, after: str = "") -> TensorGraph:
    """Run ``passes`` (callables ``TensorGraph -> TensorGraph``, named by ``__name__``) in
    order, verifying after each; ``dump(name, graph)`` is called after each pass (and once
    for the graph as given, named ``after``, when ``after`` is set)."""
    if after:
        _verified(g, after, [])
        if dump:
            dump(after, g)
    done = [after] if after else []
    for p in passes:
        g = p(g)
        _verified(g, p.__name__, done)
        if dump:
            dump(p.__name__, g)
        done.append(p.__name__)
    return g


def _verified(g: TensorGraph, name: str, done: list) -> None:
    try:
        verify_graph(g)
    except IRError as exc:
        raise IRError(f"tensor pass {name} (after {done}) produced an invalid graph: {exc}") from exc


#: The tensor passes run right after import, in order.
IMPORT_PASSES = (drop_dead_gates,)
