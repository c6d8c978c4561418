"""Lower a program to a plan of standard Lava processes (the ``loihi`` style).

Every AMOS unit position k of a population becomes one LIFReset process (vth is a
per-process scalar in Lava); every (projection, source unit j, target unit k) one
DelaySparse whose uniform delay aligns the K planes; unit j inhibits unit k > j
through a diagonal DelaySparse of weight -h_j and delay k - j - 1; a per-population
clock delivers the enable spike (docs/ir.md#timing). The plan is plain data, run
by :mod:`amosc.backends.lava.network` here or after ``amosc export``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ...errors import BackendError, RangeError
from ...ir.nodes import ENABLE_SHIFT, THRESHOLD_LIMIT, GatePop, InputPop, Program, ReadoutPop
from ...ir.semantics import enable_weights
from ..base import RunResult

MAX_DELAY = 63
WEIGHT_EXP_RANGE = (-8, 7)


def _sparse(proj, w) -> sp.csr_matrix:
    """Integer weights of a projection plane as a (F_out, F_in) CSR matrix."""
    if sp.issparse(w):
        return sp.csr_matrix(w, dtype=np.int64)
    if proj.kind == "dense":
        return sp.csr_matrix(np.asarray(w, np.int64))
    from ...compiler.linear import Conv
    c = Conv(tuple(proj.in_shape), tuple(proj.out_shape), np.asarray(w, np.float64), **proj.attrs)
    m = c.to_sparse()
    m.data = np.rint(m.data)
    return sp.csr_matrix(m, dtype=np.int64)


def mantissa(w: sp.csr_matrix, where: str):
    """Loihi form of integer weights w = m * 2^x with |m| <= 128: returns
    (Lava weights 2m, weight_exp x - 1), since Lava stores mixed-sign weights doubled."""
    w = w.copy()
    w.eliminate_zeros()
    if w.nnz == 0:
        return None
    x = 0
    while np.all(w.data % (2 ** (x + 1)) == 0) and np.abs(w.data).max() > 127 * 2**x:
        x += 1
    m = w.data // 2**x
    if np.abs(m).max() > 128 or np.any(m == 128):
        raise RangeError(f"{where}: weights need more than an 8-bit mantissa (max |w| {np.abs(w.data).max()})")
    if not WEIGHT_EXP_RANGE[0] <= x - 1 <= WEIGHT_EXP_RANGE[1]:
        raise RangeError(f"{where}: weight exponent {x - 1} outside Loihi's {WEIGHT_EXP_RANGE}")
    out = sp.csr_matrix((2 * m, w.indices, w.indptr), shape=w.shape)
    return out, x - 1


def _syn(name, w, exp, delay, where):
    if not 0 <= delay <= MAX_DELAY:
        raise RangeError(f"{where}: needs a synaptic delay of {delay} steps; Loihi allows 0..{MAX_DELAY} "
                         "(relay neurons are not implemented; use the 'fast' style)")
    return {"type": "synapses", "name": name, "data": w.data.astype(np.int32),
            "indices": w.indices.astype(np.int32), "indptr": w.indptr.astype(np.int32),
            "shape": list(w.shape), "weight_exp": int(exp), "delay": int(delay)}


def plan(program: Program, record: bool = True) -> dict:
    """The standard-process network of ``program`` as plain data (see network.py)."""
    procs, conns = [], []
    units: dict[str, list[str]] = {}
    for pop in program.populations:
        n = int(np.prod(pop.shape))
        if isinstance(pop, InputPop):
            names = [f"{pop.name}#p{j}" for j in range(pop.bits)]
            for j, nm in enumerate(names):
                procs.append({"type": "input_plane", "name": nm, "bits": pop.bits, "plane": j})
            units[pop.name] = names
            continue
        if isinstance(pop, ReadoutPop):
            # the host reads v and adds the bias itself (readout_bias in the plan)
            procs.append({"type": "lif", "name": pop.name, "size": n, "vth": THRESHOLD_LIMIT,
                          "bias_mant": np.zeros(n, np.int32), "probe_v": True})
            units[pop.name] = [pop.name]
        else:
            if pop.compartments > 1:
                raise BackendError(
                    f"population {pop.name!r} joins {pop.compartments} input compartments by max "
                    "(lateral-inhibition pooling); the 'loihi' style and `amosc export` build "
                    "single-compartment LIFReset units only. Run it on backend 'lava' (fast style) or "
                    "compile with --maxpool tree.")
            code = pop.code
            enable = enable_weights(pop.bias.ravel())
            names = [f"{pop.name}#u{k}" for k in range(code.bits)]
            for k, nm in enumerate(names):
                procs.append({"type": "lif", "name": nm, "size": n, "vth": code.thresholds[k] - 1,
                              "bias_mant": (pop.bias.ravel() - enable).astype(np.int32), "record": record})
            units[pop.name] = names
            clock = f"{pop.name}#clock"
            procs.append({"type": "clock", "name": clock, "at": pop.start - 1})
            en = sp.csr_matrix(enable.reshape(n, 1))
            for k, nm in enumerate(names):
                got = mantissa(en, f"{pop.name} enable")
                if got is None:  # every gated bias is in [-2^ENABLE_SHIFT, -1]: no enable needed
                    break
                w, e = got
                procs.append(_syn(f"{pop.name}#en{k}", w, e, k, f"{pop.name} enable"))
                conns += [(clock, f"{pop.name}#en{k}"), (f"{pop.name}#en{k}", nm)]
            for j in range(code.bits):
                inh = sp.identity(n, dtype=np.int64, format="csr") * (-code.resets[j])
                w, e = mantissa(inh, f"{pop.name} inhibition")
                for k in range(j + 1, code.bits):
                    s = f"{pop.name}#inh{j}u{k}"
                    procs.append(_syn(s, w, e, k - j - 1, f"{pop.name} inhibition"))
                    conns += [(names[j], s), (s, names[k])]
        for proj in program.incoming(pop.name):
            src = program.pop(proj.source)
            kt = len(units[pop.name])
            if not src.code.is_binary():
                raise RangeError(f"projection {proj.name}: the loihi style needs binary source codes")
            m = _sparse(proj, proj.weight)
            row_exp = proj.exp[np.arange(m.shape[0]) // (m.shape[0] // proj.out_shape[0])]
            for ev in np.unique(row_exp):  # one synapse group per distinct exponent
                part = sp.csr_matrix(sp.diags((row_exp == ev).astype(np.int64), dtype=np.int64) @ m)
                part.eliminate_zeros()
                if part.nnz == 0:
                    continue
                w = sp.csr_matrix((2 * part.data, part.indices, part.indptr), shape=part.shape)
                for j, d in enumerate(src.code.weights):
                    e = int(ev) + d.bit_length() - 1 - 1  # Lava: doubled mantissa, exponent s - 1
                    if not WEIGHT_EXP_RANGE[0] <= e <= WEIGHT_EXP_RANGE[1]:
                        raise RangeError(f"projection {proj.name}: weight exponent {e} outside Loihi's "
                                         f"{WEIGHT_EXP_RANGE}")
                    for k in range(kt):
                        delay = pop.start + k - src.start - j - 1
                        s = f"{proj.name}#e{ev}p{j}u{k}"
                        procs.append(_syn(s, w, e, delay, f"projection {proj.name}"))
                        conns += [(units[src.name][j], s), (s, units[pop.name][k])]
    return {"processes": procs, "connections": conns, "latency": program.latency,
            "readout": program.output, "readout_start": program.output_pop.start,
            "readout_bias": program.output_pop.bias.ravel().astype(np.int64),
            "input": {"shape": list(program.input_pop.shape), "bits": program.input_pop.bits,
                      "scale": program.input_pop.scale, "zero_point": program.input_pop.zero_point},
            "output_scale": program.output_pop.scale.astype(np.float64)}


def rasters_by_item(program: Program, rasters: dict, n: int, interval: int) -> dict:
    """Lava sink rasters {unit process: (size, steps)} -> {population: (N, K, *shape)}
    (unit k of input i is read at i * interval + start + k), plus the count of spikes at
    any other step (which must be zero)."""
    out, stray = {}, 0
    for pop in program.populations:
        if not isinstance(pop, GatePop):
            continue
        k_all = []
        for k in range(pop.code.bits):
            r = rasters[f"{pop.name}#u{k}"]
            cols = [i * interval + pop.start + k for i in range(n)]
            k_all.append(r[:, cols].T.reshape(n, *pop.shape))
            stray += int(r.sum()) - int(r[:, cols].sum())
        out[pop.name] = np.stack(k_all, axis=1).astype(np.uint8)
    return out, stray


def result_from_lava(program: Program, codes, interval, rasters, v, steps, record) -> RunResult:
    """Turn the Lava sinks' rasters and the readout's v trace into a RunResult."""
    from ...ir.semantics import decode, spike_counts
    n = codes.shape[0]
    v = np.asarray(v, np.int64).reshape(steps, -1)
    rows = [i * interval + program.output_pop.start for i in range(n)]
    y = (v[rows] >> 6) + program.output_pop.bias.ravel()  # v = synaptic input << 6
    by_item, stray = rasters_by_item(program, rasters, n, interval)
    spikes = {k: r.reshape(n, -1).sum(1).astype(np.int64) for k, r in by_item.items()}
    spikes = {program.input: spike_counts(codes, program.input_pop.bits), **spikes}
    return RunResult(y, decode(program.output_pop, y), spikes,
                     by_item if record else {}, latency=program.latency, steps=steps, interval=interval,
                     extra={"spurious_spikes": stray, "style": "loihi"})
