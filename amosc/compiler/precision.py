"""Per-layer precision: lower some gates' K within an accuracy budget (``--max-drop``).

``--bits K`` sets every gate's precision. With validation data and an accuracy budget
(``max_drop``: top-1 points the compiled program may lose against the float model on that
data), :func:`choose_precision` lowers the precision of the gates where it costs least:

1. **Groups.** A gate whose step is set by another's (a max unit's ``alpha_from`` chain)
   or that forms a product's square pair (``partner``) shares that gate's K, so the max
   stays exact and the pair balanced: each group takes one K.
2. **Sensitivity** (the error model, measured, not guessed): each group alone at each
   candidate K' < K (every other gate at K) is lowered and evaluated with the level-1
   integer semantics on the validation inputs; its accuracy loss against the uniform-K
   program and the neurons it saves are recorded.
3. **Selection.** Minimize neurons subject to the measured drop <= ``max_drop``: groups
   are visited by neurons saved per point of measured loss (the cheapest saving first), each
   taking the lowest K' whose *combined* program (every choice so far) still meets the
   budget, measured again on the validation data.
4. **Weight precision.** With 16-bit weights (``--weight-bits 16``, the default), the gates
   are then visited by the synapses of their second (residue) mantissa set, largest first;
   a gate keeps 8-bit incoming weights (that set dropped: half its synapse memory) when the
   combined program still meets the budget. Neurons are the first objective, synapses the
   second.

Guarantee: the returned program's accuracy on the validation data is within ``max_drop``
points of the float model's (measured on that program, not estimated); the neuron count is
a greedy optimum of this knapsack (errors of different layers interact, so it is not proven
minimal). Calibration runs once per candidate K (a gate's range depends on its K).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ModelError
from ..ir.semantics import decode, evaluate
from . import cost


@dataclass
class Choice:
    """One group's measured sensitivity at one K."""
    group: str
    bits: int
    accuracy: float        # the program with only this group at ``bits``
    saved: int             # neurons saved against the uniform program


@dataclass
class PrecisionReport:
    bits: int                      # the requested K (the default of every gate)
    float_accuracy: float
    uniform_accuracy: float
    uniform_neurons: int
    accuracy: float                # of the chosen program
    neurons: int
    max_drop: float
    assignment: dict               # group -> K (only the lowered groups)
    sensitivity: list = field(default_factory=list)   # every measured Choice
    inputs: int = 0
    narrow: list = field(default_factory=list)        # gates whose incoming weights are 8-bit
    uniform_synapses: int = 0
    synapses: int = 0

    @property
    def drop(self) -> float:
        return 100.0 * (self.float_accuracy - self.accuracy)

    def render(self) -> str:
        lines = [f"per-layer precision on {self.inputs} validation inputs: float accuracy "
                 f"{100 * self.float_accuracy:.2f}%, uniform K={self.bits} {100 * self.uniform_accuracy:.2f}% "
                 f"({self.uniform_neurons} neurons), chosen {100 * self.accuracy:.2f}% ({self.neurons} neurons); "
                 f"drop {self.drop:.2f} pt <= --max-drop {self.max_drop:g}"]
        for g, k in sorted(self.assignment.items(), key=lambda t: t[1]):
            lines.append(f"  {g}: K={k}")
        if self.narrow:
            lines.append(f"  8-bit incoming weights (stored synapses: uniform {self.uniform_synapses}, chosen "
                         f"{self.synapses}): " + ", ".join(self.narrow))
        return "\n".join(lines)


def precision_groups(fg) -> dict:
    """{gate name: group leader} for every gate whose precision may be chosen: ReLU-family
    ADC gates and fitted gates, each with the gates that must share its K."""
    leader: dict = {}
    for g in fg.gates:
        if g.partner is not None:
            leader.setdefault(g.partner, g.name)
    for g in fg.gates:
        if g.name in leader:
            continue
        if g.alpha_from is not None:
            if g.alpha_from in leader:
                leader[g.name] = leader[g.alpha_from]
        elif g.fixed_alpha is None and g.bits is None:
            leader[g.name] = g.name
    return leader


