"""Accuracy of the compiled fixture architectures versus their float models, per K.

    .venv/bin/python benchmarks/architectures.py [--bits 4,6,8] [--limit 500] [--write docs/architectures.md]

Models: the shipped ResNet example and the fixtures in examples/fixtures/ (MobileNetV2-,
EfficientNet-, GELU/MaxPool- and ReLU/MaxPool-style CNNs, trained on Fashion-MNIST by
scripts/make_fixtures.py). All share the example's 512 calibration images (training
set) and its 500 held-out test images. For every model and K: compile, evaluate the
integer program (level 1, equal integer for integer to the spiking simulators) and
report accuracy, drop versus onnxruntime on the float model, top-1 agreement, neurons,
latency and spikes per input. Models whose MaxPools all read ReLU-family activations are
also measured with ``--maxpool lipool``; ``--variant fit_tolerance=0.5`` (repeatable)
measures more option sets. With ``--only`` and ``--write``, the other models' sections of
an existing report are kept.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import amosc  # noqa: E402
from amosc.compiler.calibrate import OnnxRunner  # noqa: E402
from amosc.compiler.importer import graph_input, load_model, normalize  # noqa: E402
from amosc.ir.nodes import GatePop, InputPop  # noqa: E402
from amosc.ir.semantics import bit_planes, decode, evaluate  # noqa: E402
from amosc.ir.text import unit_count  # noqa: E402

DATA = os.path.join(ROOT, "examples", "fmnist_resnet")


def models():
    out = [("resnet", os.path.join(DATA, "model.onnx"))]
    for p in sorted(glob.glob(os.path.join(ROOT, "examples", "fixtures", "*.onnx"))):
        out.append((os.path.splitext(os.path.basename(p))[0], p))
    return out


def float_logits(path, x):
    model = normalize(load_model(path)[0], path)
    name, _, fixed = graph_input(model, path)
    t = model.graph.output[0].name
    runner = OnnxRunner(model, name, fixed, [t])
    return runner.collect(x, [t])[t], model


def ops_of(model):
    return sorted({n.op_type for n in model.graph.node})


def measure(path, calib, x, y, ref, bits, **options):
    t0 = time.time()
    prog = amosc.compile(path, calib, bits=bits, **options)
    t_compile = time.time() - t0
    vals = {}
    for i in range(0, len(x), 250):
        for k, v in evaluate(prog, x[i:i + 250]).items():
            vals.setdefault(k, []).append(v)
    vals = {k: np.concatenate(v) for k, v in vals.items()}
    logits = decode(prog.output_pop, vals[prog.output])
    spikes = 0
    for pop in prog.populations:
        if isinstance(pop, (InputPop, GatePop)):
            spikes += int(bit_planes(vals[pop.name], pop.code.bits).sum())
    fitted = [p.fit for p in prog.populations if isinstance(p, GatePop) and p.fit]
    return dict(bits=bits, variant=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()) or
                "defaults", acc=float((logits.argmax(1) == y).mean()),
                agree=float((logits.argmax(1) == ref.argmax(1)).mean()),
                neurons=sum(unit_count(p) for p in prog.populations if p.name != prog.output),
                populations=len(prog.populations), latency=prog.latency, spikes=spikes / len(x),
                compile_s=t_compile,
                fit_err=max((f["max_err_steps"] for f in fitted), default=None))


def variants(path, model, extra=()) -> list:
    """Option sets to measure: the defaults, ``extra`` and lateral-inhibition pooling where it
    applies."""
    out = [{}, *extra]
    if any(n.op_type == "MaxPool" for n in model.graph.node):
        from amosc.compiler.importer import import_model
        from amosc.errors import ModelError
        try:
            import_model(path, maxpool="lipool")
            out.append({"maxpool": "lipool"})
        except ModelError:
            pass  # a MaxPool reads a fitted activation: only the tree applies
    return out


def _option(text: str) -> tuple:
    """'fit_tolerance=0.5' -> ('fit_tolerance', 0.5), typed like the Options field."""
    from dataclasses import fields
    from amosc.compiler.quantize import Options
    key, _, value = text.partition("=")
    types = {f.name: type(getattr(Options(), f.name)) for f in fields(Options)}
    if key not in types or not value:
        raise SystemExit(f"--variant {text!r}: expected OPTION=VALUE with OPTION one of {sorted(types)}")
    return key, types[key](value)


def _sections(path) -> dict:
    """The '## model' sections of an existing report, by model name."""
    if not os.path.exists(path):
        return {}
    text = open(path, encoding="utf-8").read()
    out = {}
    for block in text.split("\n## ")[1:]:
        out[block.split(" ", 1)[0]] = "## " + block.rstrip("\n") + "\n"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="4,6,8")
    ap.add_argument("--limit", type=int, default=500, help="test images to use")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--write", help="write a markdown report here")
    ap.add_argument("--variant", action="append", default=[], metavar="OPTION=VALUE",
                    help="also measure with this compile option changed (an amosc.compile keyword)")
    a = ap.parse_args(argv)
    extra = [dict([_option(v)]) for v in a.variant]
    calib = np.load(os.path.join(DATA, "calib.npy"))
    x = np.load(os.path.join(DATA, "test_x.npy"))[:a.limit]
    y = np.load(os.path.join(DATA, "test_y.npy"))[:a.limit]
    bits = [int(b) for b in a.bits.split(",")]
    report = []
    for name, path in models():
        if a.only and name not in a.only.split(","):
            continue
        ref, model = float_logits(path, x)
        acc_float = float((ref.argmax(1) == y).mean())
        rows = []
        for k, options in [(k, o) for o in variants(path, model, extra) for k in bits]:
            r = measure(path, calib, x, y, ref, k, **options)
            rows.append(r)
            print(f"{name:13s} K={k} {r['variant']:17s} float {acc_float * 100:.2f}%  snn {r['acc'] * 100:.2f}%  "
                  f"drop {(acc_float - r['acc']) * 100:+.2f} pt  agree {r['agree'] * 100:.2f}%  "
                  f"neurons {r['neurons']}  latency {r['latency']}  spikes/input {r['spikes']:.0f}  "
                  f"compile {r['compile_s']:.1f}s", flush=True)
        report.append((name, path, acc_float, ops_of(model), rows))

    if a.write:
        from amosc.ir.serialize import atomic_write
        sections = _sections(a.write) if a.only else {}
        lines = ["# Fixture architectures: measured fidelity (generated by benchmarks/architectures.py; "
                 "do not edit)", "",
                 f"{len(x)} held-out Fashion-MNIST test images; calibration on the example's {len(calib)} "
                 "training images (the compiler's defaults: per-channel 'mse' ranges for ADC gates and "
                 "fitted units, round-to-nearest ADCs, 16-bit weights). Accuracy "
                 "and agreement are of the compiled integer program (level 1, equal integer for integer "
                 "to the spiking simulators). *fit err* is the largest fitted unit's max error in "
                 "output steps of its channel's K-bit grid.", ""]
        for name, path, acc_float, ops, rows in report:
            sec = [f"## {name} (`{os.path.relpath(path, ROOT)}`)", "",
                   f"Float accuracy {acc_float * 100:.2f}%. ONNX ops: {', '.join(ops)}.", "",
                   "| options | K | accuracy | drop vs float | top-1 agreement | neurons | populations "
                   "| latency (steps) | spikes/input | fit err (steps) | compile (s) |",
                   "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                fe = "-" if r["fit_err"] is None else f"{r['fit_err']:.2f}"
                sec.append(f"| {r['variant']} | {r['bits']} | {r['acc'] * 100:.2f}% | "
                           f"{(acc_float - r['acc']) * 100:+.2f} pt | {r['agree'] * 100:.2f}% | {r['neurons']} | "
                           f"{r['populations']} | {r['latency']} | {r['spikes']:.0f} | {fe} | "
                           f"{r['compile_s']:.1f} |")
            sections[name] = "\n".join(sec) + "\n"
        for name in sorted(sections, key=lambda n: (n != "resnet", n)):
            lines.append(sections[name])
        body = "\n".join(lines).encode()
        atomic_write(a.write, lambda f: f.write(body))
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
