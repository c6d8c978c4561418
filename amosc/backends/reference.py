"""The reference backend: a time-stepped, bit-exact simulator of the AMOS IR.

It is the verification oracle: it steps every population through time as the
hardware would (docs/ir.md#timing), delivering each spike along every
projection with its synaptic delay, and must agree integer for integer with the
level-1 evaluation in :mod:`amosc.ir.semantics` and spike for spike with Lava.

Inputs are assigned to *lanes* (independent copies of the network, vectorized
with numpy) and, within a lane, enter every ``interval`` steps (pipelining).
``interval=0`` gives every input its own lane, all starting at step 0.

:class:`Schedule`, :class:`UnitsState` and :class:`SynapseState` hold the
per-population dynamics. The Lava ``fast`` style implements the same dynamics
independently (it shares only the Program's data layout, docs/lava.md), so its
agreement with this simulator is a real check.
"""

from __future__ import annotations

import numpy as np

from ..ir.nodes import GatePop, InputPop, Program, ReadoutPop
from ..ir.semantics import bit_planes, decode, enable_weights, encode_input, join, plane_inputs
from ..progress import progress
from .base import Backend, RunResult

DEFAULT_LANES = 128
#: Bytes of simulator state the default lane count aims for (see :func:`default_lanes`).
LANE_MEMORY = 1 << 30


