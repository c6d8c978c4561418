"""Expand fitted activation gates into segmented AMOS ReLU gates (after calibration).

A gate ``g`` with a scalar function f and calibrated input range [lo_c, hi_c] per
channel c is replaced by one gate of shape (C * S, ...) whose channel c * S + s is
the clipped ADC of segment s of channel c (see :mod:`.activations`)::

    g(x)[c] = f(lo_c) + sum_s slope_cs * clip(x[c] - b_cs, 0, w_cs)

Every expression that read ``g`` now reads the segments through a
:class:`~.linear.ChannelSum` of the slopes, plus the constants f(lo_c) in its bias.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import linear as L
from .activations import CHORD_TOLERANCE, fit_layer
from ..ir.tensor import Expr, Gate, TensorGraph


def expand_fitted(fg: TensorGraph, ranges: dict, bits: int, balance: dict | None = None,
                  tolerance: float = CHORD_TOLERANCE) -> TensorGraph:
    """Replace every fitted gate (``gate.fn``) by its segments (chord ``tolerance`` in output
    steps, see :func:`~.activations.fit_layer`); ``ranges[name] = (lo, hi)``,
    two arrays (C,) of per-channel bounds. ``balance[u]``: the per-channel factor a of a
    product's square pair (u, v), whose inputs become u' = alpha u + beta v and
    v' = beta u + alpha v with alpha = (a + 1/a) / 2, beta = (a - 1/a) / 2."""
    replaced: dict[str, tuple[L.ChannelSum, np.ndarray]] = {}  # gate -> (segment sum, f(lo_c))
    balanced: dict[str, Expr] = {}
    by_name = {g.name: g for g in fg.gates}
    gates = []
    for gate in fg.gates:
        expr = balanced.pop(gate.name, None) or _rewire(gate.expr, replaced)
        if gate.partner is not None and balance and gate.name in balance:
            u, v = expr, _rewire(by_name[gate.partner].expr, replaced)
            a = np.asarray(balance[gate.name], np.float64)
            alpha, beta = (a + 1 / a) / 2, (a - 1 / a) / 2
            expr = _mix(u, alpha, v, beta)
            balanced[gate.partner] = _mix(u, beta, v, alpha)
        if gate.fn is None:
            gates.append(_with_expr(gate, expr))
            continue
        c = gate.shape[0]
        lo, hi = (np.broadcast_to(np.asarray(v, np.float64), (c,)) for v in ranges[gate.name])
        f = fit_layer(gate.fn, lo, hi, gate.bits or bits, tolerance)  # a gate's own K first
        shape = (c * f.segments, *gate.shape[1:])
        tile = L.ChannelTile(tuple(gate.shape), shape, f.segments)
        breaks = f.breaks[:, :-1].ravel()
        widths = f.widths().ravel()
        seg = expr.apply(tile, -np.broadcast_to(L.per_channel(breaks, shape), shape))
        new = Gate(gate.name, shape, seg, gate.activation, widths, gate.pre_tensor, gate.tensor,
                       gate.node, fixed_alpha=widths, bits=f.bits, fit=f)
        gates.append(new)
        replaced[gate.name] = (L.ChannelSum(shape, tuple(gate.shape), f.slopes), f.offsets)
    return replace(fg, gates=gates, readout=_rewire(fg.readout, replaced))


def _mix(u: Expr, cu: np.ndarray, v: Expr, cv: np.ndarray) -> Expr:
    """cu * u + cv * v with per-channel factors (C,)."""
    def times(e, c):
        return e.apply(L.Scale(e.shape, e.shape, np.asarray(c, np.float64)))
    return times(u, cu).plus(times(v, cv))


def _with_expr(gate: Gate, expr: Expr) -> Gate:
    if expr is gate.expr:
        return gate
    return replace(gate, expr=expr)


def _rewire(e: Expr, replaced: dict) -> Expr:
    if not any(src in replaced for src in e.maps):
        return e
    maps, bias = {}, e.bias.astype(np.float64).copy()
    for src, m in e.maps.items():
        if src in replaced:  # the segment gate keeps the name of the gate it replaces
            csum, offsets = replaced[src]
            const = np.broadcast_to(L.per_channel(offsets, m.in_shape), (1, *m.in_shape))
            bias = bias + m.apply(const)[0]
            m = L.compose(m, csum)
        L.accumulate(maps, src, m)
    return Expr(e.shape, maps, bias)
