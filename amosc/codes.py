"""The literature's other conversion codes, run on the same imported graph (docs/codes.md).

AMOS encodes every activation in K binary-weighted spikes. The codes it is compared with
(Rueckauer et al. 2017; Li & Zeng 2022; Ma et al. 2021) are
rate codes of integrate-and-fire (IF) neurons over a window of T steps:

- ``rate``: one binary spike per step at most (Rueckauer: reset by subtraction);
- ``burstG``: up to G spikes in one step (Li & Zeng's burst spikes; ``burst`` is G = 2);
- ``ternary``: a second, negative threshold that takes back an earlier spike (TerMapping);
- ``augmented``: one signed integer event per step, any number of thresholds at once
  (AugMapping).

Every gate of the imported graph (ReLU family only: these codes have no fitted units)
becomes IF neurons of threshold lambda (the 99.9th percentile of the layer's activation on
the calibration data, Rueckauer's normalization). Per step t, neuron by neuron::

    V += I(t);  s = spikes(V);  V -= lambda * s;  the next layers receive lambda * s

where I(t) is the gate's expression (weights, bias as a constant current) of the values its
sources sent at step t (the input is an analog current, the same x every step), and
V starts at lambda / 2 (which centres the rounding: a neuron with constant input current
I in [0, lambda] has fired round(T I / lambda) times after T steps). Layers update in order
within a step (snn_toolbox's schedule). The readout accumulates its expression; the class
at step T is the argmax of the sum. Signed codes only take back spikes a neuron has sent
(its net count stays >= 0), so they still encode a ReLU.

:func:`compare` runs these codes and compiled AMOS programs on the same inputs and reports
top-1 agreement with onnxruntime, accuracy, latency and spikes per input side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import ModelError
from .ir.tensor import INPUT

#: Percentile of a layer's calibration activations used as its IF threshold (Rueckauer 2017).
PERCENTILE = 99.9
#: Calibration values kept per gate for the percentile (evenly spaced samples).
MAX_VALUES = 2_000_000
DEFAULT_STEPS = (8, 16, 32, 64, 128, 256)
DEFAULT_CODES = ("rate", "burst", "ternary", "augmented")


@dataclass(frozen=True)
class Scheme:
    """A rate-family code: ``burst`` spikes per step at most (None: any number), ``signed``:
    a negative threshold takes back earlier spikes."""
    name: str
    burst: int | None = 1
    signed: bool = False

    def spikes(self, v: np.ndarray, lam: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Spikes s (signed integers) of neurons with membrane v, threshold lam and net
        spike count so far ``count``."""
        up = np.floor(v / lam)
        if self.burst is not None:
            up = np.minimum(up, self.burst)
        s = np.maximum(up, 0)
        if self.signed:   # take back at most what was sent, at most ``burst`` per step
            down = np.minimum(np.floor(-v / lam), count)
            if self.burst is not None:
                down = np.minimum(down, self.burst)
            s = s - np.maximum(down, 0)
        return s


def scheme(name: str) -> Scheme:
    """A code by name: rate, burst (G = 2), burstG (e.g. burst5), ternary, augmented."""
    if name == "rate":
        return Scheme("rate")
    if name == "ternary":
        return Scheme("ternary", 1, True)
    if name == "augmented":
        return Scheme("augmented", None, True)
    m = re.fullmatch(r"burst(\d*)", name)
    if m and (not m.group(1) or int(m.group(1)) >= 1):
        return Scheme(name, int(m.group(1) or 2))
    raise ModelError(f"unknown code {name!r}; the codes are rate, burst (2 spikes per step), burstG "
                     "(G spikes per step, e.g. burst5), ternary, augmented")


