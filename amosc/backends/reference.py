"""The reference backend: a time-stepped, bit-exact simulator of the AMOS IR.

It is the verification oracle: it steps every population through time as the
hardware would (docs/ir.md#timing), delivering each spike along every
projection with its synaptic delay, and must agree integer for integer with the
level-1 evaluation in :mod:`amosc.ir.semantics` and spike for spike with Lava.

Inputs are assigned to *lanes* (independent copies of the network, vectorized
with numpy) and, within a lane, enter every ``interval`` steps (pipelining).
``interval=0`` gives every input its own lane, all starting at step 0.
"""

from __future__ import annotations

import numpy as np

from ..ir.nodes import ENABLE, GatePop, InputPop, Program, ReadoutPop
from ..ir.semantics import bit_planes, decode, encode_input, linear, plane_weights
from ..progress import progress
from .base import Backend, RunResult

DEFAULT_LANES = 128


class _Sim:
    def __init__(self, program: Program, codes: np.ndarray, lanes: int, interval: int, record: bool):
        self.p = program
        n = codes.shape[0]
        self.n, self.lanes, self.interval = n, lanes, max(interval, 1)
        self.slots = -(-n // lanes)
        pad = self.slots * lanes - n
        shape = program.input_pop.shape
        self.codes = np.concatenate([codes, np.zeros((pad, *shape), codes.dtype)]).reshape(
            self.slots, lanes, *shape)
        self.planes = bit_planes(self.codes, program.input_pop.bits)  # (K, slots, lanes, ...)
        self.enabled = (np.arange(self.slots * lanes) < n).reshape(self.slots, lanes)
        self.record = record
        self.acc = {pop.name: {} for pop in program.populations}      # arrival step -> array
        self.hist = {pop.name: {} for pop in program.populations}     # step -> (K, lanes, ...)
        self.counts = {pop.name: np.zeros((self.slots, lanes), np.int64)
                       for pop in program.populations if not isinstance(pop, ReadoutPop)}
        self.rasters = {pop.name: np.zeros((self.slots, lanes, pop.code.bits, *pop.shape), np.uint8)
                        for pop in program.populations if record and not isinstance(pop, ReadoutPop)}
        self.output = np.zeros((self.slots, lanes, *program.output_pop.shape), np.int64)
        self.spurious = 0
        self.out_proj = {pop.name: [pr for pr in program.projections if pr.source == pop.name]
                         for pop in program.populations}
        self.weights = {}  # (projection, d) -> plane weights

    def slot_at(self, t0: int):
        """The slot whose inputs entered at step t0, or None."""
        if t0 < 0 or t0 % self.interval:
            return None
        s = t0 // self.interval
        return s if s < self.slots else None

    def step(self, t: int):
        for pop in self.p.populations:
            if isinstance(pop, InputPop):
                z = self.input_spikes(pop, t)
            elif isinstance(pop, GatePop):
                z = self.gate_spikes(pop, t)
            else:
                self.readout(pop, t)
                continue
            if z is not None:
                self.deliver(pop, z, t)
        for store in (*self.acc.values(), *self.hist.values()):
            for key in [k for k in store if k < t - 64]:
                del store[key]

    def input_spikes(self, pop: InputPop, t: int):
        z = np.zeros((pop.bits, self.lanes, *pop.shape), np.uint8)
        for k in range(pop.bits):
            s = self.slot_at(t - pop.start - k)
            if s is not None:
                z[k] = self.planes[k, s]
                self.note(pop, s, k, z[k])
        return z if z.any() else None

    def gate_spikes(self, pop: GatePop, t: int):
        code = pop.code
        hist = self.hist[pop.name]
        z = np.zeros((code.bits, self.lanes, *pop.shape), np.uint8)
        bias = pop.bias.astype(np.int64)
        for k in range(code.bits):
            a = self.acc[pop.name].get(t - k)
            inh = 0
            for j in range(k):  # inhibition from unit j, fired at t - k + j
                hj = hist.get(t - k + j)
                if hj is not None:
                    inh = inh + code.resets[j] * hj[j].astype(np.int64)
            s = self.slot_at(t - pop.start - k)
            if s is None and a is None and np.isscalar(inh):
                continue  # idle unit: v = b - ENABLE < 1, provably silent
            en = self.enabled[s] if s is not None else np.zeros(self.lanes, bool)
            en = en.reshape((self.lanes,) + (1,) * len(pop.shape))
            v = (0 if a is None else a) - inh + bias - ENABLE * (~en)
            z[k] = v >= code.thresholds[k]
            if s is None:
                self.spurious += int(z[k].sum())
            else:
                self.note(pop, s, k, z[k])
        if z.any():
            hist[t] = z
            return z
        return None

    def note(self, pop, slot, k, zk):
        self.counts[pop.name][slot] += zk.reshape(self.lanes, -1).sum(1, dtype=np.int64)
        if self.record:
            self.rasters[pop.name][slot, :, k] = zk

    def readout(self, pop: ReadoutPop, t: int):
        s = self.slot_at(t - pop.start)
        if s is None:
            return
        a = self.acc[pop.name].get(t)
        self.output[s] = pop.bias.astype(np.int64) + (0 if a is None else a)

    def deliver(self, src, z, t: int):
        code = src.code
        for proj in self.out_proj[src.name]:
            tgt = self.p.pop(proj.target)
            acc = self.acc[tgt.name]
            for j in range(code.bits):
                if not z[j].any():
                    continue
                key = (proj.name, code.weights[j])
                if key not in self.weights:
                    self.weights[key] = plane_weights(proj, code.weights[j])
                y = linear(proj.kind, self.weights[key], proj.attrs, z[j], proj.out_shape)
                # copy-0 delay: d_j = start(T) - start(S) - j - 1, arrival t + 1 + d_j
                arrive = t + tgt.start - src.start - j
                y = np.rint(y).astype(np.int64)
                if arrive in acc:
                    acc[arrive] += y
                else:
                    acc[arrive] = y

    def run(self):
        steps = (self.slots - 1) * self.interval + self.p.output_pop.start + 1
        for t in range(steps):
            self.step(t)
        return steps


def simulate(program: Program, x: np.ndarray, *, record=False, interval=0, lanes=None) -> RunResult:
    """Run the spiking simulation of ``program`` on float inputs x (N, *input_shape)."""
    codes = encode_input(program.input_pop, x)
    n = codes.shape[0]
    if interval == 0:
        lanes = min(lanes or DEFAULT_LANES, n)
        chunks = [(i, min(i + lanes, n)) for i in range(0, n, lanes)]
        parts = [_run_chunk(program, codes[a:b], b - a, 0, record)
                 for a, b in progress(chunks, desc="simulating", total=len(chunks))]
    else:
        parts = [_run_chunk(program, codes, lanes or 1, interval, record)]
    out = np.concatenate([p["output"] for p in parts])
    spikes = {k: np.concatenate([p["spikes"][k] for p in parts]) for k in parts[0]["spikes"]}
    rasters = {k: np.concatenate([p["rasters"][k] for p in parts]) for k in parts[0]["rasters"]}
    return RunResult(out, decode(program.output_pop, out), spikes, rasters,
                     latency=program.latency, steps=sum(p["steps"] for p in parts),
                     interval=interval, extra={"spurious_spikes": sum(p["spurious"] for p in parts)})


def _run_chunk(program, codes, lanes, interval, record):
    sim = _Sim(program, codes, lanes, interval, record)
    steps = sim.run()
    n = codes.shape[0]

    def items(a):  # (slots, lanes, ...) -> (n, ...) in input order
        return a.reshape(-1, *a.shape[2:])[:n]

    return {"output": items(sim.output), "spikes": {k: items(v) for k, v in sim.counts.items()},
            "rasters": {k: items(v) for k, v in sim.rasters.items()}, "steps": steps,
            "spurious": sim.spurious}


class ReferenceBackend(Backend):
    name = "reference"
    description = "amosc's time-stepped numpy simulator (bit-exact oracle)"

    def run(self, program, x, *, record=False, interval=0, lanes=None) -> RunResult:
        return simulate(program, x, record=record, interval=interval, lanes=lanes)