class Schedule:
    """Which input (slot) a lane holds at each step: slot s enters at s * interval."""

    def __init__(self, n: int, lanes: int, interval: int):
        self.n, self.lanes, self.interval = n, lanes, max(interval, 1)
        self.slots = -(-n // lanes)
        self.enabled = (np.arange(self.slots * lanes) < n).reshape(self.slots, lanes)

    def slot_at(self, t0: int):
        """The slot whose inputs entered at step t0, or None."""
        if t0 < 0 or t0 % self.interval:
            return None
        s = t0 // self.interval
        return s if s < self.slots else None

    @property
    def steps_before_last(self) -> int:
        return (self.slots - 1) * self.interval


class SynapseState:
    """A projection's synapses with their delays: spikes of the source at step t
    become arrivals at the target's copy-0 input at t + 1 + d_j."""

    def __init__(self, proj, src, tgt):
        self.proj, self.code = proj, src.code
        self.offsets = [tgt.start - src.start - st for st in src.code.unit_steps]  # 1 + d_j

    def deliver(self, z: np.ndarray, t: int, arrive) -> None:
        """z (K, lanes, *in_shape) spikes at step t; calls arrive(step, y) per active plane.
        The active planes' synaptic sums are computed by one product (each plane's
        floor(d_j (M @ z_j) 2^e) on its own, :func:`~amosc.ir.semantics.plane_inputs`)."""
        active = [j for j in range(self.code.bits) if z[j].any()]
        if not active:
            return
        y = plane_inputs(self.proj, [self.code.weights[j] for j in active], z[active])
        for i, j in enumerate(active):
            arrive(t + self.offsets[j], y[i])


class UnitsState:
    """The K memoryless AMOS units of a gate population (or a readout's accumulators).

    Unit k fires at step s_k of its code (s_k = k for a sequential code, the code's
    ``steps`` for a radix / flash ADC). At step t it sees copy-0 arrivals of step t - s_k
    (its synapses are delayed s_k more), minus inhibition from the units of earlier steps
    of the same input, plus its bias, which is gated: without the enable E of a scheduled
    input it holds b - E < 0.

    The units of one input form a *wave* w (the step its first units evaluate); unit k
    evaluates at w + s_k. ``inh[w]`` is the inhibition the wave's units have sent so far:
    unit j's spike at w + s_j adds h_j z_j, which reaches every unit k of a later step
    (at w + s_k, delay s_k - s_j - 1) before it evaluates; units of one step fire together
    and do not see each other's, so a step's inhibition is added after the step.
    """

    def __init__(self, pop, lanes: int, schedule: Schedule):
        self.pop, self.lanes, self.sched = pop, lanes, schedule
        self.acc: dict[int, np.ndarray] = {}
        self.joined: dict[int, np.ndarray] = {}  # compartments > 1: acc joined by max
        self.inh: dict[int, np.ndarray] = {}
        self.bias = pop.bias.astype(np.int64)
        self.idle_bias = self.bias - enable_weights(self.bias)  # in [-2^ENABLE_SHIFT, -1]
        self.spurious = 0

    def arrive(self, t: int, y: np.ndarray) -> None:
        if t in self.acc:
            self.acc[t] = self.acc[t] + y
        else:
            self.acc[t] = y

    def _input(self, t: int):
        """The units' synaptic input that arrived for step t (compartments joined), or None.
        Every arrival for step t is delivered before step t, so the join is final."""
        a = self.acc.get(t)
        if a is None or getattr(self.pop, "compartments", 1) == 1:
            return a
        if t not in self.joined:
            self.joined[t] = join(self.pop, a)
        return self.joined[t]

    def forget(self, t: int) -> None:
        """After step t, drop what no later step reads: unit k at step t' reads the arrivals
        and the wave inhibition of t' - k, so nothing before t + 2 - K (a readout reads only
        its own step's arrivals)."""
        oldest = t + 2 - (self.pop.code.depth if isinstance(self.pop, GatePop) else 1)
        for store in (self.acc, self.joined, self.inh):
            for key in [k for k in store if k < oldest]:
                del store[key]

    def readout(self, t: int):
        """(slot, y) when a scheduled input's output is read at step t, else None."""
        s = self.sched.slot_at(t - self.pop.start)
        if s is None:
            return None
        a = self.acc.get(t)
        return s, np.broadcast_to(self.bias, (self.lanes, *self.pop.shape)) + (0 if a is None else a)

    def _bias(self, s):
        """Each lane's bias term: b where slot s enables the lane (a scheduled input), else b - E."""
        en = self.sched.enabled[s] if s is not None else np.zeros(self.lanes, bool)
        if en.all():
            return self.bias
        if not en.any():
            return self.idle_bias
        return np.where(en.reshape((self.lanes,) + (1,) * len(self.pop.shape)), self.bias, self.idle_bias)

    def step(self, t: int, note=None):
        """Spikes (K, lanes, *shape) of step t, or None when silent. ``note(slot, k, z_k)``
        is called for every unit evaluated for a scheduled input."""
        code, shape = self.pop.code, self.pop.shape
        steps, last = code.unit_steps, code.depth - 1
        z = None
        sent: dict = {}  # wave -> inhibition sent this step (seen from the next step on)
        for k in range(code.bits):
            w = t - steps[k]  # the wave of unit k: its synaptic input arrived for w
            a, inh = self._input(w), self.inh.get(w)
            s = self.sched.slot_at(w - self.pop.start)
            if s is None and a is None and inh is None:
                continue  # idle unit: v = b - E < 1, provably silent
            v = np.broadcast_to(self._bias(s), (self.lanes, *shape))
            if a is not None:
                v = v + a
            if inh is not None:
                v = v - inh
            zk = v >= code.thresholds[k]
            if s is None:
                self.spurious += int(zk.sum())
            elif note is not None:
                note(s, k, zk)
            if zk.any():
                if z is None:
                    z = np.zeros((code.bits, self.lanes, *shape), np.uint8)
                z[k] = zk
                if steps[k] < last:  # unit k inhibits the units of the wave's later steps
                    hz = code.resets[k] * zk.astype(np.int64)
                    sent[w] = hz if w not in sent else sent[w] + hz
        for w, hz in sent.items():
            self.inh[w] = hz if w not in self.inh else self.inh[w] + hz
        return z


def input_spikes(pop: InputPop, planes: np.ndarray, sched: Schedule, t: int, note=None):
    """Spikes (K, lanes, *shape) of the input encoder at step t from code planes
    (K, slots, lanes, *shape), or None."""
    z = None
    for k in range(pop.bits):
        s = sched.slot_at(t - pop.start - k)
        if s is not None:
            if note is not None:
                note(s, k, planes[k, s])
            if planes[k, s].any():
                if z is None:
                    z = np.zeros((pop.bits, sched.lanes, *pop.shape), np.uint8)
                z[k] = planes[k, s]
    return z


class _Sim:
    def __init__(self, program: Program, codes: np.ndarray, lanes: int, interval: int, record: bool):
        self.p = program
        self.sched = sched = Schedule(codes.shape[0], lanes, interval)
        shape = program.input_pop.shape
        pad = sched.slots * lanes - codes.shape[0]
        codes = np.concatenate([codes, np.zeros((pad, *shape), codes.dtype)])
        self.planes = bit_planes(codes.reshape(sched.slots, lanes, *shape), program.input_pop.bits)
        self.units = {p.name: UnitsState(p, lanes, sched) for p in program.populations
                      if not isinstance(p, InputPop)}
        self.syn = {p.name: [SynapseState(pr, p, program.pop(pr.target))
                             for pr in program.projections if pr.source == p.name]
                    for p in program.populations}
        self.counts = {p.name: np.zeros((sched.slots, lanes), np.int64)
                       for p in program.populations if not isinstance(p, ReadoutPop)}
        self.rasters = {p.name: np.zeros((sched.slots, lanes, p.code.bits, *p.shape), np.uint8)
                        for p in program.populations if record and not isinstance(p, ReadoutPop)}
        self.output = np.zeros((sched.slots, lanes, *program.output_pop.shape), np.int64)

    def step(self, t: int):
        for pop in self.p.populations:
            def note(s, k, zk, name=pop.name):
                self.counts[name][s] += zk.reshape(self.sched.lanes, -1).sum(1, dtype=np.int64)
                if name in self.rasters:
                    self.rasters[name][s, :, k] = zk

            if isinstance(pop, InputPop):
                z = input_spikes(pop, self.planes, self.sched, t, note)
            elif isinstance(pop, GatePop):
                z = self.units[pop.name].step(t, note)
            else:
                got = self.units[pop.name].readout(t)
                if got is not None:
                    self.output[got[0]] = got[1]
                continue
            if z is not None:
                for syn in self.syn[pop.name]:
                    syn.deliver(z, t, self.units[syn.proj.target].arrive)
        for u in self.units.values():
            u.forget(t)

    def run(self):
        steps = self.sched.steps_before_last + self.p.latency
        for t in range(steps):
            self.step(t)
        return steps


def simulate(program: Program, x: np.ndarray, *, record=False, interval=0, lanes=None) -> RunResult:
    """Run the spiking simulation of ``program`` on float inputs x (N, *input_shape)."""
    codes = encode_input(program.input_pop, x)
    n = codes.shape[0]
    if interval == 0:
        lanes = min(lanes or default_lanes(program), n)
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


def default_lanes(program: Program) -> int:
    """Lanes (inputs simulated side by side) whose state fits in about LANE_MEMORY bytes:
    per lane, a population holds up to K + 1 steps of int64 arrivals and K steps of K
    spike planes; at most DEFAULT_LANES."""
    per_lane = 1
    for pop in program.populations:
        if isinstance(pop, InputPop):
            continue
        k = pop.code.bits if isinstance(pop, GatePop) else 1
        per_lane += (k + 1) * int(np.prod(pop.input_shape)) * 8 + k * k * int(np.prod(pop.shape))
    return int(max(1, min(DEFAULT_LANES, LANE_MEMORY // per_lane)))


def _run_chunk(program, codes, lanes, interval, record):
    sim = _Sim(program, codes, lanes, interval, record)
    steps = sim.run()
    n = codes.shape[0]

    def items(a):  # (slots, lanes, ...) -> (n, ...) in input order
        return a.reshape(-1, *a.shape[2:])[:n]

    return {"output": items(sim.output), "spikes": {k: items(v) for k, v in sim.counts.items()},
            "rasters": {k: items(v) for k, v in sim.rasters.items()}, "steps": steps,
            "spurious": sum(u.spurious for u in sim.units.values())}


class ReferenceBackend(Backend):
    name = "reference"
    description = "amosc's time-stepped numpy simulator (bit-exact oracle)"

    def run(self, program, x, *, record=False, interval=0, lanes=None) -> RunResult:
        return simulate(program, x, record=record, interval=interval, lanes=lanes)
