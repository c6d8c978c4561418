"""Gate structures for ADC gates and the structure optimizer (docs/optimizer.md).

A K-bit ADC gate (ReLU family, max units, chord segments) can be built as

- ``sar``: successive approximation, K units firing one per step (depth K, K neurons);
- ``radix-r``: K/r stages of 2^r - 1 thermometer units each (a last, smaller stage when r
  does not divide K); the units of one stage fire in the same step, each stage subtracts
  what it resolved from the later ones (depth ceil(K / r), sum of 2^r_s - 1 neurons);
- ``flash``: radix-K, 2^K - 1 units in one step (depth 1).

All give the same integer code c = clip(floor((y + offset) / theta), 0, 2^K - 1), so the
choice trades neurons and spikes against latency without changing any value.

:func:`optimize` picks one structure per gate over the program DAG by a mixed-integer
linear program (scipy's HiGHS): fewest neurons within a latency budget, or lowest latency
within a neuron budget. The solution is optimal for that formulation (it is exact, not a
heuristic); when no choice meets the budget the best achievable value is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError


def stages(bits: int, r: int) -> tuple:
    """Bits resolved per stage, most significant first: r, r, ..., then the remainder."""
    if not 1 <= r <= bits:
        raise ModelError(f"a radix-{r} structure needs 1 <= r <= K = {bits}")
    full, rest = divmod(bits, r)
    return (r,) * full + ((rest,) if rest else ())


def structure_name(bits: int, r: int) -> str:
    return "sar" if r == 1 else "flash" if r == bits else f"radix{r}"


@dataclass(frozen=True)
class Choice:
    r: int
    depth: int
    units: int     # neurons per element

    @classmethod
    def of(cls, bits: int, r: int) -> "Choice":
        st = stages(bits, r)
        return cls(r, len(st), sum(2**s - 1 for s in st))


def choices(bits: int, max_units: int = 255) -> list:
    """The Pareto-useful structures of a K-bit gate: for each depth the fewest units (a
    deeper structure with as many units is never better), at most ``max_units`` units per
    element (flash at K=8 is 255)."""
    best: dict = {}
    for r in range(1, bits + 1):
        c = Choice.of(bits, r)
        if c.units <= max_units and (c.depth not in best or c.units < best[c.depth].units):
            best[c.depth] = c
    return [best[d] for d in sorted(best)]


@dataclass
class Node:
    """A population for the optimizer: ``elements`` tensor elements, ``options``
    (a list of :class:`Choice`; one option: fixed)."""
    name: str
    elements: int
    options: list


@dataclass
class Plan:
    r: dict            # population -> chosen radix (1: SAR)
    latency: int       # steps, the readout's step included
    neurons: int
    objective: str
    optimal: bool = True


def _solve(nodes: list, edges: list, objective: str, budget: float) -> Plan | None:
    """One MILP: variables x[p, c] (binary: population p uses option c), t[p] (start step of
    p, continuous >= 0) and L (latency). Constraints: one option per population;
    t[v] >= t[u] + depth(u) on every edge u -> v; L >= t[p] + depth(p) for every p (the
    readout's own depth is 1: it is read one step after its input arrives). ``objective``
    'neurons': minimize neurons with L <= budget; 'latency': minimize L with neurons <= budget."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    xs = [(i, j) for i, nd in enumerate(nodes) for j in range(len(nd.options))]
    nx_, nt = len(xs), len(nodes)
    nv = nx_ + nt + 1
    iL = nv - 1
    xi = {key: k for k, key in enumerate(xs)}
    units = np.array([nodes[i].elements * nodes[i].options[j].units for i, j in xs], np.float64)
    depth = [[c.depth for c in nd.options] for nd in nodes]
    rows, lo, hi = [], [], []

    def row():
        r = np.zeros(nv)
        rows.append(r)
        return r
    for i, nd in enumerate(nodes):  # one option each
        r = row()
        for j in range(len(nd.options)):
            r[xi[i, j]] = 1
        lo.append(1)
        hi.append(1)
    index = {nd.name: i for i, nd in enumerate(nodes)}
    for u, v in edges:  # t_v - t_u - sum_j depth_uj x_uj >= 0
        iu, iv = index[u], index[v]
        r = row()
        r[nx_ + iv], r[nx_ + iu] = 1, -1
        for j, d in enumerate(depth[iu]):
            r[xi[iu, j]] -= d
        lo.append(0)
        hi.append(np.inf)
    for i in range(nt):  # L - t_i - depth_i >= 0
        r = row()
        r[iL], r[nx_ + i] = 1, -1
        for j, d in enumerate(depth[i]):
            r[xi[i, j]] -= d
        lo.append(0)
        hi.append(np.inf)
    c = np.zeros(nv)
    if objective == "neurons":
        c[:nx_] = units
        r = row()
        r[iL] = 1
        lo.append(-np.inf)
        hi.append(budget)
    else:
        c[iL] = 1
        r = row()
        r[:nx_] = units
        lo.append(-np.inf)
        hi.append(budget)
    integrality = np.zeros(nv)
    integrality[:nx_] = 1
    ub = np.full(nv, np.inf)
    ub[:nx_] = 1
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(nv), ub))
    if res.status != 0 or res.x is None:
        return None
    x = np.round(res.x[:nx_]).astype(int)
    pick = {nodes[i].name: nodes[i].options[j] for (i, j), v in zip(xs, x) if v}
    latency = _latency(nodes, edges, {n: p.depth for n, p in pick.items()})
    neurons = int(sum(nd.elements * pick[nd.name].units for nd in nodes))
    return Plan({n: p.r for n, p in pick.items()}, latency, neurons, objective)


