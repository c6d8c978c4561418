"""Passes over the tensor IR (:mod:`amosc.ir.tensor`): ``TensorGraph -> TensorGraph``.

:func:`run_tensor_passes` verifies the graph after each pass and names the pass that
broke it, like the integer-level manager in :mod:`amosc.compiler.pipeline`. The passes:

- ``drop_dead_gates``: remove gates nothing reads (e.g. a Sigmoid fused into a SiLU unit);
- ``relay_input`` (during lowering, only for a fitted gate whose input does not fit the
  accumulator): the gate reads its pre-activation through two ReLU relay gates;
- ``expand_products`` (:mod:`.expand`, after calibration, with ``--product gated``): replace a
  product square pair whose factor is one value per channel by the gated product circuit;
- ``expand_fitted`` (:mod:`.expand`, after calibration): replace every fitted gate by its
  ADC segments and re-mix the inputs of balanced product square pairs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import IRError
from ..ir import linear as L
from ..ir.tensor import Expr, Gate, TensorGraph, verify_graph


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


def relay_input(g: TensorGraph, name: str) -> TensorGraph:
    """Gate ``name`` (fitted) reads its pre-activation z through two ReLU relay gates,
    z = relu(z) - relu(-z): each relay is an ADC on z's calibrated range, whose accumulator a
    wide fan-in always fits (a ReLU gate coarsens a channel's step instead of refusing), and
    the fitted gate's own input becomes two codes per element, a worst case of a few of its
    fine output steps. Used when lowering finds the fitted gate's worst-case input too large
    for the accumulator (``pipeline.build``); costs 2K neurons per element, K steps and one
    K-bit quantization of z."""
    gates = []
    for gate in g.gates:
        if gate.name != name:
            gates.append(gate)
            continue
        halves = []
        for sign, suffix in ((1.0, "pos"), (-1.0, "neg")):
            e = gate.expr if sign > 0 else gate.expr.scaled(-1.0)
            r = Gate(f"{name}_relay_{suffix}", gate.expr.shape, Expr(e.shape, e.maps, e.bias), "relay", None,
                     "", "", gate.node)
            gates.append(r)
            halves.append(r.name)
        shape = gate.expr.shape
        ident = L.identity(shape)
        neg = L.Scale(shape, shape, -np.ones(shape[0]))
        gates.append(replace(gate, expr=Expr(shape, {halves[0]: ident, halves[1]: neg}, np.zeros(shape))))
    return replace(g, gates=gates)


#: The tensor passes run right after import, in order.
IMPORT_PASSES = (drop_dead_gates,)
