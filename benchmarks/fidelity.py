"""Fidelity of the compiled example versus onnxruntime, per K and ADC rounding.

    .venv/bin/python benchmarks/fidelity.py [--model DIR] [--bits 2,3,4,5,6,8]
        [--heldout DIR] [--write docs/results.md]

For each K and setting (the defaults, then one option changed at a time: the paper's
truncating ADC, one 8-bit weight mantissa set, percentile calibration): compile with the
shipped calibration set, evaluate the program on the shipped test images (level-1 integer
evaluation, which the spiking simulators equal integer for integer) and report accuracy,
drop versus the float model, top-1 agreement, latency and spikes per input. ``--heldout``
adds the defaults at K=4 and 8 on a larger test set (benchmarks/heldout.py writes one).
Also times the reference spiking simulator against the level-1 evaluation on the same
inputs (a ratio measured in the same run), and checks the fidelity targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import amosc  # noqa: E402
from amosc.compiler.calibrate import OnnxRunner  # noqa: E402
from amosc.compiler.importer import graph_input, import_model, load_model, normalize  # noqa: E402
from amosc.compiler.quantize import Options  # noqa: E402
from amosc.ir.semantics import decode, evaluate  # noqa: E402


def popcount_spikes(program, vals) -> float:
    total = 0
    for pop in program.populations:
        if pop.name == program.output:
            continue
        c = vals[pop.name]
        total += sum(int(((c >> b) & 1).sum()) for b in range(pop.code.bits))
    return total / next(iter(vals.values())).shape[0]


SETTINGS = [("defaults", {}), ("floor ADC", {"rounding": "floor"}),
            ("8-bit weights", {"weight_bits": 8}), ("percentile 99.99", {"calibration": "percentile"})]
TARGETS = [(8, "agree", 0.995, "top-1 agreement >= 99.5%"), (8, "drop", 0.003, "accuracy drop <= 0.3 pt"),
           (4, "drop", 0.01, "accuracy drop <= 1 pt")]


def measure(onnx_path, calib, x, y, settings, bits_list, ref):
    """One row per (K, setting): accuracy, agreement with ``ref`` logits, latency, spikes."""
    rows = []
    for bits in bits_list:
        for label, kw in settings:
            t0 = time.time()
            prog = amosc.compile(onnx_path, calib, bits=bits, **kw)
            t_compile = time.time() - t0
            vals = {}
            for i in range(0, len(x), 500):  # chunks bound the memory
                for k, v in evaluate(prog, x[i:i + 500]).items():
                    vals.setdefault(k, []).append(v)
            vals = {k: np.concatenate(v) for k, v in vals.items()}
            logits = decode(prog.output_pop, vals[prog.output])
            rows.append(dict(bits=bits, setting=label, acc=float((logits.argmax(1) == y).mean()),
                             agree=float((logits.argmax(1) == ref.argmax(1)).mean()),
                             latency=prog.latency, spikes=popcount_spikes(prog, vals)))
            r = rows[-1]
            print(f"K={bits} {label:<17} acc {r['acc'] * 100:6.2f}%  agree {r['agree'] * 100:6.2f}%  "
                  f"latency {r['latency']:3d}  spikes/input {r['spikes']:8.0f}  compile {t_compile:.1f}s",
                  flush=True)
    return rows


def table(rows, acc_float):
    lines = ["| K | setting | accuracy | drop vs float | top-1 agreement | latency (steps) | spikes/input |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bits']} | {r['setting']} | {r['acc'] * 100:.2f}% | "
                     f"{(acc_float - r['acc']) * 100:+.2f} pt | {r['agree'] * 100:.2f}% | "
                     f"{r['latency']} | {r['spikes']:.0f} |")
    return lines


def check_targets(rows, acc_float):
    out = []
    for bits, what, bound, text in TARGETS:
        r = next((r for r in rows if r["bits"] == bits and r["setting"] == "defaults"), None)
        if r is None:
            continue
        v = r["agree"] if what == "agree" else acc_float - r["acc"]
        ok = v >= bound - 1e-9 if what == "agree" else v <= bound + 1e-9  # counts, not float noise
        shown = f"{v * 100:.2f}%" if what == "agree" else f"{v * 100:+.2f} pt"
        out.append(f"- K={bits}, {text}: {shown}, {'met' if ok else 'NOT met'}")
    return out


def reference(model, name, fixed, tensor, x, y):
    ref = OnnxRunner(model, name, fixed, [tensor]).collect(x, [tensor])[tensor]
    return ref, float((ref.argmax(1) == y).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "examples", "fmnist_resnet"))
    ap.add_argument("--bits", default="2,3,4,5,6,8")
    ap.add_argument("--write", help="write a markdown report here")
    ap.add_argument("--heldout", help="a larger test set: a directory with test_x.npy and test_y.npy")
    a = ap.parse_args(argv)
    d = a.model
    onnx_path = os.path.join(d, "model.onnx")
    calib = np.load(os.path.join(d, "calib.npy"))
    x = np.load(os.path.join(d, "test_x.npy"))
    y = np.load(os.path.join(d, "test_y.npy"))
    model = normalize(load_model(onnx_path)[0], onnx_path)
    name, _, fixed = graph_input(model, onnx_path)
    tensor = import_model(onnx_path).readout_tensor
    ref, acc_float = reference(model, name, fixed, tensor, x, y)
    rows = measure(onnx_path, calib, x, y, SETTINGS, [int(v) for v in a.bits.split(",")], ref)
    held = None
    if a.heldout:
        hx = np.load(os.path.join(a.heldout, "test_x.npy"))
        hy = np.load(os.path.join(a.heldout, "test_y.npy"))
        href, hacc = reference(model, name, fixed, tensor, hx, hy)
        held = (len(hx), hacc, measure(onnx_path, calib, hx, hy, SETTINGS[:1], [4, 8], href))

    # simulator speed: level-1 evaluation vs the time-stepped reference (same program, same inputs)
    from amosc.backends.reference import simulate
    prog = amosc.compile(onnx_path, calib, bits=8)
    n = min(200, len(x))
    t0 = time.time()
    evaluate(prog, x[:n])
    t_eval = time.time() - t0
    t0 = time.time()
    simulate(prog, x[:n])
    t_sim = time.time() - t0
    print(f"reference simulator: {t_sim:.2f}s for {n} inputs, {t_sim / t_eval:.1f}x the level-1 evaluation "
          f"({t_eval:.2f}s)")
    targets = check_targets(rows, acc_float)
    print("\n".join(targets))

    if a.write:
        from amosc.ir.serialize import atomic_write
        defaults = Options()
        lines = ["# Measured fidelity (generated by benchmarks/fidelity.py; do not edit)", "",
                 f"Model: `{os.path.relpath(onnx_path, ROOT)}`; {len(x)} shipped test images; float "
                 f"accuracy {acc_float * 100:.2f}%. Calibration: the {len(calib)} shipped training images. "
                 f"Defaults: round-to-nearest ADC, {defaults.weight_bits}-bit weights (two 8-bit mantissa "
                 f"sets), '{defaults.calibration}' calibration per channel; each other row changes one of "
                 "them. Accuracy and agreement are of the compiled integer program (level-1 evaluation, "
                 "equal integer for integer to the spiking simulators).", ""]
        lines += table(rows, acc_float)
        lines += ["", "Targets (defaults, shipped test images):", *targets]
        if held:
            hn, hacc, hrows = held
            lines += ["", f"## Held-out check ({hn} other Fashion-MNIST test images, float accuracy "
                      f"{hacc * 100:.2f}%)", "",
                      "`benchmarks/heldout.py --out DIR` writes them (needs `apt-get install "
                      "dataset-fashion-mnist`); `benchmarks/fidelity.py --heldout DIR` measures:", ""]
            lines += table(hrows, hacc) + ["", "Targets (defaults, held-out images):",
                                           *check_targets(hrows, hacc)]
        lines += ["", f"Reference simulator speed: {t_sim / t_eval:.1f}x the time of the level-1 "
                  f"evaluation on {n} inputs ({t_sim:.2f}s vs {t_eval:.2f}s, 2 cores).", ""]
        body = "\n".join(lines).encode()
        atomic_write(a.write, lambda f: f.write(body))
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
