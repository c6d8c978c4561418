"""Lower a program to a plan of standard Lava processes (the ``loihi`` style).

A handful of processes per population and one per (projection, plane shift), whatever
the population's size (docs/lava.md#loihi has the circuit, its timing and the bound):

- every gate population is one ``LIFReset`` holding all K unit positions of every neuron
  (row ``k * n + i``) with one common threshold ``vth = T_0 - 1``; each unit's own threshold
  T_k, its gated bias and its enable arrive as one enable weight ``C_k = 256 * q`` with the
  held bias ``b + vth + 1 - T_k - C_k`` in [-256, -1] (so an idle unit never fires);
- the synaptic sum y is accumulated once per neuron by a graded-spike neuron (``GradedVec``)
  and handed down a graded chain (``W``) that subtracts each fired unit's reset, so unit k
  sees ``y - sum_{j<k} h_j z_j`` at its step through zero-delay synapses only (no K copies of
  the input synapses, no K^2 inhibition synapses);
- a ``DelaySparse`` realigns the K unit spikes of a population (delay K - 1 - k), so its
  outgoing planes reach the next accumulator together: one ``Sparse`` per projection and
  plane shift (weight exponent), graded delays (and relay neurons beyond 63 steps) between
  accumulators of branches that arrive early.

The plan is plain data, run by :mod:`amosc.backends.lava.network` here or after
``amosc export``. Everything is vectorized (scipy.sparse); building the example's plan
takes seconds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ...errors import BackendError, RangeError
from ...ir.nodes import ACC_LIMIT, THRESHOLD_LIMIT, GatePop, InputPop, Program, ReadoutPop
from ...ir.semantics import enable_weights, floor_shift
from ..base import RunResult

#: Loihi 2 synaptic delays are 6 bits (Lava's DelaySparse refuses more).
MAX_DELAY = 63
#: Lava's weight_exp range; weights are stored as doubled 8-bit mantissas (sign mode MIXED).
WEIGHT_EXP_RANGE = (-8, 7)
#: Largest graded spike payload (24-bit signed).
GRADED_LIMIT = 2**23 - 1
#: The clock process shared by every population's enable synapses.
CLOCK = "#clock"
#: Most synapses a plan may hold to run on Lava's CPU simulator here: its Sparse models keep
#: several int32 copies of every weight (~25 bytes per synapse in all; the example's 133M
#: synapses peak at ~3 GB in the parent process).
MAX_SIM_SYNAPSES = 400_000_000


# ---------------------------------------------------------------------------
# Weights: integers as Loihi's 8-bit mantissa times 2^x, one exponent per process
# ---------------------------------------------------------------------------

def exponent_groups(values, where: str) -> list[tuple[int, np.ndarray]]:
    """Split integer weights into as few groups as possible, each representable as
    m * 2^x with m in [-128, 127] for one x (one synapse process per group). Returns
    [(x, boolean mask over values)]; zeros belong to no group. RangeError names ``where``
    when a weight needs more than an 8-bit mantissa."""
    v = np.asarray(values, np.int64)
    uniq = np.unique(v[v != 0])
    if uniq.size == 0:
        return []
    mag = np.abs(uniq)
    tz = np.zeros(uniq.size, np.int64)  # trailing zeros: x may not exceed them
    rest = mag.copy()
    while np.any(rest % 2 == 0):
        even = rest % 2 == 0
        tz[even] += 1
        rest[even] //= 2
    lim = np.where(uniq > 0, 127, 128)
    lo = np.zeros(uniq.size, np.int64)  # least x with |w| / 2^x within the mantissa
    while np.any(mag > lim << lo):
        lo[mag > lim << lo] += 1
    hi = np.minimum(tz, WEIGHT_EXP_RANGE[1] + 1)
    if np.any(lo > hi):
        bad = int(uniq[np.argmax(lo > hi)])
        raise RangeError(f"{where}: weight {bad} is not an 8-bit mantissa times 2^0..2^"
                         f"{WEIGHT_EXP_RANGE[1] + 1}; Loihi cannot hold it")
    chosen, assign = [], np.full(uniq.size, -1)
    for i in np.argsort(hi, kind="stable"):  # interval stabbing, by right end
        if assign[i] >= 0:
            continue
        x = int(hi[i])
        hit = (assign < 0) & (lo <= x) & (x <= hi)
        assign[hit] = len(chosen)
        chosen.append(x)
    idx = np.searchsorted(uniq, v)
    idx[v == 0] = 0
    return [(x, (v != 0) & (assign[idx] == g)) for g, x in enumerate(chosen)]


def _syn(name, rows, cols, mant, shape, x, where, delays=None, graded=False):
    """A synapse process of weights mant * 2^x (8-bit mantissas), stored as Lava wants them:
    doubled mantissas (sign mode MIXED) and weight_exp x - 1; optional per-synapse delays."""
    m = np.asarray(mant, np.int64)
    if not WEIGHT_EXP_RANGE[0] <= x - 1 <= WEIGHT_EXP_RANGE[1]:
        raise RangeError(f"{where}: weight exponent {x - 1} outside Loihi's {WEIGHT_EXP_RANGE}")
    if m.size and (m.min() < -128 or m.max() > 127):
        raise RangeError(f"{where}: weights need more than an 8-bit mantissa")
    keep = m != 0
    rows, cols = np.asarray(rows)[keep], np.asarray(cols)[keep]
    w = sp.csr_matrix((2 * m[keep], (rows, cols)), shape=shape)
    spec = {"type": "synapses", "name": name, "data": w.data.astype(np.int32),
            "indices": w.indices.astype(np.int32), "indptr": w.indptr.astype(np.int64),
            "shape": [int(shape[0]), int(shape[1])], "weight_exp": int(x - 1), "graded": bool(graded)}
    if delays is not None:
        d = np.broadcast_to(np.asarray(delays, np.int64), keep.shape)[keep]
        if d.size and d.max() > 0:
            if d.max() > MAX_DELAY:
                raise RangeError(f"{where}: synaptic delay {int(d.max())} > {MAX_DELAY}")
            dm = sp.csr_matrix((d + 1, (rows, cols)), shape=shape)  # +1 keeps zero delays stored
            spec["delays"] = (dm.data - 1).astype(np.int32)
    return spec


def _grouped(name, rows, cols, weights, shape, where, graded=False):
    """Synapse specs for integer weights: one process per exponent group."""
    w = np.asarray(weights, np.int64)
    return [_syn(f"{name}{g}", rows[mask], cols[mask], w[mask] >> x, shape, x, where, graded=graded)
            for g, (x, mask) in enumerate(exponent_groups(w, where))]


def _matrix(proj):
    """The plan's form of a projection's weight matrix M (a conv by its kernel) and which
    output channels have any non-zero weight."""
    w = proj.weight
    if proj.kind == "conv":
        a = proj.attrs
        k = np.asarray(w, np.int64).reshape(w.shape[0], -1)
        spec = {"kind": "conv", "weight": np.asarray(w, np.int8), "in_shape": list(proj.in_shape),
                "out_shape": list(proj.out_shape), "strides": list(a["strides"]), "pads": list(a["pads"]),
                "dilations": list(a["dilations"]), "groups": int(a.get("groups", 1))}
        return spec, np.any(k != 0, axis=1)
    m = sp.csr_matrix(w, dtype=np.int64, copy=True)  # never sort the IR's arrays in place
    m.eliminate_zeros()
    m.sort_indices()
    spec = {"kind": "csr", "data": m.data.astype(np.int8), "indices": m.indices.astype(np.int32),
            "indptr": m.indptr.astype(np.int64), "shape": list(m.shape)}
    rows = m.shape[0] // proj.out_shape[0]
    return spec, np.diff(m.indptr).reshape(-1, rows).sum(1) > 0


def _bounds(proj, code) -> tuple[np.ndarray, np.ndarray]:
    """Per target neuron, (min, max) of a projection's contribution over every source code:
    each plane's floor(d * sum * 2^e) bounded by its positive and negative row sums (a conv
    row by its full kernel, as verify does)."""
    w = proj.weight
    rows = int(np.prod(proj.out_shape))
    if proj.kind == "conv":
        k = np.asarray(w, np.int64).reshape(w.shape[0], -1)
        per = rows // w.shape[0]
        pos, neg = np.repeat(np.maximum(k, 0).sum(1), per), np.repeat(np.minimum(k, 0).sum(1), per)
    else:
        m = sp.csr_matrix(w, dtype=np.int64, copy=True)
        pos = np.asarray(m.maximum(0).sum(1)).ravel().astype(np.int64)
        neg = np.asarray(m.minimum(0).sum(1)).ravel().astype(np.int64)
    e = np.repeat(np.asarray(proj.exp, np.int64), rows // proj.out_shape[0])
    lo, hi = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    for d in code.weights:
        a, b = floor_shift(pos * d, e), floor_shift(neg * d, e)
        lo += np.minimum(a, b)
        hi += np.maximum(a, b)
    return lo, hi


# ---------------------------------------------------------------------------
# Timing: the Lava schedule follows the IR's, a few steps later per layer
# ---------------------------------------------------------------------------

def schedule(program: Program) -> tuple[dict, dict]:
    """(sigma, ready): the Lava step at which population P's unit 0 evaluates (sigma; IR
    start(P) plus an offset that grows by 2 per gate layer: the accumulator hop and the
    realignment), and the step at which its spikes leave realigned (ready; the input's
    planes all at once). IR slack (start later than needed) is kept, so the IR's delays
    between branches carry over."""
    off, sigma, ready = {}, {}, {}
    for pop in program.populations:
        if isinstance(pop, InputPop):
            off[pop.name] = 0
            sigma[pop.name] = pop.start
            ready[pop.name] = pop.start + pop.bits - 1
            continue
        c = 2 if isinstance(pop, GatePop) else 1  # hops from a ready spike to evaluation
        best = 0
        for proj in program.incoming(pop.name):
            src = program.pop(proj.source)
            hop = c if isinstance(src, GatePop) and src.code.bits > 1 else c - 1
            best = max(best, off[src.name] + hop)
        off[pop.name] = best
        sigma[pop.name] = pop.start + best
        if isinstance(pop, GatePop):
            ready[pop.name] = sigma[pop.name] + (pop.code.bits if pop.code.bits > 1 else 0)
    for proj in program.projections:  # guaranteed by verify's timing rule; checked anyway
        tgt = program.pop(proj.target)
        need = ready[proj.source] + (2 if isinstance(tgt, GatePop) else 1)
        if sigma[tgt.name] < need:
            raise BackendError(f"projection {proj.name}: target {tgt.name!r} starts before its source's "
                               "last unit has fired; run the schedule pass")
    return sigma, ready


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

class _Plan:
    def __init__(self, program: Program, record: bool):
        self.p, self.record = program, record
        self.procs, self.conns, self.matrices = [], [], {}
        self.sigma, self.ready = schedule(program)
        # the clock: neuron clock_first[P] + k spikes at sigma(P) + k - 1 (unit k's enable)
        self.clock_first, at = {}, []
        for pop in program.populations:
            if isinstance(pop, GatePop):
                self.clock_first[pop.name] = len(at)
                at += [self.sigma[pop.name] + k - 1 for k in range(pop.code.bits)]
        self.clock_at = np.asarray(at or [0], np.int64)

    def add(self, spec, *targets, source=None):
        self.procs.append(spec)
        if source is not None:
            self.conns.append((source, spec["name"]))
        for t in targets:
            self.conns.append((spec["name"], t))
        return spec["name"]

    @staticmethod
    def size(pop) -> int:
        return int(np.prod(pop.shape))

    # -- populations -------------------------------------------------------

    def input(self, pop: InputPop):
        self.add({"type": "input", "name": pop.name, "size": pop.bits * self.size(pop), "bits": pop.bits,
                  "at": self.ready[pop.name]})

    def gate(self, pop: GatePop):
        if pop.compartments > 1:
            raise BackendError(
                f"population {pop.name!r} joins {pop.compartments} input compartments by max "
                "(lateral-inhibition pooling); the 'loihi' style and `amosc export` build "
                "single-compartment LIFReset units only. Run it on backend 'lava' (fast style) or "
                "compile with --maxpool tree.")
        code, n, name = pop.code, self.size(pop), pop.name
        K = code.bits
        T = np.asarray(code.thresholds, np.int64)
        h = np.asarray(code.resets, np.int64)
        b = pop.bias.ravel().astype(np.int64)
        vth = int(T[0]) - 1
        # enable weights C[k, i] (multiples of 256) carry the gated bias and unit k's threshold
        # offset; the held bias b + vth + 1 - T_k - C lies in [-256, -1]
        C = enable_weights(b[None, :] + vth + 1 - T[:, None])
        held = b[None, :] + vth + 1 - T[:, None] - C
        units = self.add({"type": "lif", "name": name, "size": K * n, "vth": vth,
                          "bias_mant": held.ravel().astype(np.int32), "record": self.record})
        acc = self.add({"type": "graded", "name": f"{name}#acc", "size": n})
        lo, hi = self.incoming(pop, acc, self.sigma[name] - 1)
        self.check_range(pop, C, T, h, b, lo, hi)
        chain = [units]
        if K > 1:
            chain.append(self.add({"type": "graded", "name": f"{name}#chain", "size": K * n}))
        i = np.arange(n)
        # accumulator -> unit 0 and chain block 0: y at step sigma
        self.add(_syn(f"{name}#load", i, i, np.ones(n), (K * n, n), 0, name, graded=True),
                 *chain, source=acc)
        # enable and threshold offsets; the chain accumulates them, so block k gets C_k - C_{k-1}
        delta = np.diff(C, axis=0, prepend=0).ravel()
        rows = np.arange(K * n)
        specs = _grouped(f"{name}#enable", rows, self.clock_first[name] + rows // n, delta,
                         (K * n, self.clock_at.size), f"population {name!r} enable")
        for spec in specs or [_syn(f"{name}#enable", [], [], [], (K * n, self.clock_at.size), 0, name)]:
            self.add(spec, *chain, source=CLOCK)  # (an empty one keeps the population in the graph)
        if K == 1:
            return
        # chain block k -> unit k + 1 and chain block k + 1, one step later
        r = np.arange(n, K * n)
        self.add(_syn(f"{name}#shift", r, r - n, np.ones(r.size), (K * n, K * n), 0, name, graded=True),
                 *chain, source=chain[1])
        # unit k's spike -> unit k + 1 and chain block k + 1, weight -h_k
        for spec in _grouped(f"{name}#inh", r, r - n, -np.repeat(h[:-1], n), (K * n, K * n),
                             f"population {name!r} inhibition"):
            self.add(spec, *chain, source=units)
        # realignment: unit k's spike waits K - 1 - k steps; all leave at sigma + K
        out = self.add({"type": "lif", "name": f"{name}#out", "size": K * n, "vth": 0, "bias_mant": 0})
        self.add(_syn(f"{name}#align", rows, rows, np.ones(K * n), (K * n, K * n), 0, name,
                      delays=np.repeat(K - 1 - np.arange(K), n)), out, source=units)

    def readout(self, pop: ReadoutPop):
        self.add({"type": "lif", "name": pop.name, "size": self.size(pop), "vth": THRESHOLD_LIMIT,
                  "bias_mant": 0, "probe_v": True})
        # Lava compiles what is connected to the process it runs (the readout): an empty synapse
        # from the clock, which feeds every gate, keeps gates the readout does not read in the run
        self.add(_syn(f"{pop.name}#tie", [], [], [], (self.size(pop), self.clock_at.size), 0, pop.name),
                 pop.name, source=CLOCK)
        self.incoming(pop, pop.name, self.sigma[pop.name])

    # -- projections ---------------------------------------------------------

    def incoming(self, pop, target: str, at: int):
        """The planes of every incoming projection, summed into ``target`` at step ``at``.
        Projections whose planes are ready earlier get an accumulator of their own and a
        graded delay (relay neurons beyond 63 steps). Returns the (min, max) of the sum."""
        n = self.size(pop)
        groups: dict[int, list] = {}
        for proj in self.p.incoming(pop.name):
            groups.setdefault(self.ready[proj.source] + 1, []).append(proj)
        total_lo, total_hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for arrive in sorted(groups):
            dst = target if arrive == at else \
                self.add({"type": "graded", "name": f"{pop.name}#acc@{arrive}", "size": n})
            lo, hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
            for proj in groups[arrive]:
                a, b = self.planes(proj, dst)
                lo, hi = lo + a, hi + b
            if arrive != at:
                if max(-int(lo.min()), int(hi.max())) > GRADED_LIMIT:
                    raise RangeError(f"population {pop.name!r}: the partial sum of its projections ready "
                                     f"at step {arrive} can exceed a 24-bit graded spike")
                self.delay_line(dst, target, at - arrive, n, f"population {pop.name!r}")
            total_lo, total_hi = total_lo + lo, total_hi + hi
        return total_lo, total_hi

    def delay_line(self, src: str, dst: str, steps: int, n: int, where: str):
        """Graded identity hops from ``src`` to ``dst`` taking ``steps`` steps: one DelaySparse
        with delay steps - 1 when that fits in 63, else relay neurons every 64 steps."""
        i = np.arange(n)
        hop = 0
        while steps > MAX_DELAY + 1:
            relay = self.add({"type": "graded", "name": f"{src}#relay{hop}", "size": n})
            self.add(_syn(f"{src}#hop{hop}", i, i, np.ones(n), (n, n), 0, where, delays=MAX_DELAY,
                          graded=True), relay, source=src)
            src, steps, hop = relay, steps - MAX_DELAY - 1, hop + 1
        self.add(_syn(f"{src}#delay", i, i, np.ones(n), (n, n), 0, where, delays=steps - 1, graded=True),
                 dst, source=src)

    def planes(self, proj, dst: str):
        """One Sparse per distinct plane shift s = e[c] + K - 1 - j: output channel c (exponent
        e) reads plane j = e + K - 1 - s of the source's realigned spikes, mantissas M at
        exponent s. M is stored once per projection (plan["matrices"]; network.plane_weights
        builds each process's weights). Returns the (min, max) of the projection's input."""
        src = self.p.pop(proj.source)
        code = src.code
        if not code.is_binary():
            raise RangeError(f"projection {proj.name}: the loihi style needs binary source codes")
        K, n_src = code.bits, self.size(src)
        exp = np.asarray(proj.exp, np.int64)
        spec, live = _matrix(proj)
        source = proj.source if K == 1 or isinstance(src, InputPop) else f"{proj.source}#out"
        if live.any():
            self.matrices[proj.name] = spec
            for s in range(int(exp[live].min()), int(exp[live].max()) + K):
                planes = exp + K - 1 - s
                planes[~live | (planes < 0) | (planes >= K)] = -1
                if (planes >= 0).any():
                    if not WEIGHT_EXP_RANGE[0] <= s - 1 <= WEIGHT_EXP_RANGE[1]:
                        raise RangeError(f"projection {proj.name}: weight exponent {s - 1} outside "
                                         f"Loihi's {WEIGHT_EXP_RANGE}")
                    self.add({"type": "synapses", "name": f"{proj.name}#s{s}", "matrix": proj.name,
                              "planes": planes.astype(np.int32), "block": n_src, "blocks": K,
                              "weight_exp": s - 1}, dst, source=source)
        return _bounds(proj, code)

    # -- ranges ---------------------------------------------------------------

    @staticmethod
    def check_range(pop, C, T, h, b, lo, hi):
        """Unit k's per-step input a_k = y - sum_{j<k} h_j z_j + C_k must stay within
        +-ACC_LIMIT (Loihi's 24-bit current after its 6-bit shift). With r_k the IR's
        residual y + b - inh_k, a_k = r_k - b + C_k, and r_k's range follows the code: a
        unit that did not fire leaves r below its threshold, one that fired subtracts h."""
        L, R = lo + b, hi + b
        worst_lo, worst_hi = 0, 0
        for k in range(len(T)):
            if k:
                t, hk = int(T[k - 1]), int(h[k - 1])
                fire, quiet = R >= t, L <= t - 1
                big = np.iinfo(np.int64).max
                L = np.minimum(np.where(fire, np.maximum(L, t) - hk, big), np.where(quiet, L, big))
                R = np.maximum(np.where(fire, R - hk, -big), np.where(quiet, np.minimum(R, t - 1), -big))
            worst_lo = min(worst_lo, int((L - b + C[k]).min()))
            worst_hi = max(worst_hi, int((R - b + C[k]).max()))
        if worst_hi > ACC_LIMIT or worst_lo < -ACC_LIMIT:
            raise RangeError(
                f"population {pop.name!r}: with its threshold offsets folded into the enable weights, "
                f"a unit's per-step input can reach [{worst_lo}, {worst_hi}], outside +-{ACC_LIMIT} "
                "(Loihi's 24-bit current); recompile with fewer --bits or run it on backend 'lava'")

    def build(self) -> dict:
        for pop in self.p.populations:
            if isinstance(pop, InputPop):
                self.input(pop)
            elif isinstance(pop, GatePop):
                self.gate(pop)
            else:
                self.readout(pop)
        self.procs.insert(1, {"type": "clock", "name": CLOCK, "at": self.clock_at})
        p, out = self.p, self.p.output_pop
        pops = [{"name": q.name, "start": int(self.sigma[q.name]), "bits": q.code.bits, "size": self.size(q)}
                for q in p.populations if isinstance(q, GatePop)]
        return {"processes": self.procs, "connections": self.conns, "matrices": self.matrices, "latency": int(self.sigma[out.name]) + 1,
                "readout": out.name, "readout_start": int(self.sigma[out.name]),
                "readout_bias": out.bias.ravel().astype(np.int64), "populations": pops,
                "input": {"shape": list(p.input_pop.shape), "bits": p.input_pop.bits,
                          "scale": float(p.input_pop.scale), "zero_point": float(p.input_pop.zero_point)},
                "output_scale": out.scale.astype(np.float64)}


def plan(program: Program, record: bool = True) -> dict:
    """The standard-process network of ``program`` as plain data (see network.py)."""
    for pop in program.populations:
        if isinstance(pop, GatePop) and pop.code.steps:
            raise BackendError(
                f"population {pop.name!r} is a radix/flash ADC (several units fire in one step, docs/ir.md"
                "#gate-structures); the 'loihi' style and `amosc export` build sequential LIFReset chains "
                "only. Run it on backend 'lava' (fast style) or compile without --latency-budget / "
                "--neuron-budget.")
        if isinstance(pop, GatePop) and (pop.fit or {}).get("structure") == "unit":
            raise BackendError(
                f"population {pop.name!r} is a fitted AMOS unit (fitted thresholds, resets and signed "
                "integer code weights, docs/ir.md#fitted-units); the 'loihi' style's plane synapses carry "
                "binary codes only. Run it on backend 'lava' (fast style) or compile without --fitted-units.")
    return _Plan(program, record).build()


def process_count(p: dict) -> dict:
    """Processes of a plan by kind (what Lava instantiates, sinks and probes included)."""
    out: dict[str, int] = {}
    for spec in p["processes"]:
        out[spec["type"]] = out.get(spec["type"], 0) + 1
        if spec.get("record") or spec.get("probe_v"):
            out["probe"] = out.get("probe", 0) + 1
    out["total"] = sum(out.values())
    return out


def _channel_synapses(spec: dict) -> np.ndarray:
    """Non-zero weights of a plan matrix per output channel (a conv's border taps excluded)."""
    if spec["kind"] == "csr":
        return np.diff(np.asarray(spec["indptr"]))  # per row
    w = np.asarray(spec["weight"])
    (_, h, wd), (_, ho, wo) = spec["in_shape"], spec["out_shape"]
    (sh, sw), (pt, pl), (dh, dw) = spec["strides"], spec["pads"][:2], spec["dilations"]
    kh, kw = w.shape[2:]
    yi = np.arange(ho)[None, :] * sh - pt + np.arange(kh)[:, None] * dh
    xi = np.arange(wo)[None, :] * sw - pl + np.arange(kw)[:, None] * dw
    valid = np.outer(((yi >= 0) & (yi < h)).sum(1), ((xi >= 0) & (xi < wd)).sum(1))  # (kh, kw)
    return ((w != 0) * valid[None, None]).reshape(w.shape[0], -1).sum(1)


def synapse_count(p: dict, by_matrix: dict = None) -> int:
    """Synapses of a plan (what the Lava processes store); ``by_matrix`` collects them per
    projection (its plane processes)."""
    total, per = 0, {}
    for spec in p["processes"]:
        if spec["type"] != "synapses":
            continue
        if "matrix" not in spec:
            total += len(spec["data"])
            continue
        key = spec["matrix"]
        if key not in per:
            per[key] = _channel_synapses(p["matrices"][key])
        planes = np.asarray(spec["planes"])
        c = per[key]
        if c.size != planes.size:  # csr: per row -> per channel
            c = c.reshape(planes.size, -1).sum(1)
        got = int(c[planes >= 0].sum())
        total += got
        if by_matrix is not None:
            by_matrix[key] = by_matrix.get(key, 0) + got
    return total


def check_simulable(p: dict, limit: int = MAX_SIM_SYNAPSES) -> None:
    """BackendError unless Lava's CPU simulator can hold the plan's synapses."""
    per: dict = {}
    total = synapse_count(p, per)
    if total > limit:
        worst = max(per, key=per.get)
        raise BackendError(
            f"the loihi-style network holds {total:,} synapses (projection {worst}: {per[worst]:,}); "
            f"Lava's CPU simulator keeps ~25 bytes per synapse, so this runs only up to {limit:,}. "
            "Run it on backend 'lava' (fast style, shared convolution weights) or 'reference'; "
            "`amosc export --target lava` still writes it (a convolution is stored by its kernel)")


def rasters_by_item(p: dict, rasters: dict, n: int, interval: int) -> tuple[dict, int]:
    """Lava rasters {unit process: (K * n, steps)} -> {population: (N, K, *shape)} (unit k of
    input i is read at i * interval + sigma + k), plus the count of spikes at any other step
    (which must be zero)."""
    out, stray = {}, 0
    for pop in p["populations"]:
        r = rasters[pop["name"]]
        K, size, s = pop["bits"], pop["size"], pop["start"]
        item = np.zeros((n, K, size), np.uint8)
        hit = 0
        for k in range(K):
            cols = np.arange(n) * interval + s + k
            item[:, k] = r[k * size:(k + 1) * size, cols].T
            hit += int(item[:, k].sum())
        stray += int(r.sum()) - hit
        out[pop["name"]] = item
    return out, stray


def result_from_lava(program: Program, p: dict, codes, interval, y, rasters, steps, record) -> RunResult:
    """Turn network.run's readout values and unit rasters into a RunResult."""
    from ...ir.semantics import decode, spike_counts
    n = codes.shape[0]
    by_item, stray = rasters_by_item(p, rasters, n, interval) if rasters else ({}, 0)
    by_item = {k: v.reshape(n, v.shape[1], *program.pop(k).shape) for k, v in by_item.items()}
    spikes = {k: r.reshape(n, -1).sum(1).astype(np.int64) for k, r in by_item.items()}
    spikes = {program.input: spike_counts(codes, program.input_pop.bits), **spikes}
    return RunResult(y, decode(program.output_pop, y), spikes, by_item if record else {},
                     latency=int(p["latency"]), steps=steps, interval=interval,
                     extra={"spurious_spikes": stray, "style": "loihi",
                            "processes": process_count(p)["total"]})
