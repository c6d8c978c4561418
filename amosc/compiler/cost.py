"""Cost model and core mapping of an integer program (docs/hardware.md).

:func:`graph` is the program as a networkx DAG; :func:`static_cost` counts neurons,
synapses (stored: one weight per map entry and source unit; deployed: one per synapse of
every target unit, as an AMOS circuit wires them), the latency (critical path in steps)
and the pipelined throughput; :func:`map_cores` assigns every population slice to a core
within a :class:`~.hardware.Profile`'s limits; :func:`activity` measures spikes and
synaptic operations per input with the level-1 evaluator on real inputs; :func:`report`
puts them together with an energy estimate from the profile's per-event energies.

What is modelled (and what is an estimate) is stated in docs/hardware.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from ..errors import ResourceError
from ..ir.nodes import GatePop, InputPop, Program
from .hardware import Profile


def units_per_element(pop) -> int:
    """Neurons per tensor element: K for spiking codes, 1 for a readout accumulator."""
    return pop.code.bits if isinstance(pop, (InputPop, GatePop)) else 1


def inhibition_pairs(pop) -> int:
    """Lateral inhibition synapses of one element: unit j inhibits every unit of a later step."""
    if not isinstance(pop, (InputPop, GatePop)):
        return 0
    st = np.asarray(pop.code.unit_steps)
    return int((st[:, None] < st[None, :]).sum())


def depth(pop) -> int:
    """Steps a population's code takes (1 for a readout: read one step after its input)."""
    return pop.code.depth if isinstance(pop, (InputPop, GatePop)) else 1


def graph(program: Program) -> nx.DiGraph:
    """The program as a DAG: a node per population (``pop``, ``depth``: the steps its code
    takes), an edge per source -> target pair (``projections``: list)."""
    g = nx.DiGraph()
    for pop in program.populations:
        g.add_node(pop.name, pop=pop, depth=depth(pop))
    for pr in program.projections:
        if g.has_edge(pr.source, pr.target):
            g.edges[pr.source, pr.target]["projections"].append(pr)
        else:
            g.add_edge(pr.source, pr.target, projections=[pr])
    return g


def critical_path(program: Program) -> tuple[int, list]:
    """(latency in steps, the populations on the longest path): a source hands its code on
    after its depth in steps, the readout is read one step after its input arrives."""
    g = graph(program)
    for u, v in g.edges:
        g.edges[u, v]["steps"] = g.nodes[u]["depth"]
    path = nx.dag_longest_path(g, weight="steps")
    return nx.dag_longest_path_length(g, weight="steps") + 1, path


def fan_in(pr) -> np.ndarray:
    """Synapses per target input element (per source unit), flattened over pr.out_shape
    (conv: every position counted as interior, an upper bound at the borders)."""
    if sp.issparse(pr.weight):
        return np.diff(pr.weight.indptr).astype(np.int64)
    if pr.kind == "conv":
        per_channel = np.count_nonzero(pr.weight.reshape(pr.weight.shape[0], -1), axis=1)
        return np.repeat(per_channel.astype(np.int64), int(np.prod(pr.out_shape[1:])))
    return np.count_nonzero(pr.weight, axis=1).astype(np.int64)


def _has_delays(program: Program, pr) -> bool:
    src, tgt = program.pop(pr.source), program.pop(pr.target)
    return tgt.start - src.start - depth(src) > 0 or depth(tgt) > 1


@dataclass
class Cost:
    neurons: int
    synapses: int              # stored: map entries x source units
    synapses_deployed: int     # one per (source unit, target unit) pair, lateral inhibition included
    latency_steps: int
    critical_path: list
    throughput_inputs_per_step: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def static_cost(program: Program) -> Cost:
    neurons = stored = deployed = 0
    for pop in program.populations:
        k = units_per_element(pop)
        n = int(np.prod(pop.shape))
        neurons += n * k
        if isinstance(pop, GatePop):
            deployed += n * k * (k - 1) // 2   # lateral inhibition of the later units
    for pr in program.projections:
        ks = units_per_element(program.pop(pr.source))
        kt = units_per_element(program.pop(pr.target))
        stored += pr.synapses * ks
        deployed += pr.synapses * ks * kt
    latency, path = critical_path(program)
    return Cost(neurons, stored, deployed, latency, path, 1.0)