def with_bits(fg, leader: dict, assignment: dict, narrow=()):
    """The graph with every gate of a group in ``assignment`` (leader -> K) at that K, and
    the gates in ``narrow`` with 8-bit incoming weights."""
    gates = [replace(g, bits=assignment[leader[g.name]]) if leader.get(g.name) in assignment else g
             for g in fg.gates]
    gates = [replace(g, weight_bits=8) if g.name in narrow else g for g in gates]
    return replace(fg, gates=gates)


def predictions(program, x: np.ndarray, batch: int = 256, spikes: bool = False):
    """Top-1 class of every input by the level-1 integer semantics (and, with ``spikes``,
    the mean spike count per input)."""
    preds, total = [], 0.0
    for i in range(0, len(x), batch):
        counts: dict | None = {} if spikes else None
        out = evaluate(program, x[i:i + batch], spike_counts=counts)[program.output]
        preds.append(decode(program.output_pop, out).reshape(len(out), -1).argmax(1))
        if spikes:
            total += float(sum(v.sum() for v in counts.values()))
    pred = np.concatenate(preds)
    return (pred, total / len(x)) if spikes else pred


def float_predictions(model_path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's top-1 class of every input (x checked against the model's input)."""
    return float_reference(model_path, x)[0]


def float_reference(model_path, x: np.ndarray):
    """(onnxruntime's top-1 class of every input, x checked and shaped as the model's input)."""
    from .calibrate import OnnxRunner, check_input_array
    from .importer import graph_input, load_model, normalize
    model, _ = load_model(model_path)
    model = normalize(model, str(model_path))
    name, shape, fixed = graph_input(model, str(model_path))
    x = check_input_array(x, tuple(shape), "validation input")
    out = model.graph.output[0].name
    ref = OnnxRunner(model, name, fixed).collect(x, [out], desc=None)[out]
    return ref.reshape(len(x), -1).argmax(1), x


def candidate_bits(bits: int, lowest: int) -> list:
    """The K' tried per group: K - 1 down to ``lowest``."""
    return list(range(bits - 1, max(lowest, 1) - 1, -1))


