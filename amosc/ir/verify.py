"""IR verifier: structure, timing and the integer range proof (docs/ir.md).

:func:`verify` raises :class:`IRError` (structure, timing) or :class:`RangeError`
(a neuron could leave the 18-bit synaptic range) naming the population or
projection at fault. :func:`input_bounds` is the range analysis itself.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import scipy.sparse as sp

from ..errors import IRError, RangeError
from .nodes import ACC_LIMIT, MAX_WEIGHT_SHIFT, MIN_WEIGHT_SHIFT, GatePop, InputPop, Program, Projection, ReadoutPop
from .semantics import conv_output_hw, enable_weights, floor_shift, join


def _row_sums(proj: Projection, w) -> tuple[np.ndarray, np.ndarray]:
    """Per target neuron (sum of positive, sum of negative) weights, shaped out_shape.
    Conv rows use the full kernel: an upper bound at the borders."""
    if sp.issparse(w):
        pos, neg = w.maximum(0), w.minimum(0)
        return (np.asarray(pos.sum(1)).reshape(proj.out_shape),
                np.asarray(neg.sum(1)).reshape(proj.out_shape))
    # integer sums straight from the (int8) weights: no int64 copy of a large kernel
    flat = w.reshape(w.shape[0], -1)
    pos, neg = (np.maximum(flat, 0).sum(1, dtype=np.int64), np.minimum(flat, 0).sum(1, dtype=np.int64))
    if proj.kind == "conv":
        return tuple(np.broadcast_to(s[:, None, None], proj.out_shape) for s in (pos, neg))
    return pos.reshape(proj.out_shape), neg.reshape(proj.out_shape)


def input_bounds(program: Program, name: str, incoming=None) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron of population ``name``, the (min, max) of its synaptic input over
    every possible source code (bias and inhibition excluded). The bound of each plane
    takes the sign of its code weight d into account (d * [neg, pos] row sums).
    ``incoming``: the population's projections, when the caller has them at hand."""
    pop = program.pop(name)
    lo = np.zeros(pop.input_shape, np.int64)
    hi = np.zeros(pop.input_shape, np.int64)
    for proj in program.incoming(name) if incoming is None else incoming:
        code = program.pop(proj.source).code
        w = proj.weight.astype(np.int64) if sp.issparse(proj.weight) else proj.weight
        p, n = (np.asarray(r, np.int64) for r in _row_sums(proj, w))
        e = proj.exp.reshape((-1,) + (1,) * (len(proj.out_shape) - 1))
        for d in code.weights:  # floor is monotone: bound each plane's sum, then shift
            a, b = p * d, n * d
            hi += floor_shift(np.maximum(a, b), e)
            lo += floor_shift(np.minimum(a, b), e)
    # compartments: each one's accumulator and their max lie within (least lo, largest hi)
    return -join(pop, -lo[None])[0], join(pop, hi[None])[0]


def inhibition_range(pop) -> tuple[int, int]:
    """(min, max) of the inhibition sum_{j<k} h_j z_j a unit of ``pop`` can receive: any
    subset of the earlier units may have fired, so its range is [sum of the negative
    resets, sum of the positive resets] (0 for a readout). Both ends are over all K
    resets, a (slightly) loose bound that holds for every sign of h."""
    if not isinstance(pop, GatePop):
        return 0, 0
    h = [int(v) for v in pop.code.resets]
    return sum(v for v in h if v < 0), sum(v for v in h if v > 0)


def inhibition_max(pop) -> int:
    """Largest inhibition a unit of ``pop`` can receive (see :func:`inhibition_range`)."""
    return inhibition_range(pop)[1]


def range_bounds(program: Program, name: str, incoming=None) -> tuple[int, int]:
    """(min, max) over every neuron of ``name`` and every possible source code of what the
    neuron's 24-bit current holds in one step: the per-step input a = syn - inh + enable
    and the membrane v = a + (b - enable) = syn - inh + b (docs/ir.md#ranges), with syn in
    :func:`input_bounds` and inh in :func:`inhibition_range`, whatever the signs of the
    weights, resets and code weights. An idle unit (no input scheduled) holds b - enable in
    [-2^ENABLE_SHIFT, -1] and receives nothing, so it adds no wider case."""
    pop = program.pop(name)
    lo, hi = input_bounds(program, name, incoming)
    inh_lo, inh_hi = inhibition_range(pop)
    b = pop.bias.astype(np.int64)
    enable = enable_weights(b) if isinstance(pop, GatePop) else np.zeros_like(b)
    # subtracting inh in [inh_lo, inh_hi] moves the input by at most -inh_hi (down) and -inh_lo (up)
    worst_hi = int(max((hi - inh_lo + np.maximum(enable, 0)).max(), (hi - inh_lo + b).max()))
    worst_lo = int(min((lo - inh_hi + np.minimum(enable, 0)).min(), (lo - inh_hi + b).min()))
    return worst_lo, worst_hi


def check_ranges(program: Program, name: str, incoming=None) -> dict:
    """Raise RangeError unless every per-step input of ``name``'s neurons stays within
    +-ACC_LIMIT. Returns the bounds for reporting."""
    worst_lo, worst_hi = range_bounds(program, name, incoming)
    if worst_hi > ACC_LIMIT or worst_lo < -ACC_LIMIT:
        raise RangeError(
            f"population {name!r}: synaptic input can reach [{worst_lo}, {worst_hi}], outside "
            f"the 18-bit range +-{ACC_LIMIT} (Loihi's 24-bit current after its 6-bit shift)")
    return {"min": worst_lo, "max": worst_hi}


