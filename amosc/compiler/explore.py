"""Design-space exploration: the latency / neurons / agreement front of one model
(``amosc explore``, docs/optimizer.md).

For each requested precision K the model is compiled once (successive-approximation
gates, the default structure); then every latency between the fastest structure choice and
the SAR program's is given to the exact structure optimizer (:func:`.structures.optimize`),
which returns the fewest-neuron plan within it. The distinct plans are the candidate
points: each is applied, costed (:mod:`.cost`: neurons, synapses, Loihi cores) and
evaluated with the level-1 integer semantics (equal integer for integer to the spiking
simulators) on validation inputs against onnxruntime's float model: top-1 agreement,
spikes per input. A point is on the Pareto front when no other point is at least as good
in latency, neurons and agreement and better in one.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..errors import AmoscError, ResourceError
from ..ir.nodes import GatePop
from . import cost
from .hardware import profile
from .structures import apply_plan, optimize, program_nodes, structure_name

#: The fields of a point, in table order (also the JSON keys).
FIELDS = ("bits", "latency_steps", "neurons", "synapses", "cores", "chips", "spikes_per_input", "agreement",
          "accuracy", "structures", "options", "default", "pareto")


@dataclass
class Point:
    bits: int
    latency_steps: int
    neurons: int
    synapses: int
    cores: int | None          # None: the program does not fit the target (``fit`` says why)
    chips: int | None
    spikes_per_input: float
    agreement: float
    accuracy: float | None
    structures: str            # e.g. "sar 3, radix2 2": ADC structures and how many gates use each
    default: bool = False      # the plain compile (SAR gates at the requested K)
    pareto: bool = False
    fit: str = ""
    options: str = ""          # the compile options of this point's variant ("" : the defaults)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in FIELDS + ("fit",)}


@dataclass
class Front:
    points: list
    target: str
    inputs: int
    notes: list = field(default_factory=list)

    @property
    def pareto(self) -> list:
        return [p for p in self.points if p.pareto]


def _structures(program) -> str:
    """How many gates use each ADC structure ("sar 3, radix2 2")."""
    from collections import Counter
    seen: Counter = Counter()
    for pop in program.populations:
        if isinstance(pop, GatePop):
            seen[structure_of(pop.code)] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))


def structure_of(code) -> str:
    """The structure name of a gate's code: sar (a binary code), unit (a fitted AMOS unit's
    code: fitted thresholds, resets and weights, no steps), radixR or flash (a stepped ADC
    whose first stage has 2^R - 1 units), or 'stepped' for another stepped code."""
    if not code.steps:
        return "sar" if code.is_binary() else "unit"
    bits = int(sum(code.weights)).bit_length()          # the largest code value is 2^K - 1
    r = (code.unit_steps.count(0) + 1).bit_length() - 1
    return structure_name(bits, r) if 2 ** r - 1 == code.unit_steps.count(0) else "stepped"


def pareto_flags(points: list) -> None:
    """Mark the points no other point dominates (latency and neurons lower is better,
    agreement higher is better)."""
    for p in points:
        p.pareto = not any(
            q is not p and q.latency_steps <= p.latency_steps and q.neurons <= p.neurons
            and q.agreement >= p.agreement and (q.latency_steps, q.neurons, -q.agreement)
            != (p.latency_steps, p.neurons, -p.agreement)
            for q in points)


def candidate_plans(program, max_points: int) -> list:
    """The distinct fewest-neuron plans over every latency budget from the fastest to the
    SAR program's own, thinned evenly to ``max_points`` (the fastest and the slowest kept)."""
    nodes, edges = program_nodes(program)
    plans, budget = [], program.latency
    while budget >= 1:
        try:
            plan = optimize(nodes, edges, latency_budget=budget)
        except AmoscError:   # below the fastest choice
            break
        plans.append(plan)
        budget = plan.latency - 1
    if len(plans) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(plans) - 1, max_points)).astype(int))
        plans = [plans[i] for i in idx]
    return plans


def _measure(program, x, ref_argmax, labels, hw, bits, default, options: str = "", batch: int = 256) -> Point:
    c = cost.static_cost(program)
    fit, cores, chips = "", None, None
    try:
        m = cost.map_cores(program, hw)
        cores, chips = m.cores, m.chips
    except ResourceError as exc:
        fit = str(exc)
    from .precision import predictions
    pred, spikes = predictions(program, x, batch, spikes=True)
    acc = float((pred == labels).mean()) if labels is not None else None
    return Point(bits, c.latency_steps, c.neurons, c.synapses, cores, chips, spikes,
                 float((pred == ref_argmax).mean()), acc, _structures(program), default, fit=fit, options=options)


