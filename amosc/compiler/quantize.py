"""Lower a calibrated :class:`TensorGraph` to the integer AMOS IR.

For every population P the compiler picks an integer step theta_P: one code unit
of P's input is theta_P accumulator units, so one accumulator unit is worth
u_P = scale_P / theta_P. theta_P is the largest value for which the worst case of
P's input (every source at any code) provably fits the 18-bit synaptic range and
the bias fits its 13-bit mantissa; a larger theta means a finer accumulator.
Weights become 8-bit mantissas with one power-of-two exponent per projection.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from ..errors import PrecisionWarning, RangeError
from ..ir.nodes import (ACC_LIMIT, BIAS_LIMIT, THRESHOLD_LIMIT, ENABLE_SHIFT, MAX_WEIGHT_SHIFT, MIN_WEIGHT_SHIFT, WEIGHT_MAX, Code, GatePop, InputPop, Program, Projection,
                        ReadoutPop)
from ..ir.semantics import max_compartments
from ..ir.verify import check_ranges, max_plane_shift
from ..ir import linear as L
from .activations import CHORD_TOLERANCE
from ..ir.tensor import TensorGraph
from .importer import MAXPOOL_MODES
from .unitfit import MAX_UNIT_NEURONS, UnitFit

MARGIN = 0.97  # head-room for mantissa rounding; the exact bound is re-checked after
THETA_TARGET = 64  # accumulator units per output step to aim for
#: a gated product's digit gate (1 bit, activation "digit"): its input is 2^(j-1) times s's
#: residue, so the plane floors' error is amplified by up to 2^(K-1); aim for finer units
DIGIT_THETA = 4096
THETA_MIN = 8      # below this, coarsen the few channels that limit theta instead


@dataclass(frozen=True)
class Options:
    bits: int = 8
    calibration: str = "mse"  # least K-bit quantization error per channel; or "percentile", "max"
    percentile: float = 99.99
    rounding: str = "round"          # or "floor" (the paper's truncating ADC)
    granularity: str = "channel"     # or "layer": one scale per channel or per population
    weight_bits: int = 16            # 16: a second 8-bit mantissa set carries the rounding residue
    maxpool: str = "tree"            # or "lipool": lateral-inhibition pooling (max-join units)
    fit_tolerance: float = CHORD_TOLERANCE  # fitted units' chord error, in output steps
    relu_split: bool = False         # ReLU-like fitted units may be a ReLU ADC + residual segments
    bias_correction: int = 32        # calibration inputs the floor-bias pass measures on (0: off)
    product: str = "squares"         # or "gated": x * s with s per channel as a digit-gated circuit
    fitted_units: int = 0            # N > 0: fitted activations as N-neuron fitted AMOS units (unitfit.py)

    def __post_init__(self):
        from ..errors import AmoscError
        if not 1 <= self.bits <= 16:
            raise AmoscError(f"--bits must be in 1..16, got {self.bits}")
        if self.calibration not in ("percentile", "max", "mse"):
            raise AmoscError(f"calibration must be 'percentile', 'max' or 'mse', got {self.calibration!r}")
        if not 0 < self.percentile <= 100:
            raise AmoscError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.granularity not in ("channel", "layer"):
            raise AmoscError(f"granularity must be 'channel' or 'layer', got {self.granularity!r}")
        if self.weight_bits not in (8, 16):
            raise AmoscError(f"weight_bits must be 8 or 16, got {self.weight_bits}")
        if self.rounding not in ("round", "floor"):
            raise AmoscError(f"rounding must be 'round' or 'floor', got {self.rounding!r}")
        if not 0 < self.fit_tolerance <= 1:
            raise AmoscError(f"fit_tolerance must be in (0, 1] output steps, got {self.fit_tolerance}")
        if not (isinstance(self.bias_correction, int) and self.bias_correction >= 0):
            raise AmoscError(f"bias_correction must be a number of inputs >= 0, got {self.bias_correction!r}")
        if self.product not in ("squares", "gated"):
            raise AmoscError(f"product must be 'squares' or 'gated', got {self.product!r}")
        if not (isinstance(self.fitted_units, int) and 0 <= self.fitted_units <= MAX_UNIT_NEURONS):
            raise AmoscError(f"fitted_units must be 0 (segments) or a number of neurons in 1..{MAX_UNIT_NEURONS}, "
                             f"got {self.fitted_units!r}")
        if self.maxpool not in MAXPOOL_MODES:
            raise AmoscError(f"maxpool must be one of {MAXPOOL_MODES}, got {self.maxpool!r}")


def mantissa_floor(v: int) -> int:
    """The largest m * 2^x <= v with m < 128: an inhibition weight h_j = theta * 2^(K-1-j)
    must be an 8-bit synaptic mantissa times a power of two."""
    if v <= 127:
        return v
    x = v.bit_length() - 7
    return (v >> x) << x


def _mantissas(m: L.LinearMap):
    """Quantize a map to int8 mantissas with one exponent per output channel (rows of
    the same channel share it); None when all zero."""
    cout = m.out_shape[0]
    if isinstance(m, L.GlobalDense):  # rows are channels: quantize the channel matrix itself
        m = L.Sparse(m.in_shape, (cout,), m.w)
    if isinstance(m, L.Scale):
        vals = m.full()
        rows = vals.reshape(cout, -1)
    elif isinstance(m, (L.Conv, L.Dense)):
        vals = m.w
        rows = vals.reshape(cout, -1)
    else:
        vals = m.m.data
        per_row = np.diff(m.m.indptr)
        ch = np.repeat(np.arange(m.m.shape[0]) // (m.m.shape[0] // cout), per_row)
        row_peak = np.zeros(m.m.shape[0])
        filled = per_row > 0  # rows of one channel are contiguous: reduce per row, then per channel
        if filled.any():
            row_peak[filled] = np.maximum.reduceat(np.abs(vals), m.m.indptr[:-1][filled])
        peak = row_peak.reshape(cout, -1).max(axis=1)
    if not isinstance(m, L.Sparse):   # max |w| per channel without an |rows| copy
        peak = np.maximum(rows.max(axis=1), -rows.min(axis=1)) if rows.size else np.zeros(cout)
    if not peak.size or peak.max() == 0.0:
        return None
    e = np.ceil(np.log2(np.maximum(peak, 1e-300) / 127.49)).astype(np.int64)
    e = np.clip(e, MIN_WEIGHT_SHIFT, None)
    e[peak == 0] = int(e[peak > 0].min())
    if isinstance(m, L.Sparse):
        q = m.m.copy()
        q.data = np.clip(np.rint(vals / 2.0 ** e[ch]), -128, 127)
        return q, e
    scale = (2.0 ** e).reshape((-1,) + (1,) * (vals.ndim - 1))
    q = np.empty(vals.shape, np.int8)
    for r in L.row_blocks(vals.shape[0], int(np.prod(vals.shape[1:]))):   # a VGG head is 0.8 GB of float64
        t = vals[r] / scale[r]
        np.rint(t, out=t)
        q[r] = np.clip(t, -128, 127, out=t)
    return q, e


def _residual(m: L.LinearMap, pr: Projection, inplace: bool = False) -> L.LinearMap:
    """m minus what projection ``pr`` represents (for a second, finer mantissa set);
    ``inplace``: a dense m is not used again, so its matrix may hold the residual."""
    e = pr.exp.astype(np.float64)
    if inplace and isinstance(m, L.Dense):
        for r in L.row_blocks(*m.w.shape):
            m.w[r] -= pr.weight[r] * (2.0 ** e[r]).reshape(-1, 1)
        return m
    if isinstance(m, L.Conv):
        return replace(m, w=m.w - pr.weight * 2.0 ** e.reshape(-1, 1, 1, 1))
    if isinstance(m, L.Dense):
        r = pr.weight.astype(np.float64)
        r *= 2.0 ** e.reshape(-1, 1)
        np.subtract(m.w, r, out=r)
        return replace(m, w=r)
    if isinstance(m, L.Scale):
        q = pr.weight.reshape(-1) if pr.kind == "conv" else pr.weight.diagonal()
        return replace(m, s=m.s - q.astype(np.float64) * 2.0 ** e)
    if isinstance(m, L.GlobalDense):
        q, e = _mantissas(m)   # the projection's mantissas, in the map's (C_out, C_in) form
        return replace(m, w=(m.w - sp.diags(2.0 ** e) @ q).tocsr())
    rows = m.m.shape[0]
    per_row = 2.0 ** e[np.arange(rows) // (rows // m.out_shape[0])]
    q = sp.csr_matrix(pr.weight, dtype=np.float64)
    mm = (m.m - sp.diags(per_row) @ q).tocsr()
    return replace(m, m=mm)


def _global_projection(name, src, tgt, m: L.GlobalDense, q: sp.csr_matrix, e) -> Projection:
    """The integer form of a :class:`~amosc.ir.linear.GlobalDense` map with mantissas ``q``
    (CSR (C_out, C_in)): a convolution whose kernel covers the whole map for a (C, 1, 1)
    output (depthwise when ``q`` is diagonal), a dense matrix for a vector output, else a
    sparse matrix (a broadcast: each output position repeats its channel's row)."""
    ins, outs = tuple(m.in_shape), tuple(m.out_shape)
    pin, pout = m.positions
    if len(ins) == 3 and len(outs) == 3 and pout == 1:
        attrs = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
        diag = q.shape[0] == q.shape[1] and not sp.triu(m.w, 1).nnz and not sp.tril(m.w, -1).nnz
        k = q.diagonal()[:, None] if diag else q.toarray()
        if diag:
            attrs["groups"] = q.shape[0]
        w = np.broadcast_to(k.astype(np.int8)[:, :, None, None], (*k.shape, *ins[1:]))
        return Projection(name, src, tgt, "conv", np.ascontiguousarray(w), e, ins, outs, attrs)
    if pout == 1:
        w = np.repeat(q.toarray().astype(np.int8), pin, axis=1)
        return Projection(name, src, tgt, "dense", w, e, ins, outs)
    mat = sp.kron(q, np.ones((pout, pin)), format="csr")
    return Projection(name, src, tgt, "sparse", _csr_int8(mat), e, ins, outs)


def _projection(name, src, tgt, m: L.LinearMap) -> Projection | None:
    got = _mantissas(m)
    if got is None:
        return None
    q, e = got
    ins, outs = tuple(m.in_shape), tuple(m.out_shape)
    if isinstance(m, L.GlobalDense):
        return _global_projection(name, src, tgt, m, q, e)
    if isinstance(m, L.Conv):
        return Projection(name, src, tgt, "conv", q, e, ins, outs, m.attrs())
    if isinstance(m, L.Scale) and len(ins) == 3:
        w = q[:, :1, :1].reshape(ins[0], 1, 1, 1)  # per-channel constant
        attrs = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=ins[0])
        return Projection(name, src, tgt, "conv", np.ascontiguousarray(w), e, ins, outs, attrs)
    if isinstance(m, L.Scale):
        mat = sp.diags(q.ravel().astype(np.int8), dtype=np.int8).tocsr()
        return Projection(name, src, tgt, "sparse", _csr_int8(mat), e, ins, outs)
    if isinstance(m, L.Dense):
        return Projection(name, src, tgt, "dense", q, e, ins, outs)
    return Projection(name, src, tgt, "sparse", _csr_int8(q), e, ins, outs)


