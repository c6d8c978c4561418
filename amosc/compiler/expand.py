"""Expand fitted activation gates into segmented AMOS ReLU gates (after calibration).

A gate ``g`` with a scalar function f and calibrated input range [lo_c, hi_c] per
channel c is replaced by one gate of shape (C * S, ...) whose channel c * S + s is
the clipped ADC of segment s of channel c (see :mod:`.activations`)::

    g(x)[c] = v_c0 + sum_s slope_cs * clip(x[c] - b_cs, 0, w_cs)

Every expression that read ``g`` now reads the segments through a
:class:`~.linear.ChannelSum` of the slopes, plus the constants v_c0 (the fit's value at lo_c) in its bias.

**ReLU split.** A ReLU-like f (SiLU, GELU, softplus, ELU, hardswish: f(x) - s relu(x)
bounded, see :meth:`~.activations.ScalarFn.relu_slope`) is cheaper as

    g(x) = s * relu_K(x - x0_c) + segments of r(x) = f(x) - s relu(x - x0_c)

when that takes fewer neurons: the K-bit ADC ``relu_K`` (a gate ``<g>_relu``, range
[0, hi_c - x0_c], x0_c within half a fit-grid point of 0) carries the linear part, and the residual r (a bump of small amplitude) needs
few segments at f's own output step. With ``split`` (``--relu-split``) a layer takes
whichever form has fewer neurons per element. The residual keeps the plain fit's bound, the
ReLU ADC's rounding adds up to half a step more (SiLU on [-6, 8], tolerance 0.1: K=8 115 ->
52 neurons per element, max error 0.57 -> 0.99 steps, rms 0.19 -> 0.27; at K=4 little gain).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import linear as L
from .activations import CHORD_TOLERANCE, ScalarFn, fit_layer, kink_point
from ..ir.tensor import Expr, Gate, TensorGraph


def expand_fitted(fg: TensorGraph, ranges: dict, bits: int, balance: dict | None = None,
                  tolerance: float = CHORD_TOLERANCE, split: bool = False) -> TensorGraph:
    """Replace every fitted gate (``gate.fn``) by its segments (chord ``tolerance`` in output
    steps, see :func:`~.activations.fit_layer`); ``ranges[name] = (lo, hi)``,
    two arrays (C,) of per-channel bounds; ``split``: allow the ReLU split. ``balance[u]``: the per-channel factor a of a
    product's square pair (u, v), whose inputs become u' = alpha u + beta v and
    v' = beta u + alpha v with alpha = (a + 1/a) / 2, beta = (a - 1/a) / 2."""
    replaced: dict[str, tuple[L.ChannelSum, np.ndarray]] = {}  # gate -> (segment sum, v_c0, ReLU part)
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
        k = gate.bits or bits   # a gate's own K first
        f = fit_layer(gate.fn, lo, hi, k, tolerance)
        relu = _relu_split(gate, f, lo, hi, k, tolerance) if split else None
        if relu is not None:   # s relu(x - x0): a ReLU gate on [0, hi - x0] (a dead channel: its hi)
            f, s, x0 = relu
            f = replace(f, relu=(f"{gate.name}_relu", s))
            top = np.where(hi > x0, hi - x0, hi.max())
            shifted = expr.apply(L.identity(tuple(gate.shape)), -np.broadcast_to(L.per_channel(x0, gate.shape), gate.shape))
            gates.append(Gate(f"{gate.name}_relu", tuple(gate.shape), shifted, "relu", top, gate.pre_tensor,
                              "", gate.node, fixed_alpha=top, bits=gate.bits, weight_bits=gate.weight_bits))
        shape = (c * f.segments, *gate.shape[1:])
        tile = L.ChannelTile(tuple(gate.shape), shape, f.segments)
        breaks = f.breaks[:, :-1].ravel()
        widths = f.widths().ravel()
        seg = expr.apply(tile, -np.broadcast_to(L.per_channel(breaks, shape), shape))
        new = Gate(gate.name, shape, seg, gate.activation, widths, gate.pre_tensor, gate.tensor,
                       gate.node, fixed_alpha=widths, bits=f.bits, fit=f, weight_bits=gate.weight_bits)
        gates.append(new)
        replaced[gate.name] = (L.ChannelSum(shape, tuple(gate.shape), f.slopes), f.offsets,
                               None if relu is None else (f"{gate.name}_relu", relu[1]))
    return replace(fg, gates=gates, readout=_rewire(fg.readout, replaced))


def _relu_split(gate: Gate, f, lo, hi, bits: int, tolerance: float):
    """(residual LayerFit, slopes s (C,), kinks x0 (C,)) when the ReLU split of ``gate``
    takes fewer neurons per element than the plain fit ``f`` (bits for the ReLU ADC + the
    residual's segments) within the same error bound, else None. Channel c's ReLU part is
    s relu(x - x0_c), x0_c the fit grid's point nearest 0 (so a breakpoint sits on the
    residual's kink); its residual is fitted at the plain fit's output step. A channel whose
    range lies below 0 keeps f whole (s = 0; its ReLU channel is never read)."""
    s = gate.fn.relu_slope()
    if s is None or not np.any(hi > 0):
        return None
    slopes = np.where(hi > 0, s, 0.0)
    kinks = np.array([kink_point(gate.fn, a, b) if v else 0.0 for v, a, b in zip(slopes, lo, hi)])
    kinks = np.where(kinks < lo, lo, kinks)
    fns = [ScalarFn("minus_relu", (float(v), float(k)), gate.fn) if v else gate.fn for v, k in zip(slopes, kinks)]
    r = fit_layer(fns, lo, hi, bits, tolerance, steps=[fc.step for fc in f.fits])
    if bits + r.neurons >= f.neurons or max(fc.max_err / fc.step for fc in r.fits) > tolerance + 0.55:
        return None
    return r, slopes, kinks


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
            csum, offsets, relu = replaced[src]
            const = np.broadcast_to(L.per_channel(offsets, m.in_shape), (1, *m.in_shape))
            bias = bias + m.apply(const)[0]
            if relu is not None:   # the ReLU split's linear part: s * relu_K
                L.accumulate(maps, relu[0], L.compose(m, L.Scale(m.in_shape, m.in_shape, relu[1])))
            m = L.compose(m, csum)
        L.accumulate(maps, src, m)
    return Expr(e.shape, maps, bias)