def choose_precision(model_path, calib, x_val, labels, max_drop: float, opts, *, limits=None,
                     calib_name: str = "", lowest: int | None = None, log=None, dump=None):
    """(program, :class:`PrecisionReport`): the fewest-neuron per-layer precision found (see the
    module docstring) whose top-1 accuracy on ``x_val`` is within ``max_drop`` points of the
    float model's. ``lowest``: the smallest K' tried (default max(2, K // 2)); ``dump``: as in
    :func:`~.pipeline.compile_model`, for the chosen program's passes. Every accuracy is
    measured after the floor-bias pass (as compile_model returns the program); the program
    returned is the one before it (compile_model runs it last, after any structure choice).
    Raises ModelError when even uniform K loses more than ``max_drop``."""
    from .calibrate import check_input_array
    from .pipeline import build, build_relayed, calibrate, floor_bias, prepare
    from .resources import Limits
    if not max_drop >= 0:
        raise ModelError(f"--max-drop must be >= 0 accuracy points, got {max_drop}")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x_val):
        raise ModelError(f"{len(labels)} labels for {len(x_val)} validation inputs")
    limits = limits or Limits()
    say = log or (lambda msg: None)
    K = opts.bits
    lowest = max(2, K // 2) if lowest is None else lowest
    fg, calib = prepare(model_path, calib, opts, limits, calib_name, dump)
    x_val = check_input_array(x_val, fg.input_shape, "validation input")
    float_acc = float((float_predictions(model_path, x_val) == labels).mean())
    # the uniform program first: the relays (and coarsened fitted units) it needs stay in the graph
    uniform, fg = build_relayed(fg, calib, opts, limits)
    leader = precision_groups(fg)
    groups = list(dict.fromkeys(leader.values()))
    ks = candidate_bits(K, lowest)
    say(f"calibrating for K in {[K, *ks]}")
    cal = calibrate(fg, calib, opts, precisions=[K, *ks])

    def program_for(assignment: dict, dump=None, narrow=()):
        merged = tuple({} for _ in range(2))
        for g in fg.gates:
            k = assignment.get(leader.get(g.name), K)
            for part, table in zip(merged, cal[k][:2]):
                if g.name in table:
                    part[g.name] = table[g.name]
        calibration = (*merged, cal[K][2], cal[K][3])
        return build(with_bits(fg, leader, assignment, narrow), calib.shape[0], calibration, opts, limits, dump)

    def score(prog):   # measured as compile_model returns it: with the floor-bias pass
        corrected = floor_bias(prog, calib, opts.bias_correction)
        return float((predictions(corrected, x_val) == labels).mean()), cost.static_cost(prog).neurons

    def measure(assignment: dict, narrow=()):
        prog = program_for(assignment, narrow=narrow)
        return (prog, *score(prog))

    uniform_acc, uniform_neurons = score(uniform)   # (program_for({}) builds the same program)
    say(f"uniform K={K}: accuracy {100 * uniform_acc:.2f}% (float {100 * float_acc:.2f}%), "
        f"{uniform_neurons} neurons")
    if 100.0 * (float_acc - uniform_acc) > max_drop:
        raise ModelError(f"--max-drop {max_drop:g}: at uniform K={K} the program's top-1 accuracy on the "
                         f"{len(x_val)} validation inputs is already {100 * uniform_acc:.2f}% against the float "
                         f"model's {100 * float_acc:.2f}% (a drop of {100 * (float_acc - uniform_acc):.2f} pt); "
                         "raise --max-drop or --bits")
    sens = []
    for i, g in enumerate(groups):
        for k in ks:
            _, acc, n = measure({g: k})
            sens.append(Choice(g, k, acc, uniform_neurons - n))
            say(f"sensitivity {i + 1}/{len(groups)} {g} K={k}: accuracy {100 * acc:.2f}%, "
                f"saves {uniform_neurons - n} neurons")

    def value(g):   # the group's best saving per point of measured loss
        return max(c.saved / max(100.0 * (uniform_acc - c.accuracy), 0.01) for c in sens if c.group == g)

    assignment: dict = {}
    best, best_acc, best_n = uniform, uniform_acc, uniform_neurons
    for g in sorted(groups, key=value, reverse=True):
        for k in sorted(c.bits for c in sens if c.group == g and c.saved > 0
                        and 100.0 * (float_acc - c.accuracy) <= max_drop):
            trial = {**assignment, g: k}
            prog, acc, n = measure(trial)
            if 100.0 * (float_acc - acc) <= max_drop and n < best_n:
                assignment, best, best_acc, best_n = trial, prog, acc, n
                say(f"{g}: K={k} kept (accuracy {100 * acc:.2f}%, {n} neurons)")
                break
    narrow: list = []
    uniform_syn, best_syn = cost.static_cost(uniform).synapses, cost.static_cost(best).synapses
    if opts.weight_bits == 16:
        names = {g.name for g in fg.gates}
        residue: dict = {}   # gate -> stored synapses of its second mantissa set
        for pr in best.projections:
            if pr.name.endswith("#lo") and pr.target in names:
                residue[pr.target] = residue.get(pr.target, 0) + pr.synapses
        for g in sorted(residue, key=residue.get, reverse=True):
            prog, acc, n = measure(assignment, [*narrow, g])
            syn = cost.static_cost(prog).synapses
            if 100.0 * (float_acc - acc) <= max_drop and n <= best_n and syn < best_syn:
                narrow, best, best_acc, best_n, best_syn = [*narrow, g], prog, acc, n, syn
                say(f"{g}: 8-bit weights kept (accuracy {100 * acc:.2f}%, {syn} synapses)")
    if dump:   # the chosen program once more, its passes dumped (the same deterministic build)
        best = program_for(assignment, dump, narrow)
    report = PrecisionReport(K, float_acc, uniform_acc, uniform_neurons, best_acc, best_n, max_drop,
                             assignment, sens, len(x_val), narrow, uniform_syn, best_syn)
    return best, report