def _csr_int8(mat) -> sp.csr_matrix:
    mat = sp.csr_matrix(mat)
    mat.eliminate_zeros()
    out = sp.csr_matrix((mat.data.astype(np.int8), mat.indices, mat.indptr), shape=mat.shape)
    return out


#: a fitted unit's input resolution: this many accumulator units over its calibration range
UNIT_INPUT_LEVELS = 2**12
#: fewer accumulator units than this over that range: a PrecisionWarning names the layer
UNIT_MIN_LEVELS = 256


def _unit_population(name, shape, unit, bias, syn, synapses, check):
    """(population, projections) of fitted AMOS unit ``unit`` (:class:`~.unitfit.UnitFit`)
    with float input bias ``bias`` and worst-case synaptic input ``syn`` (per neuron, in the
    activation's input units): one input unit u (accumulator units per input unit) for every
    channel, as fine as ``UNIT_INPUT_LEVELS`` over the fitted range allows, coarser when the
    accumulator, the bias or the weights' mantissas need it. Thresholds T_k / u and resets
    h_k / u are rounded to integers and every threshold is moved to >= 1 by a shift added to
    the bias (the units compare y + shift with T_k + shift). The output step is the unit's."""
    c = shape[0]
    T, h = np.asarray(unit.thresholds), np.asarray(unit.resets)
    u = max((unit.hi - unit.lo) / UNIT_INPUT_LEVELS, 1e-30)
    room = MARGIN * ACC_LIMIT - 2**ENABLE_SHIFT
    # y + inhibition must fit, and thresholds and the shifted bias must fit their limits
    need = (float(np.max(syn + 2 * np.abs(bias))) + float(np.abs(h).sum())) / room
    u = max(u, need, float(np.ptp(np.concatenate([T, [0.0]]))) / (MARGIN * THRESHOLD_LIMIT))
    for _ in range(60):
        ps, excess = synapses(np.full(c, u))
        if excess > 0:
            u *= 2.0**excess
            continue
        t = np.rint(T / u).astype(np.int64)
        shift = max(0, 1 - int(t.min()))
        b = np.rint(bias / u).astype(np.int64) + shift
        if np.abs(b).max(initial=0) > BIAS_LIMIT or int(t.max()) + shift > THRESHOLD_LIMIT:
            u *= 1.25
            continue
        code = Code(tuple(int(v) + shift for v in t), tuple(int(v) for v in np.rint(h / u)), unit.codes)
        pop = GatePop(name, shape, code, b.astype(np.int32), np.full(c, unit.step))
        try:
            check(pop, ps)
        except RangeError:
            u *= 1.25
            continue
        levels = (unit.hi - unit.lo) / u
        if levels < UNIT_MIN_LEVELS:
            warnings.warn(PrecisionWarning(
                f"layer {name!r}: its fitted AMOS unit resolves its calibrated input range in only "
                f"{levels:.0f} accumulator units (its worst-case input is that wide); its thresholds and "
                f"resets are rounded that coarsely"))
        return pop, ps
    raise RangeError(f"layer {name!r}: no input unit fits its fitted AMOS unit in the 18-bit accumulator", layer=name)