def verify(program: Program, ranges: bool = True) -> None:
    names = [p.name for p in program.populations]
    if len(set(names)) != len(names):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        raise IRError(f"duplicate population names: {dup}")
    pos = {n: i for i, n in enumerate(names)}
    inputs = [p for p in program.populations if isinstance(p, InputPop)]
    if len(inputs) != 1 or inputs[0].name != program.input:
        raise IRError(f"program needs exactly one input population named {program.input!r}")
    if not isinstance(program.pop(program.output), ReadoutPop):
        raise IRError(f"output {program.output!r} must be a readout population")
    for p in program.populations:   # a ReLU split's linear part: a gate of the unit's shape
        relu = (getattr(p, "fit", None) or {}).get("relu")
        if relu:
            q = program.pop(relu["population"]) if relu["population"] in pos else None
            want = (p.shape[0] // int(p.fit["segments"]), *p.shape[1:])
            if not isinstance(q, GatePop) or tuple(q.shape) != want:
                raise IRError(f"population {p.name!r}: its fit's ReLU part {relu['population']!r} is not a "
                              f"gate population of shape {want}")
    pnames = [p.name for p in program.projections]
    if len(set(pnames)) != len(pnames):
        raise IRError("duplicate projection names")
    incoming: dict = {}  # target -> projections, in one pass (a loaded file may hold many)
    for proj in program.projections:
        for end in (proj.source, proj.target):
            if end not in pos:
                raise IRError(f"projection {proj.name!r}: unknown population {end!r}")
        src, tgt = program.pop(proj.source), program.pop(proj.target)
        if pos[proj.source] >= pos[proj.target]:
            raise IRError(f"projection {proj.name!r}: source {src.name!r} does not precede "
                          f"target {tgt.name!r} (populations must be in topological order)")
        if isinstance(src, ReadoutPop) or isinstance(tgt, InputPop):
            raise IRError(f"projection {proj.name!r}: {src.name!r} -> {tgt.name!r} runs from a "
                          "readout or into the input")
        incoming.setdefault(proj.target, []).append(proj)
        if tuple(proj.in_shape) != tuple(src.shape) or tuple(proj.out_shape) != tuple(tgt.input_shape):
            raise IRError(f"projection {proj.name!r}: shape {proj.in_shape} -> {proj.out_shape} does "
                          f"not match {src.name!r}.shape {src.shape} -> {tgt.name!r}.input_shape "
                          f"{tgt.input_shape}")
        _check_layout(proj)
        shift = max_plane_shift(proj, src.code)
        if shift > MAX_WEIGHT_SHIFT:
            raise RangeError(f"projection {proj.name!r}: plane weights need a shift of 2^{shift}, "
                             f"more than the 8-bit mantissa's 2^{MAX_WEIGHT_SHIFT}")
        if proj.exp.min() < MIN_WEIGHT_SHIFT:
            raise RangeError(f"projection {proj.name!r}: exponent {proj.exp.min()} below {MIN_WEIGHT_SHIFT}")
        if tgt.start < src.start + src.code.depth:
            raise IRError(f"projection {proj.name!r}: target {tgt.name!r} starts at step {tgt.start}, "
                          f"before source {src.name!r}'s last unit fires (step "
                          f"{src.start + src.code.depth - 1}); run the schedule pass")
    for pop in program.populations:
        if not isinstance(pop, InputPop) and pop.name not in incoming:
            raise IRError(f"population {pop.name!r} has no incoming projection")
    if ranges:
        for pop in program.populations:
            if not isinstance(pop, InputPop):
                check_ranges(program, pop.name, incoming[pop.name])


def max_plane_shift(proj: Projection, code) -> int:
    """Largest exponent s of the source planes' weights M * d * 2^e = m * 2^s."""
    top = max(abs(d) for d in code.weights)
    return int(proj.exp.max()) + max(top.bit_length() - 1, 0)


def _check_layout(proj: Projection):
    w = proj.weight
    fin, fout = int(np.prod(proj.in_shape)), int(np.prod(proj.out_shape))
    if proj.kind == "conv":
        a = proj.attrs
        if w.ndim != 4 or len(proj.in_shape) != 3 or len(proj.out_shape) != 3:
            raise IRError(f"projection {proj.name!r}: conv needs a 4-D weight and (C, H, W) shapes")
        g = a.get("groups", 1)
        if w.shape[1] * g != proj.in_shape[0] or w.shape[0] != proj.out_shape[0] or w.shape[0] % g:
            raise IRError(f"projection {proj.name!r}: weight {w.shape} with groups={g} does not map "
                          f"{proj.in_shape} to {proj.out_shape}")
        hw = conv_output_hw(proj.in_shape[1:], w.shape[2:], a["strides"], a["pads"], a["dilations"])
        if tuple(hw) != tuple(proj.out_shape[1:]):
            raise IRError(f"projection {proj.name!r}: conv output {hw} != {proj.out_shape[1:]}")
    elif w.shape != (fout, fin):
        raise IRError(f"projection {proj.name!r}: {proj.kind} weight {w.shape} != ({fout}, {fin})")
