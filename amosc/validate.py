"""``validate``: a compiled program against onnxruntime on the float model.

The whole set is evaluated with the IR's integer semantics (level 1, fast), streamed in
chunks beside onnxruntime so memory does not grow with N; a subset (``spike_check``
inputs) is also run on the spiking backend and must equal level 1 integer for integer
(every backend is tested to). The report says both counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .api import run_program
from .compiler.calibrate import OnnxRunner, check_input_array
from .compiler.importer import graph_input, load_model, normalize
from .ir.nodes import GatePop
from .ir.semantics import decode, decode_activation, evaluate
from .ir.text import unit_count

CHUNK = 128


@dataclass
class LayerRow:
    name: str
    op: str
    neurons: int
    spikes_per_input: float
    rel_error: float


@dataclass
class Report:
    n: int
    backend: str
    agreement: float
    min_agreement: float
    logits_max_err: float    # max |snn - onnx| / range(onnx logits)
    logits_mean_err: float
    latency: int
    accuracy_onnx: float | None = None
    accuracy_snn: float | None = None
    spikes_per_input: float = 0.0
    layers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    spike_checked: int = 0        # inputs also run on the spiking backend
    spike_check_equal: bool = True  # its output integers equal level 1's

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement and self.spike_check_equal

    def render(self) -> str:
        out = [f"validated {self.n} inputs against onnxruntime (integer level-1 evaluation); "
               f"{self.spike_checked} of them also run on backend '{self.backend}': "
               + ("equal to level 1 integer for integer" if self.spike_check_equal else
                  "DIFFERENT from level 1")]
        out += [f"warning: {w}" for w in self.warnings]
        out.append(f"top-1 agreement      {self.agreement * 100:.2f}%  (min {self.min_agreement * 100:.2f}%)")
        if self.accuracy_onnx is not None:
            out.append(f"accuracy  onnx       {self.accuracy_onnx * 100:.2f}%")
            out.append(f"accuracy  snn        {self.accuracy_snn * 100:.2f}%  "
                       f"(drop {(self.accuracy_onnx - self.accuracy_snn) * 100:+.2f} pt)")
        out.append(f"logits error / range max {self.logits_max_err:.4f}  mean {self.logits_mean_err:.4f}")
        out.append(f"latency {self.latency} steps   spikes per input {self.spikes_per_input:.0f}")
        out.append("")
        out.append(f"{'layer':<32} {'op':<10} {'neurons':>9} {'spikes/input':>13} {'rel.err':>8}")
        for r in self.layers:
            out.append(f"{r.name[:32]:<32} {r.op:<10} {r.neurons:>9} {r.spikes_per_input:>13.1f} "
                       f"{r.rel_error:>8.4f}")
        out.append("")
        if self.passed:
            out.append("PASS")
        elif not self.spike_check_equal:
            out.append(f"FAIL: backend '{self.backend}' differs from the integer semantics (a bug; "
                       "report it)")
        else:
            out.append(f"FAIL: agreement {self.agreement * 100:.2f}% < {self.min_agreement * 100:.2f}%")
        return "\n".join(out) + "\n"


@dataclass
class SpikeReport:
    """Backend versus reference, spike for spike and integer for integer."""
    backend: str
    n: int
    equal: bool
    spikes_compared: int
    first_mismatch: dict | None = None
    outputs_equal: bool = True

    def render(self) -> str:
        head = f"spike rasters: backend '{self.backend}' vs reference on {self.n} inputs, " \
               f"{self.spikes_compared} unit-steps compared"
        if self.equal:
            return head + "\nEQUAL: every population's spikes and the readout integers match\n"
        m = self.first_mismatch
        if m is None:
            return head + "\nMISMATCH: readout integers differ (spikes equal)\n"
        return (head + f"\nMISMATCH: first at population {m['population']!r}, neuron {m['neuron']} "
                f"(unit k={m['unit']}), input {m['input']}, time step {m['step']}: "
                f"reference {m['reference']}, {self.backend} {m['backend']}\n")


def compare_spikes(program, result, reference, backend: str) -> SpikeReport:
    """Compare two RunResults recorded with rasters (same inputs, same interval)."""
    interval = max(result.interval, 1)
    first, compared = None, 0
    n = result.output.shape[0]
    for pop in program.populations:
        if pop.name not in reference.rasters or pop.name == program.input:
            continue  # the input's spikes are the host's encoding, the same for every backend
        a, b = reference.rasters[pop.name], result.rasters.get(pop.name)
        if b is None or b.shape != a.shape:
            first = first or {"population": pop.name, "neuron": -1, "unit": -1, "input": 0,
                              "step": pop.start, "reference": "raster", "backend": "missing"}
            continue
        compared += a.size
        diff = np.argwhere(a != b)
        if diff.size:
            steps = diff[:, 0] * interval + pop.start + diff[:, 1]
            i = int(np.argmin(steps))
            idx = tuple(diff[i])
            cand = {"population": pop.name, "neuron": int(np.ravel_multi_index(idx[2:], pop.shape)),
                    "unit": int(idx[1]), "input": int(idx[0]), "step": int(steps[i]),
                    "reference": int(a[idx]), "backend": int(b[idx])}
            if first is None or cand["step"] < first["step"]:
                first = cand
    outputs_equal = bool(np.array_equal(result.output, reference.output))
    return SpikeReport(backend, n, first is None and outputs_equal, compared, first, outputs_equal)


#: Inputs run on the spiking backend by default besides the level-1 evaluation of all.
SPIKE_CHECK = 64


def validate(program, onnx_path, x, labels=None, backend: str = "reference",
             min_agreement: float = 0.99, result=None, spike_check: int = SPIKE_CHECK) -> Report:
    """Compare ``program`` with the float model on inputs x: level 1 over all of x, the
    spiking ``backend`` on the first ``spike_check`` inputs (or ``result``, a backend run
    already made on x)."""
    x = check_input_array(x, program.input_pop.shape, "input")
    n = x.shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            from .errors import CalibrationError
            raise CalibrationError(f"labels must be integers shaped ({n},), got {labels.dtype} {labels.shape}")
    model, digest = load_model(onnx_path)
    path = str(onnx_path)
    warnings = []
    if program.provenance.get("sha256") not in (None, digest):
        warnings.append(f"{path} is not the model this program was compiled from (sha256 differs)")
    model = normalize(model, path)
    name, shape, fixed = graph_input(model, path)
    if tuple(shape) != tuple(program.input_pop.shape):
        from .errors import ModelError
        raise ModelError(f"{path}: input {name!r} has per-sample shape {tuple(shape)}, but the program "
                         f"takes {tuple(program.input_pop.shape)}; is this the model it was compiled from?")
    gates = [p for p in program.populations if isinstance(p, GatePop) and p.tensor]
    tensors = list(dict.fromkeys([program.output_pop.tensor] + [g.tensor for g in gates]))
    runner = OnnxRunner(model, name, fixed, tensors)

    # the whole set, streamed: onnxruntime and level 1 side by side, chunk by chunk
    from .progress import progress
    sq_err = {g.name: 0.0 for g in gates}
    sq_ref = {g.name: 0.0 for g in gates}
    spikes = {p.name: 0.0 for p in program.populations}
    ref_logits, out = [], []
    for i in progress(range(0, n, CHUNK), desc="validating", total=-(-n // CHUNK)):
        xb = x[i:i + CHUNK]
        ref = runner.collect(xb, tensors, desc=None)
        counts: dict = {}
        vals = evaluate(program, xb, spike_counts=counts)
        for g in gates:
            d = decode_activation(g, vals[g.name], program, vals) - ref[g.tensor]
            sq_err[g.name] += float((d ** 2).sum())
            sq_ref[g.name] += float((ref[g.tensor] ** 2).sum())
        for k, c in counts.items():
            spikes[k] += float(c.sum())
        ref_logits.append(ref[program.output_pop.tensor].reshape(len(xb), -1))   # (N, C, 1, 1) heads too
        out.append(vals[program.output])
    ref_logits, out = np.concatenate(ref_logits), np.concatenate(out)
    logits = decode(program.output_pop, out)

    # the spiking backend on a subset (or the full run the caller made)
    m = n if result is not None else min(max(int(spike_check), 0), n)
    if result is None and m:
        result = run_program(program, x[:m], backend=backend)
    equal = result is None or bool(np.array_equal(result.output[:m], out[:m]))

    rng = float(ref_logits.max() - ref_logits.min()) or 1.0
    err = np.abs(logits - ref_logits)
    rep = Report(n=n, backend=backend,
                 agreement=float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
                 min_agreement=min_agreement, logits_max_err=float(err.max()) / rng,
                 logits_mean_err=float(err.mean()) / rng, latency=program.latency,
                 spikes_per_input=float(sum(spikes.values())) / n, warnings=warnings,
                 spike_checked=m, spike_check_equal=equal)
    if labels is not None:
        rep.accuracy_onnx = float((ref_logits.argmax(1) == labels).mean())
        rep.accuracy_snn = float((logits.argmax(1) == labels).mean())
    for pop in program.populations:
        if pop.name not in counts:
            continue
        rel = float(np.sqrt(sq_err[pop.name] / sq_ref[pop.name])) if sq_ref.get(pop.name) else float("nan")
        op = pop.activation if isinstance(pop, GatePop) else "input"
        rep.layers.append(LayerRow(pop.name, op, unit_count(pop), spikes[pop.name] / n, rel))
    return rep
