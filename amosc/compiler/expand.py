"""Expand fitted activation gates into segmented AMOS ReLU gates (after calibration), and
(``expand_products``, before that) per-channel product square pairs into gated product circuits.

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
from .activations import CHORD_TOLERANCE, ScalarFn, adc_code, fit_layer, kink_point
from .calibrate import FitRange
from .unitfit import fit_unit
from ..ir.tensor import Expr, Gate, TensorGraph


def expand_fitted(fg: TensorGraph, ranges: dict, bits: int, balance: dict | None = None,
                  tolerance: float = CHORD_TOLERANCE, split: bool = False, rounding: str = "round",
                  units: int = 0) -> TensorGraph:
    """Replace every fitted gate (``gate.fn``) by its segments (chord ``tolerance`` in output
    steps, see :func:`~.activations.fit_layer`); ``ranges[name]``: a
    :class:`~.calibrate.FitRange` (or a bare (lo, hi)), two arrays (C,) of per-channel bounds
    and, when it has a sample of the gate's input, the unit's mean error on it is taken out
    of its offsets (:func:`_centre`; ``rounding``: the ADCs' rounding); ``split``: allow the
    ReLU split. ``balance[u]``: the per-channel factor a of a
    product's square pair (u, v), whose inputs become u' = alpha u + beta v and
    v' = beta u + alpha v with alpha = (a + 1/a) / 2, beta = (a - 1/a) / 2. ``units`` N > 0
    (``--fitted-units``): a fitted gate (not a product's square) becomes one N-neuron fitted
    AMOS unit per element instead (:mod:`.unitfit`, fitted on its calibration sample) where
    that unit's rms error on the sample is at most the segments' (so never a less accurate
    gate); its ``bits`` are N. A gate's own ``units`` overrides N (per-layer unit size).
    Without a sample (bare ranges) the segments stay."""
    squares = fg.squares
    replaced: dict[str, Expr] = {}   # gate -> its value read from its segments (and ReLU part)
    balanced: dict[str, Expr] = {}
    by_name = {g.name: g for g in fg.gates}
    gates = []
    for gate in fg.gates:
        expr = balanced.pop(gate.name, None) or _substitute(gate.expr, replaced)
        if gate.partner is not None and balance and gate.name in balance:
            u, v = expr, _substitute(by_name[gate.partner].expr, replaced)
            a = np.asarray(balance[gate.name].a, np.float64)
            alpha, beta = (a + 1 / a) / 2, (a - 1 / a) / 2
            expr = _mix(u, alpha, v, beta)
            balanced[gate.partner] = _mix(u, beta, v, alpha)
        if gate.fn is None:
            gates.append(_with_expr(gate, expr))
            continue
        c = gate.shape[0]
        rng = ranges[gate.name]
        bounds = (rng.lo, rng.hi) if isinstance(rng, FitRange) else rng
        lo, hi = (np.broadcast_to(np.asarray(v, np.float64), (c,)) for v in bounds)
        k = gate.bits or bits   # a gate's own K first
        f = fit_layer(gate.fn, lo, hi, k, tolerance)
        relu = _relu_split(gate, f, lo, hi, k, tolerance) if split else None
        top = None
        if relu is not None:   # s relu(x - x0): a ReLU gate on [0, hi - x0] (a dead channel: its hi)
            f, s, x0 = relu
            f = replace(f, relu=(f"{gate.name}_relu", s))
            top = np.where(hi > x0, hi - x0, hi.max())
        if isinstance(rng, FitRange) and rng.sample is not None:
            adc = None if relu is None else (relu[1], relu[2], top)   # the ReLU split's ADC: slopes, kinks, tops
            f = _centre(gate.fn, f, rng.sample, k, rounding, adc)
            n = units if gate.units is None else gate.units   # a gate's own unit size first
            if n and gate.name not in squares:
                seg_rms = _rms(_fit_value(f, rng.sample, k, rounding, adc) - gate.fn(np.asarray(rng.sample, np.float64)))
                unit = _unit_gate(gate, expr, rng.sample, n, seg_rms)
                if unit.fit.rms_err <= seg_rms:   # the unit where it is at least as accurate
                    gates.append(unit)
                    replaced[gate.name] = _segment_sum(gate, tuple(gate.shape), unit.fit, None)
                    continue
        if relu is not None:
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
        replaced[gate.name] = _segment_sum(gate, shape, f, None if relu is None else (f"{gate.name}_relu", relu[1]))
    return replace(fg, gates=gates, readout=_substitute(fg.readout, replaced))


def _unit_gate(gate: Gate, expr: Expr, sample: np.ndarray, units: int, seg_rms: float) -> Gate:
    """``gate`` as one fitted AMOS unit of ``units`` neurons per element, fitted on ``sample``
    (same shape and input; the readers read offset + its decoded code, through
    :func:`_segment_sum` with S = 1). ``seg_rms``: the segments' rms error on the sample, kept
    in the fit for reports. Each channel's mean error on its sample is taken out of its offset
    (:meth:`~.unitfit.UnitFit.centre`); ``rms_err`` is then measured on the whole sample."""
    f = replace(fit_unit(gate.fn, sample, units, channels=gate.shape[0]).centre(gate.fn, sample),
                segments_rms_err=float(seg_rms))
    return Gate(gate.name, tuple(gate.shape), expr, gate.activation, None, gate.pre_tensor, gate.tensor,
                gate.node, bits=f.bits, fit=f, weight_bits=gate.weight_bits)


def _rms(err) -> float:
    return float(np.sqrt(np.mean(np.square(err))))


def _segment_sum(gate: Gate, shape: tuple, f, relu) -> Expr:
    """The value of fitted ``gate`` read from its segment gate (same name, ``shape``): v_c0 +
    sum_s slope_cs * segment_cs, plus s * relu_K for a ReLU split (``relu``: (its gate, s))."""
    out = tuple(gate.shape)
    maps = {}
    if relu is not None:   # the ReLU split's linear part: s * relu_K
        maps[relu[0]] = L.Scale(out, out, np.asarray(relu[1], np.float64))
    maps[gate.name] = L.ChannelSum(shape, out, f.slopes)   # the segment gate keeps the gate's name
    return Expr(out, maps, np.broadcast_to(L.per_channel(f.offsets, out), out))


def _centre(fn, f, sample: np.ndarray, bits: int, rounding: str, relu=None):
    """``f`` (a LayerFit) with each channel's mean error on ``sample`` (C, m: calibration
    values of the gate's input) subtracted from its offset. A fitted unit's error is a fixed
    function of its input (chords, each segment's rounding, saturation outside [lo, hi]);
    over the values a channel actually takes its mean is not zero, and the next layer sums
    it over its fan-in into a bias, as the plane floors' (:mod:`.floor_bias`). The offset
    folds into the readers' biases: no neuron is added. ``relu``: (slopes s, kinks x0, tops)
    of a ReLU split, whose K-bit ADC of x - x0 on [0, top] is part of the unit's value.
    Measured (EfficientNet fixture, K=4, fit tolerance 0.5, ReLU split, gated products, top-1
    agreement with onnxruntime on 1000 held-out images): 90.6% -> 92.5%; without the
    rounding in the measured error 88.9% (docs/onnx-support.md)."""
    x = np.asarray(sample, np.float64)
    err = (_fit_value(f, x, bits, rounding, relu) - fn(x)).mean(axis=1)
    return replace(f, fits=tuple(replace(fc, offset=fc.offset - float(e)) for fc, e in zip(f.fits, err)),
                   centred=tuple(float(e) for e in err))


def _fit_value(f, x: np.ndarray, bits: int, rounding: str, relu=None) -> np.ndarray:
    """The value of segmented unit ``f`` (a LayerFit) on float inputs x (C, m), one row per
    channel: its segments (each rounded) and, with ``relu`` (slopes, kinks, tops), the ReLU
    split's K-bit ADC."""
    x = np.asarray(x, np.float64)
    value = np.stack([fc.evaluate(row, rounding) for fc, row in zip(f.fits, x)])
    if relu is not None:
        s, x0, top = (np.asarray(v, np.float64)[:, None] for v in relu)
        levels = 2**bits - 1
        step = top / levels
        value += s * adc_code(np.maximum(x - x0, 0.0), step, levels, rounding) * step
    return value


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
    return _times(u, cu).plus(_times(v, cv))


def _with_expr(gate: Gate, expr: Expr) -> Gate:
    if expr is gate.expr:
        return gate
    return replace(gate, expr=expr)


def expand_products(fg: TensorGraph, balance: dict, bits: int, rounding: str = "round") -> TensorGraph:
    """Replace every product square pair whose factor s is one value per channel
    (``Gate.factors``: squeeze-excitation's x * s) by the **gated product circuit**, after
    calibration (``balance[u]``: a :class:`~.pipeline.PairCalibration` with the per-channel
    ranges [x_lo, x_hi] of x and [s_lo, s_hi] of s).

    With x' = x - x_lo in [0, X] and s' = (s - s_lo) / S in [0, 1]:

        x * s = s_lo x + x_lo (s - s_lo) + S x' s',     x' s' ~ sum_j 2^-j relu(x' + X b_j - X)

    b_j (j = 1..K) are the binary digits of s' rounded to K bits, one 1-bit gate per channel each,
    in a chain (``<u>_bit<j>``: b_j = [2^(j-1) s'' - sum_{i<j} 2^(j-1-i) b_i >= 1/2], s'' = s' +
    2^-(K+1)); relu(x' + X b_j - X) is x' where b_j = 1 and 0 where b_j = 0 (x' <= X), a K-bit
    ADC gate on [0, X] per element (``<u>_and<j>``). The first two terms are linear in the
    factors and go to the readers as they are. Neurons: K per channel for the digits and K^2 per
    element, against the two square banks' segments; error: the K-bit ADCs' rounding weighted by
    S 2^-j (about half an output step of x times S) plus x' times s's rounding to K bits
    (at most X S 2^-(K+1)); x outside its calibrated range leaks (b_j = 0 passes relu(x' - X)).
    Latency: K more steps on s's path (the digit chain). Every reader of the pair reads it as
    u - v (the importer's x y = u^2 - v^2); the substitution checks that."""
    pairs = {g.name: g for g in fg.gates
             if g.factors is not None and g.name in (balance or {}) and balance[g.name].x_range is not None}
    if not pairs:
        return fg
    partner = {g.name: g.partner for g in pairs.values()}
    shapes = {g.name: tuple(g.shape) for g in fg.gates}
    subst: dict = {}   # gate -> expression of its value for its readers (None: read as zero)
    gates = []
    for gate in fg.gates:
        if gate.name in subst:
            continue
        _check_pair_readers(gate.expr, partner, shapes, gate.name)
        expr = _substitute(gate.expr, subst)
        if gate.name in pairs:
            x, s = (_substitute(e, subst) for e in gate.factors)
            new, product = _gated_product(gate, x, s, balance[gate.name], gate.bits or bits, rounding)
            gates.extend(new)
            subst[gate.name], subst[gate.partner] = product, None
            continue
        gates.append(_with_expr(gate, expr))
    _check_pair_readers(fg.readout, partner, shapes, "the readout")
    readout = _substitute(fg.readout, subst)
    return replace(fg, gates=gates, readout=readout)


def _times(e: Expr, c) -> Expr:
    """c * e with per-channel factors c (C,)."""
    return e.apply(L.Scale(e.shape, e.shape, np.broadcast_to(np.asarray(c, np.float64), (e.shape[0],)).copy()))


def _broadcast(shape_s: tuple, shape: tuple) -> L.LinearMap:
    """(C, 1, 1) -> (C, H, W): every position of channel c takes element c."""
    import scipy.sparse as sp
    n = int(np.prod(shape))
    cols = np.repeat(np.arange(shape[0]), n // shape[0])
    return L.sparse_map(shape_s, shape, sp.csr_matrix((np.ones(n), (np.arange(n), cols)), shape=(n, shape[0])))


def _gated_product(gate: Gate, x: Expr, s: Expr, pc, k: int, rounding: str):
    """(the circuit's gates, the product's expression) for :func:`expand_products`."""
    shape, c = tuple(gate.shape), gate.shape[0]
    shape_s = (c, 1, 1)
    (xlo, xhi), (slo, shi) = ((np.asarray(a, np.float64) for a in r) for r in (pc.x_range, pc.s_range))
    big_x = np.where(xhi > xlo, xhi - xlo, 1.0)     # a constant channel: x' = 0, any range will do
    big_s = np.where(shi > slo, shi - slo, 1.0)
    # s'' = (s - s_lo) / S + 2^-(K+1); the digits of s'' truncated are those of s' rounded
    s2 = _times(s, 1.0 / big_s)
    s2 = Expr(shape_s, s2.maps, s2.bias + L.per_channel(-slo / big_s + 2.0 ** -(k + 1), shape_s))
    lift = 0.5 if rounding == "floor" else 0.0       # b = [z >= 1/2] under either ADC rounding
    ones = np.ones(c)
    digits: list = []
    for j in range(1, k + 1):
        z = s2.scaled(2.0 ** (j - 1))
        for i, b in enumerate(digits, start=1):
            z = z.plus(Expr(shape_s, {b.name: L.identity(shape_s)}, np.zeros(shape_s)), -(2.0 ** (j - 1 - i)))
        z = Expr(shape_s, z.maps, z.bias + lift)
        # a 1-bit ADC on [0, 1] (its float value in the tensor IR is the relaxation clip(z, 0, 1))
        digits.append(Gate(f"{gate.name}_bit{j}", shape_s, z, "digit", 1.0, "", "", gate.node,
                           fixed_alpha=ones, bits=1, weight_bits=gate.weight_bits))
    bcast = _broadcast(shape_s, shape)
    xp = Expr(shape, x.maps, x.bias - L.per_channel(xlo, shape))
    ands = []
    for j, b in enumerate(digits, start=1):
        gated = {b.name: L.compose(L.Scale(shape, shape, big_x), bcast)}
        e = xp.plus(Expr(shape, gated, -np.broadcast_to(L.per_channel(big_x, shape), shape)))
        ands.append(Gate(f"{gate.name}_and{j}", shape, e, "gated", None, "", "", gate.node,
                         fixed_alpha=big_x, bits=gate.bits, weight_bits=gate.weight_bits))
    product = _times(x, slo).plus(_times(s.apply(bcast), xlo))
    product = Expr(shape, product.maps, product.bias - np.broadcast_to(L.per_channel(xlo * slo, shape), shape))
    for j, r in enumerate(ands, start=1):
        product = product.plus(Expr(shape, {r.name: L.Scale(shape, shape, big_s * 2.0 ** -j)}, np.zeros(shape)))
    return [*digits, *ands], product


def _check_pair_readers(e: Expr, partner: dict, shapes: dict, where: str) -> None:
    """A reader of a product pair (u, v) must read it as u - v: its map from v is minus its map
    from u (checked on a random input), so that u's map applied to the product and v's dropped
    give the same value."""
    from ..errors import IRError
    for u, v in partner.items():
        if u in e.maps or v in e.maps:
            mu, mv = e.maps.get(u), e.maps.get(v)
            probe = np.random.default_rng(0).standard_normal((1, *shapes[u]))
            if mu is None or mv is None or not np.allclose(mu.apply(probe), -mv.apply(probe), rtol=1e-9, atol=1e-9):
                raise IRError(f"{where}: reads the product squares {u!r}, {v!r} other than as their difference")


def _substitute(e: Expr, subst: dict) -> Expr:
    """``e`` with every gate in ``subst`` replaced by its expression (None: dropped, read as zero)."""
    if not any(src in subst for src in e.maps):
        return e
    maps, bias = {}, np.array(e.bias, np.float64)
    for src, m in e.maps.items():
        rep = subst.get(src, False)
        if rep is False:
            L.accumulate(maps, src, m)
        elif rep is not None:
            bias = bias + m.apply(np.asarray(rep.bias, np.float64)[None])[0]
            for s2, m2 in rep.maps.items():
                L.accumulate(maps, s2, L.compose(m, m2))
    return Expr(e.shape, maps, bias)