# ----------------------------------------------------------------------------- mapping
@dataclass
class Slice:
    population: str
    start: int          # first element (flattened)
    stop: int
    core: int
    neurons: int
    memory_bits: int
    input_axons: int
    units: tuple = ()   # (first, stop) unit of the one element [start, stop) when it is split over cores


@dataclass
class Mapping:
    target: str
    slices: list
    cores: int
    chips: int
    utilisation: dict   # resource -> (used, capacity) summed over the used cores

    def to_dict(self) -> dict:
        per_pop: dict = {}
        for s in self.slices:
            per_pop[s.population] = per_pop.get(s.population, 0) + 1
        return {"target": self.target, "cores": self.cores, "chips": self.chips,
                "utilisation": {k: {"used": u, "capacity": c, "fraction": u / c if c else 0.0}
                                for k, (u, c) in self.utilisation.items()},
                "cores_per_population": per_pop}


def _axon_bound(program: Program, pop, a: int, b: int) -> int:
    """Distinct source units feeding elements [a, b) of ``pop`` (an upper bound: for a conv,
    the input rows its output rows read, over the channel groups they span)."""
    total = 0
    m = getattr(pop, "compartments", 1)
    for pr in program.incoming(pop.name):
        src = program.pop(pr.source)
        ks = units_per_element(src)
        n_src = int(np.prod(pr.in_shape)) * ks
        if pr.kind == "conv" and len(pr.out_shape) == 3:
            co, ho, wo = pr.out_shape
            ci, h, w = pr.in_shape
            plane = ho * wo
            c0, c1 = (a * m) // plane, (b * m - 1) // plane
            if c0 == c1:
                r0, r1 = ((a * m) % plane) // wo, ((b * m - 1) % plane) // wo
                rows = min(h, (r1 - r0) * pr.attrs["strides"][0] + (pr.weight.shape[2] - 1)
                           * pr.attrs["dilations"][0] + 1)
            else:
                rows = h
            g = pr.attrs["groups"]
            groups = min(g, (c1 // (co // g)) - (c0 // (co // g)) + 1)
            total += min(n_src, groups * (ci // g) * rows * w * ks)
        else:
            f = fan_in(pr)[a * m:b * m]
            total += min(n_src, int(f.sum()) * ks)
    return total


class _SliceCost:
    """Resources of a slice [a, b) of consecutive elements of one population on one core."""

    def __init__(self, program: Program, pop, hw: Profile, units: int | None = None):
        """``units``: place only this many of each element's units (a group of them, when a
        whole element does not fit a core); each unit reads all the element's inputs and
        is inhibited by the earlier-step units (about ``units / K`` of the element's)."""
        self.program, self.pop, self.hw = program, pop, hw
        kpop = units_per_element(pop)
        self.k = k = units or kpop
        m = getattr(pop, "compartments", 1)
        n = int(np.prod(pop.shape))
        delays = any(_has_delays(program, pr) for pr in program.incoming(pop.name))
        per_syn = hw.weight_bits + (hw.delay_bits if delays else 0)
        per_elem = np.full(n, -(-inhibition_pairs(pop) * k // kpop) * per_syn, np.int64)   # lateral inhibition
        self.shared = []   # (units per channel plane, kernel bits per output channel)
        for pr in program.incoming(pop.name):
            ks = units_per_element(program.pop(pr.source))
            if pr.kind == "conv" and hw.conv_weight_sharing:
                kernel = int(np.prod(pr.weight.shape[1:])) * ks * k * per_syn
                self.shared.append((int(np.prod(pr.out_shape[1:])) // m if m > 1 else int(np.prod(pr.out_shape[1:])),
                                    kernel * m))
                continue
            bits = per_syn + (hw.index_bits if pr.kind == "sparse" else 0)
            f = fan_in(pr) * ks * k * bits
            per_elem += f.reshape(pop.shape[0], m, -1).sum(1).ravel() if m > 1 else f
        self.cum = np.concatenate([[0], np.cumsum(per_elem)])

    def memory(self, a: int, b: int) -> int:
        bits = int(self.cum[b] - self.cum[a])
        for plane, kernel in self.shared:
            bits += ((b - 1) // plane - a // plane + 1) * kernel
        return bits

    def axons(self, a: int, b: int) -> int:
        return _axon_bound(self.program, self.pop, a, b)

    def largest(self, a: int, n: int) -> int:
        """The largest b <= n with [a, b) within every per-core limit (b == a: not even one)."""
        hw = self.hw
        lo, hi = a, min(n, a + hw.neurons_per_core // self.k)
        while lo < hi:   # every resource grows with b
            mid = (lo + hi + 1) // 2
            ok = self.memory(a, mid) <= hw.synapse_memory_bits and (
                hw.input_axons_per_core is None or self.axons(a, mid) <= hw.input_axons_per_core)
            lo, hi = (mid, hi) if ok else (lo, mid - 1)
        return lo

    def refusal(self, a: int) -> str:
        hw = self.hw
        what = "one element" if self.k == units_per_element(self.pop) else f"{self.k} unit(s) of one element"
        if self.k > hw.neurons_per_core:
            return f"{what} is {self.k} neurons (a core holds {hw.neurons_per_core})"
        if self.memory(a, a + 1) > hw.synapse_memory_bits:
            return f"{what} needs {self.memory(a, a + 1)} bits of synapses (a core has {hw.synapse_memory_bits})"
        return f"{what} needs {self.axons(a, a + 1)} input axons (a core has {hw.input_axons_per_core})"


def map_cores(program: Program, hw: Profile) -> Mapping:
    """Greedy placement in program order: every population is cut into slices of
    consecutive elements (an element's K units stay on one core, with their lateral
    inhibition), each slice as large as the core's neuron count, synapse memory and input
    axons allow; one core per slice. An element too large for one core (a wide code such as
    a flash ADC on a large fan-in) has its units split over several cores (their inhibition
    then crosses cores). Raises ResourceError naming the population and the limit when a
    single unit does not fit a core."""
    hw.check()
    slices: list = []
    used = {"neurons": 0, "synapse_memory_bits": 0, "input_axons": 0}
    for pop in program.populations:
        if isinstance(pop, InputPop):  # host-driven spike generators: off-core
            continue
        n = int(np.prod(pop.shape))
        k = units_per_element(pop)
        sc, size = _SliceCost(program, pop, hw), k
        while sc.largest(0, n) == 0 and size > 1:   # split each element's units into groups
            size = -(-size // 2)
            sc = _SliceCost(program, pop, hw, size)
        for u in range(0, k, size):
            sc = _SliceCost(program, pop, hw, min(size, k - u)) if size < k else sc
            _place(pop, sc, n, (u, min(k, u + size)) if size < k else (), hw, slices, used)
    cores = len(slices)
    cap = {"neurons": hw.neurons_per_core, "synapse_memory_bits": hw.synapse_memory_bits,
           "input_axons": hw.input_axons_per_core or 0}
    util = {r: (used[r], cap[r] * cores) for r in used if cap[r]}
    return Mapping(hw.name, slices, cores, -(-cores // hw.cores_per_chip), util)


def _place(pop, sc: _SliceCost, n: int, units: tuple, hw: Profile, slices: list, used: dict) -> None:
    """Cut elements [0, n) of ``pop`` (``units`` of each, or all) into the largest slices
    that fit one core each (:class:`_SliceCost`), appended to ``slices``."""
    a = 0
    while a < n:
        b = sc.largest(a, n)
        if b <= a:
            raise ResourceError(f"population {pop.name!r} does not fit a {hw.name} core: {sc.refusal(a)}; "
                                "use fewer --bits or split the layer's fan-in")
        s = Slice(pop.name, a, b, len(slices), (b - a) * sc.k, sc.memory(a, b),
                  sc.axons(a, b) if hw.input_axons_per_core is not None else 0, units)
        slices.append(s)
        used["neurons"] += s.neurons
        used["synapse_memory_bits"] += s.memory_bits
        used["input_axons"] += s.input_axons
        a = b


# ----------------------------------------------------------------------------- activity
def activity(program: Program, x: np.ndarray, batch: int = 64) -> dict:
    """Mean spikes and synaptic operations per input, measured by the level-1 evaluator on
    ``x`` (equal integer for integer to the spiking simulators): ``spikes`` and ``synops``
    totals and per population."""
    from ..ir.semantics import evaluate
    totals: dict = {}
    for i in range(0, len(x), batch):
        counts: dict = {}
        evaluate(program, x[i:i + batch], spike_counts=counts, keep=())
        for name, c in counts.items():
            totals[name] = totals.get(name, 0) + int(c.sum())
    n = max(len(x), 1)
    spikes = {name: v / n for name, v in totals.items()}
    synops = {}
    for pr in program.projections:
        src = program.pop(pr.source)
        fan_out = pr.synapses / int(np.prod(src.shape))   # targets per source element and plane
        synops[pr.name] = spikes.get(pr.source, 0.0) * fan_out * units_per_element(program.pop(pr.target))
    for pop in program.populations:   # lateral inhibition: a spike of unit k reaches the K-1-k later units
        if isinstance(pop, GatePop) and pop.code.bits > 1:
            synops[pop.name + "#inhibition"] = spikes.get(pop.name, 0.0) * (pop.code.bits - 1) / 2
    return {"inputs": len(x), "spikes": sum(spikes.values()), "synops": sum(synops.values()),
            "spikes_per_population": spikes, "synops_per_projection": synops}


def energy(program: Program, cost: Cost, act: dict, hw: Profile) -> dict:
    """Energy per inference (pJ), an estimate from the profile's per-event energies:
    synaptic operations, neuron updates (a unit is active for the K steps of its
    population's code, idle for the rest of the latency), spikes within a tile, and one
    hop per spike (layers sit on neighbouring cores)."""
    active = sum(int(np.prod(p.shape)) * units_per_element(p) ** 2 for p in program.populations
                 if not isinstance(p, InputPop))
    parts = {
        "synops": act["synops"] * hw.e_synop,
        "neuron_updates_active": active * hw.e_neuron_active,
        "neuron_updates_idle": max(cost.neurons * cost.latency_steps - active, 0) * hw.e_neuron_idle,
        "spikes": act["spikes"] * hw.e_spike,
        "hops": act["spikes"] * hw.e_hop,
    }
    return {"total_pj": sum(parts.values()), "parts_pj": parts, "estimate": True}


def report(program: Program, hw: Profile, x: np.ndarray | None = None) -> dict:
    """Everything ``amosc report`` prints, as a dict with stable field names."""
    cost = static_cost(program)
    mapping = map_cores(program, hw)
    out = {"neurons": cost.neurons, "synapses": cost.synapses, "synapses_deployed": cost.synapses_deployed,
           "cores": mapping.cores, "chips": mapping.chips, "latency_steps": cost.latency_steps,
           "critical_path": cost.critical_path,
           "throughput_inputs_per_step": cost.throughput_inputs_per_step,
           "mapping": mapping.to_dict(), "target": hw.name}
    if x is not None:
        act = activity(program, x)
        e = energy(program, cost, act, hw)
        out.update(inputs_measured=act["inputs"], spikes_per_input=act["spikes"],
                   synops_per_input=act["synops"], energy_pj_per_input=e["total_pj"],
                   energy_parts_pj=e["parts_pj"], energy_is_estimate=True)
    return out


def render(rep: dict) -> str:
    """The text form of :func:`report`'s dict."""
    m = rep["mapping"]
    lines = [f"target {rep['target']}: {rep['cores']} cores on {rep['chips']} chip(s)",
             f"neurons             {rep['neurons']}",
             f"synapses            {rep['synapses']} stored, {rep['synapses_deployed']} deployed",
             f"latency             {rep['latency_steps']} steps "
             f"(critical path: {' -> '.join(rep['critical_path'])})",
             f"throughput          {rep['throughput_inputs_per_step']:.4g} inputs per step (pipelined)"]
    for r, u in m["utilisation"].items():
        lines.append(f"{r:<20}{u['used']} of {u['capacity']} on the used cores ({100 * u['fraction']:.1f}%)")
    if "spikes_per_input" in rep:
        lines += [f"spikes per input    {rep['spikes_per_input']:.1f} (measured on {rep['inputs_measured']} inputs)",
                  f"synops per input    {rep['synops_per_input']:.1f}",
                  f"energy per input    {rep['energy_pj_per_input'] / 1e6:.3f} uJ (an estimate from per-event "
                  "energies, docs/hardware.md): " + ", ".join(f"{k} {v / 1e6:.3f}"
                                                              for k, v in rep["energy_parts_pj"].items())]
    return "\n".join(lines) + "\n"
