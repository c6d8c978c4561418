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

The dual, :func:`fit_budget` (``--neuron-budget N`` with validation inputs): the highest
measured score (agreement with the float model, or accuracy with labels) within N neurons,
raising groups above the largest uniform K that fits, chosen by an exact multiple-choice
knapsack over the measured gains (see its docstring). Both searches share :class:`_Search`.

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
from ..progress import progress
from . import cost


@dataclass
class Choice:
    """One group's measured sensitivity at one K."""
    group: str
    bits: int
    accuracy: float        # the program with only this group at ``bits``
    saved: int             # neurons saved against the uniform program
    error: float | None = None   # its logit error (:func:`logit_error`; fit_budget's error model)
    units: int | None = None     # fit_budget: the group's fitted gates as units of this many neurons


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


def with_bits(fg, leader: dict, assignment: dict, narrow=(), units=None):
    """The graph with every gate of a group in ``assignment`` (leader -> K) at that K, the
    fitted gates of a group in ``units`` (leader -> N) as N-neuron fitted units, and the
    gates in ``narrow`` with 8-bit incoming weights."""
    units = units or {}
    gates = [replace(g, bits=assignment[leader[g.name]]) if leader.get(g.name) in assignment else g
             for g in fg.gates]
    gates = [replace(g, units=units[leader[g.name]]) if g.fn is not None and leader.get(g.name) in units else g
             for g in gates]
    gates = [replace(g, weight_bits=8) if g.name in narrow else g for g in gates]
    return replace(fg, gates=gates)


def predictions(program, x: np.ndarray, batch: int = 256, spikes: bool = False):
    """Top-1 class of every input by the level-1 integer semantics (and, with ``spikes``,
    the mean spike count per input)."""
    out = logits(program, x, batch, spikes)
    return (out[0].argmax(1), out[1]) if spikes else out.argmax(1)


def logits(program, x: np.ndarray, batch: int = 256, spikes: bool = False):
    """The decoded readout (N, classes) of every input by the level-1 integer semantics (and,
    with ``spikes``, the mean spike count per input)."""
    parts, total = [], 0.0
    for i in range(0, len(x), batch):
        counts: dict | None = {} if spikes else None
        out = evaluate(program, x[i:i + batch], spike_counts=counts, keep=[program.output])[program.output]
        parts.append(decode(program.output_pop, out).reshape(len(out), -1))
        if spikes:
            total += float(sum(v.sum() for v in counts.values()))
    got = np.concatenate(parts)
    return (got, total / len(x)) if spikes else got


def logit_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared difference of two sets of logits (N, classes), each centred per input
    (a softmax ignores a shift), relative to the reference's mean square: a smooth measure of
    how far a program is from the float model, which a few hundred inputs estimate with much
    less noise than top-1 agreement (whose every input moves it by 1/N)."""
    a, b = (np.asarray(v, np.float64) for v in (got, ref))
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    return float(((a - b) ** 2).mean() / max((b ** 2).mean(), 1e-30))


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


class _Search:
    """What both precision searches share: the imported graph (with the relays the program at
    ``opts.bits`` needs), its precision groups, calibration at every candidate K (one float
    run), and the measurement of an assignment (leader -> K) as :func:`~.pipeline.compile_model`
    returns it (after the floor-bias pass): top-1 agreement with ``target`` on the validation
    inputs, and neurons. ``target``: the labels (accuracy) or, with None, the float model's
    own top-1 classes (agreement with onnxruntime)."""

    def __init__(self, model_path, calib, x_val, target, opts, limits, calib_name, dump, ks, say):
        from .calibrate import check_input_array
        from .pipeline import build_relayed, calibrate, prepare
        fg, self.calib = prepare(model_path, calib, opts, limits, calib_name, dump)
        self.x_val = check_input_array(x_val, fg.input_shape, "validation input")
        self.float_pred = float_predictions(model_path, self.x_val)
        self.target = self.float_pred if target is None else np.asarray(target).reshape(-1)
        if len(self.target) != len(self.x_val):
            raise ModelError(f"{len(self.target)} labels for {len(self.x_val)} validation inputs")
        # the program at --bits first: the relays (and coarsened fitted units) it needs stay in the graph
        self.uniform, self.fg = build_relayed(fg, self.calib, opts, limits)
        self.leader = precision_groups(self.fg)
        self.groups = list(dict.fromkeys(self.leader.values()))
        self.opts, self.limits, self.ks = opts, limits, sorted(set(ks) | {opts.bits})
        self._float_logits = None
        say(f"calibrating for K in {self.ks[::-1]}")
        self.cal = calibrate(self.fg, self.calib, opts, precisions=self.ks)

    @property
    def float_logits(self) -> np.ndarray:
        """The float graph's readout (N, classes) on the validation inputs: the logits before
        a final softmax, which is what the program's readout decodes to."""
        if self._float_logits is None:
            from ..ir.tensor import float_eval
            from .pipeline import calib_batch
            b = calib_batch(self.fg)
            self._float_logits = np.concatenate([
                float_eval(self.fg, self.x_val[i:i + b].astype(np.float64))["output"].reshape(
                    len(self.x_val[i:i + b]), -1) for i in range(0, len(self.x_val), b)])
        return self._float_logits

    def program(self, assignment: dict, dump=None, narrow=(), units=None):
        """The program with every group in ``assignment`` at its K (the rest at ``opts.bits``)
        and the fitted gates of the groups in ``units`` as units of that many neurons."""
        from .pipeline import build
        K = self.opts.bits
        merged = tuple({} for _ in range(2))
        for g in self.fg.gates:
            k = assignment.get(self.leader.get(g.name), K)
            for part, table in zip(merged, self.cal[k][:2]):
                if g.name in table:
                    part[g.name] = table[g.name]
        calibration = (*merged, self.cal[K][2], self.cal[K][3])
        return build(with_bits(self.fg, self.leader, assignment, narrow, units), self.calib.shape[0], calibration,
                     self.opts, self.limits, dump)

    def score(self, prog, error: bool = False) -> tuple:
        """(top-1 agreement with the target, neurons) of ``prog`` after the floor-bias pass;
        with ``error`` also its :func:`logit_error` against the float model."""
        from .pipeline import floor_bias
        corrected = floor_bias(prog, self.calib, self.opts.bias_correction)
        got = logits(corrected, self.x_val)
        score = (float((got.argmax(1) == self.target).mean()), cost.static_cost(prog).neurons)
        return (*score, logit_error(got, self.float_logits)) if error else score

    def measure(self, assignment: dict, narrow=(), error: bool = False, units=None):
        prog = self.program(assignment, narrow=narrow, units=units)
        return (prog, *self.score(prog, error))

    def unit_groups(self) -> list:
        """The groups with a fitted gate that may become a fitted unit (not a product's square)."""
        squares = self.fg.squares
        return list(dict.fromkeys(self.leader[g.name] for g in self.fg.gates
                                  if g.fn is not None and g.name in self.leader and g.name not in squares))