def variant_label(variant: dict) -> str:
    """A compile variant's options as they read on the command line ("" for the defaults)."""
    parts = []
    for k, v in sorted(variant.items()):
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {v:g}"
                     if isinstance(v, float) else f"{flag} {v}")
    return " ".join(parts)


def explore(model_path, calib, x_val, labels=None, bits=(8,), target: str = "loihi2", max_points: int = 12,
            default_bits: int | None = None, log=None, variants=({},), **options) -> Front:
    """The front of ``model_path`` (see the module docstring). ``bits``: the precisions to
    compile; ``default_bits``: the K whose SAR program is marked the default (the first of
    ``bits`` when None); ``variants``: dicts of :class:`~.pipeline.Options` fields, each
    compiled at every K (e.g. fitted units' tolerance or ReLU split: more trade-offs between
    neurons and agreement; the first is the one the default point comes from); ``options``:
    further Options fields for all; ``log(message)``: progress lines."""
    from .pipeline import Options, compile_model, floor_bias
    from .precision import float_reference
    hw = profile(target)
    ref_argmax, x_val = float_reference(model_path, x_val)
    default_bits = bits[0] if default_bits is None else default_bits
    points = []
    for k in bits:
        for v, variant in enumerate(variants):
            label = variant_label(variant)
            if log:
                log(f"K={k}{' ' + label if label else ''}: compiling")
            opts = Options(bits=k, **{**options, **variant})
            # every point's biases are corrected for its own planes: the SAR program without the pass
            sar = compile_model(model_path, calib, replace(opts, bias_correction=0))
            plans = candidate_plans(sar, max_points)
            for j, plan in enumerate(plans):
                plain = not any(r > 1 for r in plan.r.values())
                prog = floor_bias(sar if plain else apply_plan(sar, plan), calib, opts.bias_correction)
                if log:
                    log(f"K={k}{' ' + label if label else ''}: point {j + 1}/{len(plans)}: latency {prog.latency} "
                        f"steps, {cost.static_cost(prog).neurons} neurons")
                points.append(_measure(prog, x_val, ref_argmax, labels, hw, k,
                                       plain and k == default_bits and v == 0, label))
    pareto_flags(points)
    points.sort(key=lambda p: (p.latency_steps, p.neurons))
    return Front(points, hw.name, len(x_val))


def render(front: Front) -> str:
    """The points as a table (Pareto points marked '*', the default compile 'default')."""
    head = (f"{'':2}{'K':>2} {'latency':>7} {'neurons':>10} {'synapses':>12} {'cores':>6} {'chips':>5} "
            f"{'spikes/in':>10} {'agree':>7} {'acc':>7}  structures")
    lines = [f"{len(front.points)} points, {len(front.pareto)} on the Pareto front (*), agreement with "
             f"onnxruntime on {front.inputs} inputs, cores on {front.target}", head]
    for p in front.points:
        acc = f"{100 * p.accuracy:6.2f}%" if p.accuracy is not None else f"{'-':>7}"
        cores = f"{p.cores:>6} {p.chips:>5}" if p.cores is not None else f"{'no fit':>6} {'-':>5}"
        lines.append(f"{'*' if p.pareto else ' '} {p.bits:>2} {p.latency_steps:>7} {p.neurons:>10} "
                     f"{p.synapses:>12} {cores} {p.spikes_per_input:>10.0f} {100 * p.agreement:6.2f}% {acc}  "
                     f"{p.structures}{'  [' + p.options + ']' if p.options else ''}{'  (default)' if p.default else ''}")
    return "\n".join(lines) + "\n"


def plot(front: Front, path: str, title: str = "") -> None:
    """Latency against neurons, every point coloured by agreement, the Pareto front joined,
    the default compile starred; written atomically (PNG, SVG or PDF by the suffix)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AmoscError("drawing the front needs matplotlib: pip install 'amosc[plot]' (or leave out -o "
                         "and use --json)") from None
    from ..fileio import atomic_write
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    lat = [p.latency_steps for p in front.points]
    neu = [p.neurons for p in front.points]
    sc = ax.scatter(lat, neu, c=[100 * p.agreement for p in front.points], cmap="viridis", s=36, zorder=3)
    fig.colorbar(sc, ax=ax, label="top-1 agreement with onnxruntime (%)")
    par = sorted(front.pareto, key=lambda p: p.latency_steps)
    ax.step([p.latency_steps for p in par], [p.neurons for p in par], where="post", color="0.4", lw=1,
            zorder=2, label="Pareto front")
    for p in front.points:
        if p.default:
            ax.scatter([p.latency_steps], [p.neurons], marker="*", s=220, facecolor="none", edgecolor="red",
                       zorder=4, label=f"default compile (SAR, K={p.bits})")
    ax.set_xlabel("latency (time steps)")
    ax.set_ylabel("neurons")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
