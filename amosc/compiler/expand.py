"""Expand fitted activation gates into segmented AMOS ReLU gates (after calibration).

A gate ``g`` with a scalar function f and calibrated input range [lo, hi] is
replaced by one gate of shape (C * S, ...) whose channel c * S + s is the
clipped ADC of segment s of channel c (see :mod:`.activations`)::

    g(x)[c] = f(lo) + sum_s slope_s * clip(x[c] - b_s, 0, w_s)

Every expression that read ``g`` now reads the segments through a
:class:`~.linear.ChannelSum` of the slopes, plus the constant f(lo) in its bias.
"""

from __future__ import annotations

import numpy as np

from . import linear as L
from .activations import fit
from .importer import Expr, FloatGraph, GateSpec


def expand_fitted(fg: FloatGraph, ranges: dict, bits: int) -> FloatGraph:
    """Replace every fitted gate (``gate.fn``) by its segments; ``ranges[name] = (lo, hi)``."""
    replaced: dict[str, tuple[L.ChannelSum, float]] = {}  # gate -> (segment sum, f(lo))
    gates = []
    for gate in fg.gates:
        expr = _rewire(gate.expr, replaced)
        if gate.fn is None:
            gates.append(_with_expr(gate, expr))
            continue
        lo, hi = ranges[gate.name]
        f = fit(gate.fn, lo, hi, bits)
        c, s = gate.shape[0], f.segments
        shape = (c * s, *gate.shape[1:])
        tile = L.ChannelTile(tuple(gate.shape), shape, s)
        breaks = np.tile(np.asarray(f.breaks[:-1]), c)
        widths = np.tile(f.widths(), c)
        seg = expr.apply(tile, -np.broadcast_to(L.per_channel(breaks, shape), shape))
        new = GateSpec(gate.name, shape, seg, gate.activation, widths, gate.pre_tensor, gate.tensor,
                       gate.node, fixed_alpha=widths, bits=f.bits, fit=f)
        gates.append(new)
        slopes = np.broadcast_to(np.asarray(f.slopes), (c, s)).copy()
        replaced[gate.name] = (L.ChannelSum(shape, tuple(gate.shape), slopes), f.offset)
    fg.gates = gates
    fg.readout = _rewire(fg.readout, replaced)
    return fg


def _with_expr(gate: GateSpec, expr: Expr) -> GateSpec:
    if expr is gate.expr:
        return gate
    from dataclasses import replace
    return replace(gate, expr=expr)


def _rewire(e: Expr, replaced: dict) -> Expr:
    if not any(src in replaced for src in e.maps):
        return e
    maps, bias = {}, e.bias.astype(np.float64).copy()
    for src, m in e.maps.items():
        if src in replaced:  # the segment gate keeps the name of the gate it replaces
            csum, offset = replaced[src]
            bias = bias + m.apply(np.full((1, *m.in_shape), offset))[0]
            m = L.compose(m, csum)
        L.accumulate(maps, src, m)
    return Expr(e.shape, maps, bias)