def choose_precision(model_path, calib, x_val, labels, max_drop: float, opts, *, limits=None,
                     calib_name: str = "", lowest: int | None = None, log=None, dump=None):
    """(program, :class:`PrecisionReport`): the fewest-neuron per-layer precision found (see the
    module docstring) whose top-1 accuracy on ``x_val`` is within ``max_drop`` points of the
    float model's. ``lowest``: the smallest K' tried (default max(2, K // 2)); ``dump``: as in
    :func:`~.pipeline.compile_model`, for the chosen program's passes. Every accuracy is
    measured after the floor-bias pass (as compile_model returns the program); the program
    returned is the one before it (compile_model runs it last, after any structure choice).
    Raises ModelError when even uniform K loses more than ``max_drop``."""
    from .resources import Limits
    if not max_drop >= 0:
        raise ModelError(f"--max-drop must be >= 0 accuracy points, got {max_drop}")
    say = log or (lambda msg: None)
    K = opts.bits
    lowest = max(2, K // 2) if lowest is None else lowest
    ks = candidate_bits(K, lowest)
    search = _Search(model_path, calib, x_val, labels, opts, limits or Limits(), calib_name, dump, ks, say)
    float_acc = float((search.float_pred == search.target).mean())   # target: the labels
    uniform, groups, measure = search.uniform, search.groups, search.measure
    uniform_acc, uniform_neurons = search.score(uniform)   # (search.program({}) builds the same program)
    say(f"uniform K={K}: accuracy {100 * uniform_acc:.2f}% (float {100 * float_acc:.2f}%), "
        f"{uniform_neurons} neurons")
    if 100.0 * (float_acc - uniform_acc) > max_drop:
        raise ModelError(f"--max-drop {max_drop:g}: at uniform K={K} the program's top-1 accuracy on the "
                         f"{len(x_val)} validation inputs is already {100 * uniform_acc:.2f}% against the float "
                         f"model's {100 * float_acc:.2f}% (a drop of {100 * (float_acc - uniform_acc):.2f} pt); "
                         "raise --max-drop or --bits")
    sens = []
    for i, g, k in progress([(i, g, k) for i, g in enumerate(groups) for k in ks], desc="sensitivity"):
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
        names = {g.name for g in search.fg.gates}
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
        best = search.program(assignment, dump, narrow)
    report = PrecisionReport(K, float_acc, uniform_acc, uniform_neurons, best_acc, best_n, max_drop,
                             assignment, sens, len(x_val), narrow, uniform_syn, best_syn)
    return best, report


@dataclass
class BudgetReport:
    """What :func:`fit_budget` measured and chose."""
    bits: int                      # --bits: the highest K of any group
    neuron_budget: int
    metric: str                    # "agreement" (with the float model) or "accuracy" (with labels)
    uniform: list                  # (K, neurons, score or None) of the uniform programs tried, K descending
    base_bits: int                 # the highest uniform K within the budget
    base_score: float
    score: float                   # of the chosen program (measured)
    neurons: int
    assignment: dict               # group -> K, the groups raised above base_bits
    units: dict = field(default_factory=dict)   # group -> N: fitted units of N neurons (not --fitted-units)
    predicted: float = 0.0         # the additive model's score of the chosen assignment
    sensitivity: list = field(default_factory=list)   # Choice(group, K, score alone, -extra neurons, error)
    inputs: int = 0
    base_error: float = 0.0        # logit errors (:func:`logit_error`) of the base and the chosen program
    error: float = 0.0

    def render(self) -> str:
        tried = ", ".join(f"K={k} {n} neurons" + (f" {100 * s:.2f}%" if s is not None else " (over)")
                          for k, n, s in self.uniform)
        lines = [f"per-layer precision within --neuron-budget {self.neuron_budget} on {self.inputs} validation "
                 f"inputs ({self.metric}): uniform {tried}; chosen {self.neurons} neurons, {self.metric} "
                 f"{100 * self.score:.2f}% (measured; base K={self.base_bits} {100 * self.base_score:.2f}%, "
                 f"predicted {100 * self.predicted:.2f}%); logit error {self.error:.4f} (base {self.base_error:.4f})"]
        for g, k in sorted(self.assignment.items(), key=lambda t: -t[1]):
            lines.append(f"  {g}: K={k}")
        for g, n in sorted(self.units.items(), key=lambda t: -t[1]):
            lines.append(f"  {g}: {n}-neuron fitted units")
        return "\n".join(lines)


def unit_sizes(units: int) -> list:
    """Fitted-unit sizes to try per group beside ``--fitted-units`` N (``fit_budget(...,
    sizes=unit_sizes(N))``): N - 2 (fewer neurons, to fund a raise elsewhere), N + 2 and N + 4
    (within 2..MAX_UNIT_NEURONS)."""
    from .unitfit import MAX_UNIT_NEURONS
    return [n for n in (units - 2, units + 2, units + 4) if units and 2 <= n <= MAX_UNIT_NEURONS]


def fit_budget(model_path, calib, x_val, labels, neuron_budget: int, opts, *, limits=None,
               calib_name: str = "", lowest: int | None = None, log=None, dump=None, sizes=()):
    """(program, :class:`BudgetReport`): per-layer precision that fits ``neuron_budget``
    neurons with the highest measured top-1 score on ``x_val`` (accuracy against ``labels``,
    or with None agreement with the float model's classes).

    1. **Base.** The uniform programs at K = --bits, K - 1, ... down to ``lowest`` (default
       max(2, K // 2)) are built until one fits the budget: its K is the base K0 (none fits:
       ModelError naming the fewest neurons reached; K itself fits: that program, unchanged).
    2. **Error model, measured.** Every group (:func:`precision_groups`) alone at every K'
       in (K0, K], the rest at K0: its extra neurons and, unless those alone exceed the
       budget (such a raise is never chosen, so it is not measured), its top-1 score (its
       :func:`logit_error` is logged too: ranking by it was tried and chose worse programs).
       With ``sizes`` (e.g. :func:`unit_sizes`), every group with a fitted gate is also
       tried at K0 as fitted units of each of those sizes (not by default: on the
       EfficientNet fixture with 500 validation inputs the wider search chose a program of
       94.05% agreement on the 2000 test images against 94.50% without: more options, more
       lucky measurements chosen).
    3. **Selection.** A multiple-choice knapsack, solved exactly (scipy's HiGHS MILP): at most
       one setting (K' or unit size) per group, maximizing the sum of the measured score
       gains subject to the base's neurons plus the extra neurons <= the budget. Gains of
       different groups interact, so the chosen program is measured again; while it exceeds
       the budget (neurons are not exactly additive), the setting that adds neurons with the
       least gain per neuron is undone.
    4. **Guarantee.** The returned program has at most ``neuron_budget`` neurons (SAR
       structures; a structure choice may then trade the slack for latency), and its measured
       score on the validation inputs is at least the base's: otherwise the base is returned.
       It is optimal for the additive model, not proven optimal."""
    from .resources import Limits
    say = log or (lambda msg: None)
    K = opts.bits
    lowest = max(2, K // 2) if lowest is None else lowest
    ks = candidate_bits(K, lowest)
    search = _Search(model_path, calib, x_val, labels, opts, limits or Limits(), calib_name, dump, ks, say)
    metric = "agreement" if labels is None else "accuracy"
    uniform = []
    base = None
    for k in [K, *ks]:
        assignment = {g: k for g in search.groups}
        prog = search.uniform if k == K else search.program(assignment)
        n = cost.static_cost(prog).neurons
        uniform.append([k, n, None])
        say(f"uniform K={k}: {n} neurons" + (" (over the budget)" if n > neuron_budget else ""))
        if n <= neuron_budget:
            base = (k, assignment, prog, n)
            break
    if base is None:
        raise ModelError(f"--neuron-budget {neuron_budget}: the fewest neurons of a uniform program down to "
                         f"K={lowest} are {uniform[-1][1]} (K={uniform[-1][0]}); raise the budget, or lower --bits "
                         "or --fitted-units")
    k0, base_assign, base_prog, n0 = base
    s0, _, e0 = search.score(base_prog, error=True)
    uniform[-1][2] = s0
    say(f"uniform K={k0}: {metric} {100 * s0:.2f}%, logit error {e0:.4f}")
    report = BudgetReport(K, neuron_budget, metric, [tuple(u) for u in uniform], k0, s0, s0, n0, {},
                          s0, inputs=len(search.x_val), base_error=e0, error=e0)
    if k0 == K:
        return (search.program(base_assign, dump) if dump else base_prog), report
    # a setting of a group: (K, None) a raise to K, or (K0, N) its fitted gates as N-neuron units
    fitted = set(search.unit_groups())
    trials = [(g, (k, None)) for g in search.groups for k in range(k0 + 1, K + 1)]
    trials += [(g, (k0, n)) for g in search.groups if g in fitted for n in sizes if n != opts.fitted_units]
    order = {g: i + 1 for i, g in enumerate(search.groups)}

    def settings(chosen):   # (assignment, units) of options (group, (K, N), ...)
        return ({**base_assign, **{o[0]: o[1][0] for o in chosen}},
                {o[0]: o[1][1] for o in chosen if o[1][1] is not None})

    options = []   # (group, (K, N), gain: the top-1 score it adds, extra neurons)
    for g, (k, units) in progress(trials, desc="sensitivity"):
        assignment, unit_of = settings([(g, (k, units))])
        prog = search.program(assignment, units=unit_of)
        n = cost.static_cost(prog).neurons
        what = f"sensitivity {order[g]}/{len(search.groups)} {g} " + (f"K={k}" if units is None else f"units={units}")
        if n > neuron_budget:   # over the budget alone: never chosen, not measured
            say(f"{what}: {n - n0:+d} neurons, over the budget alone")
            continue
        s, _, e = search.score(prog, error=True)
        report.sensitivity.append(Choice(g, k, s, n0 - n, e, units))
        say(f"{what}: logit error {e:.4f}, {metric} {100 * s:.2f}%, {n - n0:+d} neurons")
        if s > s0 or n < n0:   # a gain, or neurons that may fund one elsewhere
            options.append((g, (k, units), s - s0, n - n0))
    chosen = _knapsack(options, neuron_budget - n0)
    best = (base_prog, s0, n0, [], e0)
    while chosen:
        assignment, unit_of = settings(chosen)
        prog, s, n, e = search.measure(assignment, error=True, units=unit_of)
        say(f"chosen {len(chosen)} changes: logit error {e:.4f}, {metric} {100 * s:.2f}%, {n} neurons")
        if n <= neuron_budget:
            if s >= s0:
                best = (prog, s, n, chosen, e)
            break
        ups = [o for o in chosen if o[3] > 0]
        if not ups:
            break
        chosen.remove(min(ups, key=lambda o: o[2] / o[3]))   # the least gain per neuron
    prog, s, n, chosen, e = best
    assignment, units = settings(chosen)
    report.score, report.neurons, report.error = s, n, e
    report.assignment = {g: k for g, k in assignment.items() if k != k0}
    report.units = units
    report.predicted = min(1.0, s0 + sum(o[2] for o in chosen))   # a score
    if dump:
        prog = search.program(assignment, dump, units=units)
    return prog, report


def _knapsack(options: list, room: int) -> list:
    """The options (group, setting, gain, extra) with at most one per group, extras summing to
    at most ``room``, of the largest total gain (exact, HiGHS; extras and gains may be negative)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    if not options:
        return []
    groups = list(dict.fromkeys(o[0] for o in options))
    rows = [[1.0 if o[0] == g else 0.0 for o in options] for g in groups]
    rows.append([float(o[3]) for o in options])
    lo = [0.0] * len(groups) + [-np.inf]
    hi = [1.0] * len(groups) + [float(room)]
    res = milp(-np.array([o[2] for o in options]), constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.ones(len(options)), bounds=Bounds(0, 1))
    if res.x is None:
        return []
    return [o for o, v in zip(options, res.x) if v > 0.5]