def _latency(nodes: list, edges: list, depth: dict) -> int:
    """The critical path: max over populations of start + depth (starts as soon as possible)."""
    preds: dict = {nd.name: [] for nd in nodes}
    for u, v in edges:
        preds[v].append(u)
    start: dict = {}
    for nd in nodes:  # nodes are in topological order
        start[nd.name] = max((start[u] + depth[u] for u in preds[nd.name]), default=0)
    return int(max(start[n] + depth[n] for n in start))


def optimize(nodes: list, edges: list, *, latency_budget: int | None = None,
             neuron_budget: int | None = None) -> Plan:
    """Choose a structure per population (``nodes`` in topological order, ``edges`` (u, v)).

    With ``latency_budget``: the fewest neurons whose latency (steps, the readout's included)
    is within it; with ``neuron_budget``: the lowest latency within it (then the fewest
    neurons at that latency); with both, the neuron budget is checked on the first's
    solution. An impossible budget raises :class:`ModelError` naming the budget and the
    best achievable value."""
    if latency_budget is None and neuron_budget is None:
        raise ModelError("optimize needs a latency budget or a neuron budget")
    fastest = _latency(nodes, edges, {nd.name: min(c.depth for c in nd.options) for nd in nodes})
    smallest = int(sum(nd.elements * min(c.units for c in nd.options) for nd in nodes))
    if latency_budget is not None:
        if latency_budget < fastest:
            raise ModelError(f"--latency-budget {latency_budget}: the lowest latency any structure choice "
                             f"reaches is {fastest} steps")
        plan = _solve(nodes, edges, "neurons", latency_budget)
        if plan is None:
            raise ModelError(f"--latency-budget {latency_budget}: the structure optimizer found no solution")
        if neuron_budget is not None and plan.neurons > neuron_budget:
            raise ModelError(f"--neuron-budget {neuron_budget} with --latency-budget {latency_budget}: "
                             f"the fewest neurons within that latency are {plan.neurons}")
        return plan
    if neuron_budget < smallest:
        raise ModelError(f"--neuron-budget {neuron_budget}: the fewest neurons any structure choice "
                         f"needs are {smallest}")
    plan = _solve(nodes, edges, "latency", neuron_budget)
    if plan is None:
        raise ModelError(f"--neuron-budget {neuron_budget}: the structure optimizer found no solution")
    # among the plans of that latency, the fewest neurons
    return _solve(nodes, edges, "neurons", plan.latency) or plan


# ----------------------------------------------------------------------------- on a program
def program_nodes(program) -> tuple[list, list]:
    """The optimizer's view of an integer program: (nodes in program order, edges). A gate
    with a successive-approximation code may take any structure of its K bits; the input
    encoder, other codes and the readout are fixed."""
    from ..ir.nodes import GatePop, InputPop
    from ..ir.semantics import binary_params
    nodes = []
    for pop in program.populations:
        n = int(np.prod(pop.shape))
        if isinstance(pop, GatePop) and binary_params(pop.code) is not None and not pop.code.steps:
            opts = choices(pop.code.bits)
        elif isinstance(pop, (InputPop, GatePop)):
            opts = [Choice(0, pop.code.depth, pop.code.bits)]
        else:
            opts = [Choice(0, 1, 1)]
        nodes.append(Node(pop.name, n, opts))
    edges = sorted({(pr.source, pr.target) for pr in program.projections})
    return nodes, edges


def apply_plan(program, plan: Plan):
    """The program with each planned gate's successive-approximation code replaced by the
    radix code of the same bits, step and rounding (the same integer code for every input);
    rescheduled."""
    from dataclasses import replace

    from ..ir.nodes import Code, GatePop, Program
    from ..ir.semantics import binary_params
    from .passes import schedule_asap
    pops = []
    for pop in program.populations:
        r = plan.r.get(pop.name, 0)
        if isinstance(pop, GatePop) and r > 1:
            theta, offset = binary_params(pop.code)
            pop = replace(pop, code=Code.radix(pop.code.bits, r, theta, offset))
        pops.append(pop)
    return schedule_asap(Program(pops, program.projections, program.input, program.output,
                                 program.options, program.provenance))