def lower(fg: TensorGraph, alphas: dict, input_range: tuple, opts: Options) -> Program:
    """Build the integer program. ``alphas``: calibrated upper range per gate name, one
    value per channel (C,); ``input_range``: (lo, hi) of the input values."""
    K = opts.bits
    maxcode = 2**K - 1
    lo, hi = input_range
    if not hi > lo:
        hi = lo + 1.0
    inp = InputPop("input", fg.input_shape, K, (hi - lo) / maxcode, float(lo))
    pops: list = [inp]
    projs: list = []
    step = {"input": np.full(fg.input_shape[0], inp.scale)}  # value of one code unit, per channel
    code_of = {"input": inp.code}
    zero_point = {"input": inp.zero_point}

    def build(name, expr, shape, out_step, K=K, exact=False, compartments=1, weight_bits=opts.weight_bits,
              theta_target=THETA_TARGET, unit=None):
        """(population, projections) for a target with input ``expr``; ``out_step``: the
        gate's per-channel output step, or None for the readout. ``exact``: the steps are
        set by the circuit (segments, max units) and must not be coarsened per channel.
        ``compartments`` m > 1: ``expr`` has m compartments per channel, joined by max.
        ``weight_bits``: 16 adds the second synapse set (the rounding residue). ``unit``: a
        fitted AMOS unit (:class:`~.unitfit.UnitFit`), whose code is its own."""
        gate = out_step is not None
        maxcode = 2**K - 1
        bias = expr.bias.astype(np.float64).copy()
        on_codes = {}  # the maps acting on integer codes
        hi_, lo_ = np.zeros(expr.shape), np.zeros(expr.shape)
        for src, m in expr.maps.items():
            if zero_point.get(src, 0.0):
                bias += m.apply(np.full((1, *m.in_shape), zero_point[src]))[0]
            on_codes[src] = L.compose(m, L.Scale(m.in_shape, m.in_shape, step[src]))
            if isinstance(on_codes[src], (L.Embedded, L.PositionScaled)):   # a kind the projections lack
                on_codes[src] = on_codes[src].materialized()
            p, n = on_codes[src].row_sums()   # codes lie in [min_code, max_code] (min_code < 0: fitted units)
            hi_ += p * code_of[src].max_code + n * code_of[src].min_code
            lo_ += n * code_of[src].max_code + p * code_of[src].min_code
        syn = np.maximum(hi_, -lo_)
        if compartments > 1:  # one accumulator per compartment; the bias acts after the max
            syn = max_compartments(syn[None], compartments)[0]
            bias = bias.reshape((shape[0], compartments, *shape[1:]))
            if not np.all(bias == bias[:, :1]):
                raise RangeError(f"layer {name!r}: its window taps carry different constant inputs (e.g. "
                                 "the input's zero point through a padded conv), but a max-join unit "
                                 "adds one bias after the max; compile with --maxpool tree")
            bias = bias[:, 0]
        absb = np.abs(bias)

        def synapses(u):
            """The projections onto this target at input unit u (C,), and by how many bits
            their largest weights overflow the 8-bit mantissas' shifts (0: none)."""
            ps = []
            for src, m in on_codes.items():
                scaled = L.compose(L.Scale(m.out_shape, m.out_shape, np.repeat(1.0 / u, compartments)), m)
                pr = _projection(f"{src}->{name}", src, name, scaled)
                if pr is not None:
                    ps.append(pr)
                    if weight_bits == 16:  # a second synapse set carries the rounding residue
                        fresh = isinstance(scaled, L.Dense) and scaled.w is not getattr(m, "w", None)
                        res = _residual(scaled, pr, inplace=fresh)   # a fresh matrix may hold it
                        del scaled
                        lo_ = _projection(f"{src}->{name}#lo", src, name, res)
                        del res
                        if lo_ is not None:
                            ps.append(lo_)
            return ps, max([max_plane_shift(pr, code_of[pr.source]) - MAX_WEIGHT_SHIFT for pr in ps] + [0])

        if unit is not None:
            return _unit_population(name, shape, unit, bias, syn, synapses,
                                    lambda pop, ps: check_ranges(Program([*pops, pop], [*projs, *ps], "input", name), name))
        if gate:
            # u = step / theta per channel; each neuron needs (syn + 2|b|) / u + inh * theta
            # + 2^ENABLE_SHIFT <= LIMIT (the enable weight carries up to |b| + 2^ENABLE_SHIFT of
            # the gated bias), and |b| / u <= BIAS_LIMIT.
            room = MARGIN * ACC_LIMIT - 2**ENABLE_SHIFT
            worst = (syn + 2 * absb).reshape(shape[0], -1).max(1)
            bworst = absb.reshape(shape[0], -1).max(1)
            # theta: THETA_TARGET accumulator units per output step is plenty (the floors of a
            # few planes then cost < 1/10 step); the MSB unit's inhibition weight
            # theta * 2^(K-1) must be an 8-bit mantissa times 2^s.
            theta = min(theta_target, WEIGHT_MAX * 2**MAX_WEIGHT_SHIFT // 2 ** (K - 1),
                        int(room / (2 * maxcode)))
            cap = room / (worst / out_step + maxcode)  # per channel
            if bworst.max() > 0:
                cap = np.minimum(cap, MARGIN * BIAS_LIMIT * out_step / np.maximum(bworst, 1e-30))
            if opts.granularity == "layer" or exact or cap.min() >= THETA_MIN:
                theta = min(theta, int(math.floor(cap.min())))   # no channel needs a coarser step
            else:  # a few channels' worst cases are huge: give those a coarser step instead
                theta = min(theta, THETA_MIN, max(int(np.median(cap)), 1))
            theta = mantissa_floor(theta)
            if theta < 1:
                raise RangeError(
                    f"layer {name!r}: its worst-case input is {float(np.max(worst / out_step)):.4g} output "
                    f"steps; at K={K} bits that does not fit the 18-bit accumulator. Use fewer --bits "
                    "or calibrate with 'max'.", layer=name)
            # channels whose worst case does not fit at this theta get a coarser step
            need = np.maximum(theta * worst / (room - theta * maxcode),
                              theta * bworst / (MARGIN * BIAS_LIMIT))
            out_step = np.maximum(out_step, need)
        else:
            theta = 1
            finest = np.maximum((syn + absb) / (MARGIN * ACC_LIMIT), absb / (MARGIN * BIAS_LIMIT))
            finest = np.maximum(finest.reshape(shape[0], -1).max(1), 1e-30)
        coarser = 1.0  # readout: factor on the finest safe unit
        for _ in range(60):
            u = np.asarray(out_step) / theta if gate else finest * coarser  # (C,)
            ps, excess = synapses(u)
            if excess > 0:  # weights too large for 8-bit mantissas: coarser accumulator
                if gate and theta > 1:
                    theta = mantissa_floor(max(1, theta >> excess))
                elif gate and not exact:
                    # theta is 1 already: the finest channels' incoming weights (scaled by
                    # 1 / step) overflow their mantissa shifts; coarsen those channels' steps
                    out_step = np.maximum(out_step, float(np.min(out_step)) * 2.0**excess)
                elif gate:
                    break  # a step set by the circuit (segments, max units) cannot change
                else:
                    coarser *= 2.0**excess
                continue
            b = np.clip(np.rint(bias / L.per_channel(u, shape)), -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)
            if gate:
                offset = theta // 2 if opts.rounding == "round" else 0
                pop = GatePop(name, shape, Code.binary(K, theta, offset), b, np.asarray(out_step, np.float64),
                              compartments=compartments)
            else:
                pop = ReadoutPop(name, shape, b, np.asarray(u, np.float64))
            trial = Program([*pops, pop], [*projs, *ps], "input", name)
            try:
                check_ranges(trial, name)
                return pop, ps
            except RangeError:
                if gate and theta > 1:
                    theta = mantissa_floor(max(1, int(theta * 0.9)))
                elif not gate:
                    coarser *= 1.1
                elif not exact:   # theta is 1: a coarser output step (an ADC's range) instead
                    out_step = np.asarray(out_step, np.float64) * 1.1
                else:
                    raise
        raise RangeError(f"layer {name!r}: no accumulator scale satisfies the 18-bit range", layer=name)

    for gs in fg.gates:
        bits = gs.bits or K
        src = gs.alpha_from
        if src is not None and src in step and code_of[src].bits == bits:
            # a max unit on a ReLU gate's codes: same step, so relu(a - b) is exact
            out_step, exact = np.asarray(step[src], np.float64).copy(), True
            if out_step.size != gs.shape[0] and gs.shape[0] % out_step.size == 0:
                # a relay of the flattened codes (C * H * W,): element i has channel i // (H * W)
                out_step = np.repeat(out_step, gs.shape[0] // out_step.size)
        elif isinstance(gs.fit, UnitFit):   # a fitted AMOS unit: its code's step, one for every channel
            out_step, exact = np.full(gs.shape[0], gs.fit.step), True
        elif gs.fixed_alpha is not None:
            out_step, exact = np.asarray(gs.fixed_alpha, np.float64) / (2**bits - 1), True
        else:
            alpha = np.broadcast_to(np.asarray(alphas[gs.name], np.float64), (gs.shape[0],)).copy()
            if gs.upper is not None:
                alpha = np.minimum(alpha, gs.upper)
            top = float(alpha.max())
            # A channel's range costs the next layer's weights: its column is scaled by
            # alpha_c / alpha_max inside 8-bit mantissas. Finer than alpha_max * 2^(K-8), the
            # weights lose more than the K-bit code gains, so per-channel ranges stop there (with
            # one 8-bit mantissa set at K >= 8 every channel gets the layer's range; a second set
            # for the residue leaves room for 16 - K more bits). This also covers dead channels.
            floor = top * 2.0 ** min(bits - opts.weight_bits, 0)
            alpha = np.maximum(alpha, floor) if top > 0 else np.ones_like(alpha)
            out_step, exact = alpha / (2**bits - 1), False
        if gs.compartments > 1 and gs.alpha_from is not None and not exact:
            raise RangeError(f"layer {gs.name!r}: a lateral-inhibition pooling unit needs its source's "
                             "code steps (a ReLU-family activation with the same bits)")
        pop, ps = build(gs.name, gs.expr, gs.shape, out_step, bits, exact, gs.compartments,
                        gs.weight_bits or opts.weight_bits,
                        DIGIT_THETA if gs.activation == "digit" else THETA_TARGET,
                        gs.fit if isinstance(gs.fit, UnitFit) else None)
        fit = gs.fit.as_dict() if gs.fit is not None else None
        pop = replace(pop, activation=gs.activation, tensor=gs.tensor, fit=fit)
        pops.append(pop)
        projs.extend(ps)
        step[gs.name] = pop.scale
        code_of[gs.name] = pop.code
    pop, ps = build("output", fg.readout, fg.readout.shape, None)
    pops.append(replace(pop, tensor=fg.readout_tensor))
    projs.extend(ps)
    from .passes import drop_dead_populations, fold_constant_populations, schedule_asap
    program = fold_constant_populations(Program(pops, projs, "input", "output"))
    return schedule_asap(drop_dead_populations(program))