def check_graph(fg) -> None:
    """These codes have IF neurons only: every gate must be ReLU-family."""
    for g in fg.gates:
        if g.fn is not None or g.compartments != 1:
            what = g.fn.canonical() if g.fn is not None else "a lateral-inhibition pool"
            raise ModelError(f"gate {g.name!r} (node {g.node!r}) is {what}: the rate-family codes (rate, burst, "
                             "ternary, augmented) convert ReLU-family networks only (ReLU, Clip/ReLU6, max and "
                             "average pooling, Add, Concat); AMOS fits other activations")


def thresholds(fg, calib: np.ndarray, percentile: float = PERCENTILE, batch: int = 64) -> dict:
    """{gate: lambda}: the ``percentile`` of the gate's activation on ``calib`` (one value
    per layer; 1 for a gate that never fires)."""
    from .ir.tensor import float_eval
    n = calib.shape[0]
    kept: dict = {g.name: [] for g in fg.gates}
    for i in range(0, n, batch):
        vals = float_eval(fg, calib[i:i + batch].astype(np.float64))
        for g in fg.gates:
            v = vals[g.name].reshape(-1)
            stride = max(1, -(-v.size * -(-n // batch) // MAX_VALUES))
            kept[g.name].append(v[::stride].astype(np.float32))
    out = {}
    for g in fg.gates:
        v = np.concatenate(kept[g.name])
        lam = float(np.percentile(v, percentile)) if v.size else 0.0
        out[g.name] = lam if lam > 0 else 1.0
    return out


def simulate(fg, lam: dict, x: np.ndarray, code: Scheme, steps, record: dict | None = None):
    """Run ``code`` on inputs x (N, *input_shape) for max(steps) steps: ({T: top-1 class
    (N,) at step T}, {T: spikes per input (N,) up to step T}). ``record``, when given,
    receives every gate's net spike count (N, *shape) at the end and, as "output", the
    readout's mean over the steps (the estimate of the float logits)."""
    steps = sorted({int(t) for t in steps})
    if not steps or steps[0] < 1:
        raise ModelError(f"steps must be positive integers, got {steps}")
    n = x.shape[0]
    xv = np.asarray(x, np.float64)
    exprs = {g.name: _Fast(g.expr) for g in fg.gates}
    readout = _Fast(fg.readout)
    v = {g.name: np.full((n, *g.shape), 0.5 * lam[g.name]) for g in fg.gates}
    count = {g.name: np.zeros((n, *g.shape)) for g in fg.gates}
    acc = np.zeros((n, *fg.readout.shape))
    spikes = np.zeros(n)
    preds, spike_log = {}, {}
    # a gate reading only the input gets the same current every step: computed once
    const = {g.name: exprs[g.name]({INPUT: xv}) for g in fg.gates if set(g.expr.maps) <= {INPUT}}
    for t in range(1, steps[-1] + 1):
        vals = {INPUT: xv}
        for g in fg.gates:
            v[g.name] += const[g.name] if g.name in const else exprs[g.name](vals)
            s = code.spikes(v[g.name], lam[g.name], count[g.name])
            v[g.name] -= lam[g.name] * s
            count[g.name] += s
            spikes += np.abs(s).reshape(n, -1).sum(axis=1)
            vals[g.name] = lam[g.name] * s
        acc += readout(vals)
        if t in steps:
            preds[t] = acc.reshape(n, -1).argmax(axis=1)
            spike_log[t] = spikes.copy()
    if record is not None:
        record.update({k: c.astype(np.int64) for k, c in count.items()})
        record["output"] = acc / steps[-1]
    return preds, spike_log


class _Fast:
    """An expression's value, its convolutions run by onnxruntime in float32 (the simulation
    evaluates every expression once per step; these codes are approximations, float32 is
    ample), its other maps as the tensor IR applies them."""

    def __init__(self, e):
        from .ir import linear as L
        from .ir.semantics import _conv_session
        self.bias, self.maps = e.bias, []
        for src, m in e.maps.items():
            if isinstance(m, L.Conv) and len(m.in_shape) == 3:
                sess = _conv_session(np.ascontiguousarray(m.w, np.float32), m.attrs())
                self.maps.append((src, lambda v, s=sess: s.run(None, {"x": v.astype(np.float32)})[0]))
            else:
                self.maps.append((src, m.apply))

    def __call__(self, vals: dict) -> np.ndarray:
        n = vals[INPUT].shape[0]
        y = np.broadcast_to(self.bias, (n, *self.bias.shape)).astype(np.float64)
        for src, f in self.maps:
            y += f(vals[src])
        return y


@dataclass
class Row:
    code: str
    setting: str            # "T=64" or "K=8"
    latency_steps: int
    agreement: float
    accuracy: float | None
    spikes_per_input: float
    neurons: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def compare(model_path, calib: np.ndarray, x: np.ndarray, labels=None, codes=DEFAULT_CODES,
            steps=DEFAULT_STEPS, bits=(4, 6, 8), batch: int = 100, log=None) -> list:
    """Rows of :class:`Row`: every code at every T in ``steps`` and AMOS at every K in
    ``bits``, on inputs x; agreement is top-1 agreement with onnxruntime's float model.
    A rate-family code's latency is T plus one step per gate layer on the longest path
    (the synaptic hops a pipelined chip adds), its neurons one per activation element."""
    from .compiler.pipeline import compile_model, import_graph
    from .compiler.precision import float_reference, predictions
    from .compiler.calibrate import check_input_array
    from .compiler.cost import static_cost
    from .progress import progress
    say = log or (lambda msg: None)
    schemes = [scheme(c) for c in codes]
    ref, x = float_reference(model_path, x)
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    if labels is not None and len(labels) != len(x):
        raise ModelError(f"{len(labels)} labels for {len(x)} inputs")
    rows = []

    def row(code, setting, latency, pred, spikes, neurons):
        rows.append(Row(code, setting, int(latency), float((pred == ref).mean()),
                        None if labels is None else float((pred == labels).mean()), float(spikes), int(neurons)))
        r = rows[-1]
        say(f"{code} {setting}: agreement {100 * r.agreement:.2f}%, latency {r.latency_steps} steps, "
            f"{r.spikes_per_input:.0f} spikes/input")

    if schemes:
        fg = import_graph(model_path)
        check_graph(fg)
        calib = check_input_array(calib, fg.input_shape, "calibration data")
        lam = thresholds(fg, calib)
        depth = _depth(fg)
        neurons = sum(int(np.prod(g.shape)) for g in fg.gates)
        for sc in schemes:
            preds: dict = {}
            spk: dict = {}
            for i in progress(range(0, len(x), batch), desc=sc.name, total=-(-len(x) // batch)):
                p, s = simulate(fg, lam, x[i:i + batch], sc, steps)
                for t in p:
                    preds.setdefault(t, []).append(p[t])
                    spk.setdefault(t, []).append(s[t])
            for t in sorted(preds):
                row(sc.name, f"T={t}", t + depth, np.concatenate(preds[t]), np.concatenate(spk[t]).mean(), neurons)
    for k in bits:
        program = compile_model(model_path, calib, bits=int(k))
        pred, spikes = predictions(program, x, spikes=True)
        row("amos", f"K={k}", program.latency, pred, spikes, static_cost(program).neurons)
    return rows


def _depth(fg) -> int:
    """Gate layers on the longest input-to-readout path."""
    level = {INPUT: 0}
    for g in fg.gates:
        level[g.name] = 1 + max(level[s] for s in g.expr.maps)
    return max((level[s] for s in fg.readout.maps), default=0)


def render(rows: list) -> str:
    acc = any(r.accuracy is not None for r in rows)
    head = ["code", "setting", "latency (steps)", "top-1 agreement"] + (["accuracy"] if acc else []) + \
        ["spikes/input", "neurons"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.code, r.setting, str(r.latency_steps), f"{100 * r.agreement:.2f}%"]
        if acc:
            cells.append("-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%")
        cells += [f"{r.spikes_per_input:.0f}", str(r.neurons)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
