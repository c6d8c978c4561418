"""Lower a calibrated :class:`FloatGraph` to the integer AMOS IR.

For every population P the compiler picks an integer step theta_P: one code unit
of P's input is theta_P accumulator units, so one accumulator unit is worth
u_P = scale_P / theta_P. theta_P is the largest value for which the worst case of
P's input (every source at any code) provably fits the 18-bit synaptic range and
the bias fits its 13-bit mantissa; a larger theta means a finer accumulator.
Weights become 8-bit mantissas with one power-of-two exponent per projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import RangeError
from ..ir.nodes import (ACC_LIMIT, BIAS_LIMIT, ENABLE, MAX_WEIGHT_SHIFT, WEIGHT_MAX, Code, GatePop, InputPop, Program, Projection,
                        ReadoutPop)
from ..ir.verify import check_ranges, max_plane_shift
from . import linear as L
from .importer import FloatGraph

MARGIN = 0.97  # head-room for mantissa rounding; the exact bound is re-checked after


@dataclass(frozen=True)
class Options:
    bits: int = 8
    calibration: str = "percentile"  # or "max"
    percentile: float = 99.99
    rounding: str = "round"          # or "floor" (the paper's truncating ADC)

    def __post_init__(self):
        from ..errors import AmoscError
        if not 1 <= self.bits <= 16:
            raise AmoscError(f"--bits must be in 1..16, got {self.bits}")
        if self.calibration not in ("percentile", "max"):
            raise AmoscError(f"calibration must be 'percentile' or 'max', got {self.calibration!r}")
        if not 0 < self.percentile <= 100:
            raise AmoscError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.rounding not in ("round", "floor"):
            raise AmoscError(f"rounding must be 'round' or 'floor', got {self.rounding!r}")


def mantissa_floor(v: int) -> int:
    """The largest m * 2^x <= v with m < 128: an inhibition weight h_j = theta * 2^(K-1-j)
    must be an 8-bit synaptic mantissa times a power of two."""
    if v <= 127:
        return v
    x = v.bit_length() - 7
    return (v >> x) << x


def _mantissas(m: L.LinearMap, factor: float):
    """Quantize map*factor to int8 mantissas with one exponent; None when all zero."""
    if isinstance(m, L.Scale):
        vals = m.full() * factor
    elif isinstance(m, L.Conv):
        vals = m.w * factor
    elif isinstance(m, L.Dense):
        vals = m.w * factor
    else:
        vals = m.m.data * factor
    peak = float(np.abs(vals).max()) if vals.size else 0.0
    if peak == 0.0:
        return None
    e = math.ceil(math.log2(peak / 127.49))
    q = np.clip(np.rint(vals / 2.0**e), -128, 127).astype(np.int8)
    return q, e


def _projection(name, src, tgt, m: L.LinearMap, factor: float) -> Projection | None:
    got = _mantissas(m, factor)
    if got is None:
        return None
    q, e = got
    ins, outs = tuple(m.in_shape), tuple(m.out_shape)
    if isinstance(m, L.Conv):
        return Projection(name, src, tgt, "conv", q, e, ins, outs, m.attrs())
    if isinstance(m, L.Scale) and len(ins) == 3:
        w = q[:, :1, :1].reshape(ins[0], 1, 1, 1)  # per-channel constant
        attrs = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=ins[0])
        return Projection(name, src, tgt, "conv", np.ascontiguousarray(w), e, ins, outs, attrs)
    if isinstance(m, L.Scale):
        mat = sp.diags(q.ravel().astype(np.int8)).tocsr()
        return Projection(name, src, tgt, "sparse", _csr_int8(mat), e, ins, outs)
    if isinstance(m, L.Dense):
        return Projection(name, src, tgt, "dense", q, e, ins, outs)
    mat = m.m.copy()
    mat.data = q.astype(np.float64)
    return Projection(name, src, tgt, "sparse", _csr_int8(mat), e, ins, outs)


def _csr_int8(mat) -> sp.csr_matrix:
    mat = sp.csr_matrix(mat)
    mat.eliminate_zeros()
    out = sp.csr_matrix((mat.data.astype(np.int8), mat.indices, mat.indptr), shape=mat.shape)
    return out


def lower(fg: FloatGraph, alphas: dict, input_range: tuple, opts: Options) -> Program:
    """Build the integer program. ``alphas``: calibrated upper range per gate name;
    ``input_range``: (lo, hi) of the input values."""
    K = opts.bits
    maxcode = 2**K - 1
    lo, hi = input_range
    if not hi > lo:
        hi = lo + 1.0
    inp = InputPop("input", fg.input_shape, K, (hi - lo) / maxcode, float(lo))
    pops: list = [inp]
    projs: list = []
    value_step = {"input": inp.scale}     # float value of one code unit, per source
    code_of = {"input": inp.code}
    zero_point = {"input": inp.zero_point}

    def build(name, expr, shape, scale, gate):
        """Return (population, projections) for a target with input expr."""
        bias = expr.bias.astype(np.float64).copy()
        pos = np.zeros(shape)
        neg = np.zeros(shape)
        for src, m in expr.maps.items():
            if zero_point.get(src, 0.0):
                bias += m.apply(np.full((1, *m.in_shape), zero_point[src]))[0]
            p, n = m.row_sums()
            vmax = value_step[src] * maxcode
            pos += p * vmax
            neg += n * vmax
        syn = float(np.max(np.maximum(pos, -neg))) if pos.size else 0.0
        bmax = float(np.abs(bias).max()) if bias.size else 0.0
        inh = maxcode if gate else 0
        # units: u = scale / theta;  need (syn + bmax) / u + inh * theta + ENABLE <= LIMIT
        if gate:
            cap = (MARGIN * ACC_LIMIT - ENABLE) / ((syn + bmax) / scale + inh)
            # the MSB unit's inhibition weight theta * 2^(K-1) is an 8-bit mantissa times 2^s
            cap = min(cap, WEIGHT_MAX * 2**MAX_WEIGHT_SHIFT / 2 ** (K - 1))
            if bmax > 0:
                cap = min(cap, MARGIN * BIAS_LIMIT * scale / bmax)
            theta = mantissa_floor(int(math.floor(cap)))
            if theta < 1:
                raise RangeError(
                    f"layer {name!r}: its worst-case input ({syn + bmax:.4g}) is "
                    f"{(syn + bmax) / scale:.4g} output steps; at K={K} bits that does not fit "
                    f"the 18-bit accumulator. Use fewer --bits or calibrate with 'max'.")
        else:
            theta = 1
        coarser = 1.0  # readout: factor on the finest safe unit
        for _ in range(60):
            u = scale / theta if gate else max((syn + bmax) / (MARGIN * ACC_LIMIT),
                                                bmax / (MARGIN * BIAS_LIMIT), 1e-30) * coarser
            ps = []
            for src, m in expr.maps.items():
                pr = _projection(f"{src}->{name}", src, name, m, value_step[src] / u)
                if pr is not None:
                    ps.append(pr)
            excess = max([max_plane_shift(pr, code_of[pr.source]) - MAX_WEIGHT_SHIFT for pr in ps] + [0])
            if excess > 0:  # weights too large for 8-bit mantissas: coarser accumulator
                if gate:
                    theta = mantissa_floor(max(1, theta >> excess))
                else:
                    coarser *= 2.0**excess
                continue
            b = np.clip(np.rint(bias / u), -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)
            if gate:
                offset = theta // 2 if opts.rounding == "round" else 0
                pop = GatePop(name, shape, Code.binary(K, theta, offset), b, float(scale))
            else:
                pop = ReadoutPop(name, shape, b, float(u))
            trial = Program([*pops, pop], [*projs, *ps], "input", name)
            try:
                check_ranges(trial, name)
                return pop, ps
            except RangeError:
                if gate and theta > 1:
                    theta = mantissa_floor(max(1, int(theta * 0.9)))
                elif not gate:
                    coarser *= 1.1
                else:
                    raise
        raise RangeError(f"layer {name!r}: no accumulator scale satisfies the 18-bit range")

    for gs in fg.gates:
        alpha = float(alphas[gs.name])
        if gs.upper is not None:
            alpha = min(alpha, gs.upper)
        if not alpha > 0:
            alpha = 1.0  # a dead gate: it never fires; any scale works
        scale = alpha / maxcode
        pop, ps = build(gs.name, gs.expr, gs.shape, scale, gate=True)
        from dataclasses import replace
        pop = replace(pop, activation=gs.activation, tensor=gs.tensor)
        pops.append(pop)
        projs.extend(ps)
        value_step[gs.name] = scale
        code_of[gs.name] = pop.code
    pop, ps = build("output", fg.readout, fg.readout.shape, 1.0, gate=False)
    from dataclasses import replace
    pops.append(replace(pop, tensor=fg.readout_tensor))
    projs.extend(ps)
    from .passes import schedule_asap
    return schedule_asap(Program(pops, projs, "input", "output"))
