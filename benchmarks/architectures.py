"""Accuracy of the compiled fixture architectures versus their float models, per K.

    .venv/bin/python benchmarks/architectures.py [--bits 4,6,8] [--limit 500] [--write docs/architectures.md]
    .venv/bin/python benchmarks/architectures.py --test-set heldout2000 --bits 8 --write docs/architectures.md

Models: the shipped ResNet example and the fixtures in examples/fixtures/ (MobileNetV2-,
two EfficientNet-, GELU/MaxPool-, GELU wide-head, ReLU/MaxPool- and Inception-style CNNs,
trained on Fashion-MNIST by scripts/make_fixtures.py). All share the example's 512
calibration images (training set). Test images: ``--test-set shipped500`` (default) the
example's 500 held-out test images; ``--test-set heldout2000`` the first 2000 official
test images from examples/fmnist_test2000.npz (its first 500 are the same images).
``--limit`` takes the first n of the set. For every model and K: compile, evaluate the
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
from amosc.ir.nodes import GatePop  # noqa: E402
from amosc.ir.semantics import decode, evaluate  # noqa: E402
from amosc.ir.text import unit_count  # noqa: E402

DATA = os.path.join(ROOT, "examples", "fmnist_resnet")
HELDOUT = os.path.join(ROOT, "examples", "fmnist_test2000.npz")


def test_set(name: str):
    """(x float32 (n, 1, 28, 28) in [0, 1], y int64) of a named test set."""
    if name == "shipped500":
        return np.load(os.path.join(DATA, "test_x.npy")), np.load(os.path.join(DATA, "test_y.npy"))
    with np.load(HELDOUT) as f:  # uint8 pixels; / 255 as float32 equals test_x.npy on the first 500
        return f["x"].astype(np.float32) / np.float32(255.0), f["y"].astype(np.int64)


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


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_streamed(prog, x, log_every: float = 0.0):
    """Level-1 evaluation of prog on x in chunks sized to the program (about 2e8 unit-values
    per chunk, so memory stays bounded on the 12 M-neuron models): (logits, total spikes)."""
    neurons = max(1, sum(unit_count(p) for p in prog.populations))
    chunk = int(np.clip(2e8 // neurons, 4, 250))
    logits, spikes, t0, last = [], 0, time.time(), time.time()
    for i in range(0, len(x), chunk):
        counts = {}
        out = evaluate(prog, x[i:i + chunk], spike_counts=counts)[prog.output]
        logits.append(decode(prog.output_pop, out))
        spikes += int(sum(int(v.sum()) for v in counts.values()))
        if log_every and time.time() - last > log_every:
            last = time.time()
            print(f"  ... {i + len(out)}/{len(x)} images, {last - t0:.0f}s", flush=True)
    return np.concatenate(logits), spikes


def measure(path, calib, x, y, ref, bits, log_every=0.0, **options):
    t0 = time.time()
    prog = amosc.compile(path, calib, bits=bits, **options)
    t_compile = time.time() - t0
    rss = peak_rss_mb()
    t0 = time.time()
    logits, spikes = run_streamed(prog, x, log_every)
    t_eval = time.time() - t0
    fitted = [p.fit for p in prog.populations if isinstance(p, GatePop) and p.fit]
    return dict(bits=bits, variant=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()) or
                "defaults", acc=float((logits.argmax(1) == y).mean()),
                agree=float((logits.argmax(1) == ref.argmax(1)).mean()),
                n_agree=int((logits.argmax(1) == ref.argmax(1)).sum()),
                neurons=sum(unit_count(p) for p in prog.populations if p.name != prog.output),
                populations=len(prog.populations), latency=prog.latency, spikes=spikes / len(x),
                compile_s=t_compile, compile_rss_mb=rss, eval_s=t_eval,
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
    if types[key] is bool:   # bool("False") is True
        if value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"--variant {text!r}: {key} takes true or false")
        return key, value.lower() in ("true", "1")
    return key, types[key](value)


SUMMARY = "held-out"  # key of the K-per-model summary section on the 2000 held-out images
TEST_IMAGES = "Test images: "


def _sections(path) -> dict:
    """The '## model' sections of an existing report, by model name. Sections written before
    they stated their test images get the count the report's header gave then."""
    if not os.path.exists(path):
        return {}
    text = open(path, encoding="utf-8").read()
    head, *blocks = text.split("\n## ")
    import re
    old_n = re.search(r"^(\d+) held-out Fashion-MNIST test images;", head, re.M)
    out = {}
    for block in blocks:
        sec = "## " + block.rstrip("\n") + "\n"
        name = block.split(" ", 1)[0]
        if name != SUMMARY and TEST_IMAGES not in sec and old_n:
            title, rest = sec.split("\n", 1)
            sec = f"{title}\n\n{TEST_IMAGES}the first {old_n.group(1)} of `examples/fmnist_resnet/test_x.npy`." \
                  f"\n{rest}"
        out[name] = sec
    return out


def _summary_rows(section: str) -> dict:
    """model name -> table row of an existing summary section."""
    return {line.split("|")[1].strip(): line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}


def target(model) -> float:
    """Issue 11's bound on top-1 agreement at K=8 over the 2000 held-out images: 98%, or 97%
    for a model with squeeze-excitation products (each SE block adds a GlobalAveragePool
    besides the head's)."""
    return 0.97 if sum(n.op_type == "GlobalAveragePool" for n in model.graph.node) > 1 else 0.98


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="4,6,8")
    ap.add_argument("--test-set", choices=("shipped500", "heldout2000"), default="shipped500",
                    help="shipped500: examples/fmnist_resnet/test_x.npy (500 images); heldout2000: "
                         "examples/fmnist_test2000.npz (the first 2000 official test images)")
    ap.add_argument("--limit", type=int, default=None, help="use the first n test images (default: all)")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--write", help="write a markdown report here")
    ap.add_argument("--variant", action="append", default=[], metavar="OPTION=VALUE",
                    help="also measure with this compile option changed (an amosc.compile keyword)")
    a = ap.parse_args(argv)
    extra = [dict([_option(v)]) for v in a.variant]
    calib = np.load(os.path.join(DATA, "calib.npy"))
    x, y = test_set(a.test_set)
    x, y = x[:a.limit], y[:a.limit]
    bits = [int(b) for b in a.bits.split(",")]
    report = []
    for name, path in models():
        if a.only and name not in a.only.split(","):
            continue
        ref, model = float_logits(path, x)
        acc_float = float((ref.argmax(1) == y).mean())
        rows = []
        for k, options in [(k, o) for o in variants(path, model, extra) for k in bits]:
            r = measure(path, calib, x, y, ref, k, log_every=60.0, **options)
            rows.append(r)
            print(f"{name:13s} K={k} {r['variant']:17s} float {acc_float * 100:.2f}%  snn {r['acc'] * 100:.2f}%  "
                  f"drop {(acc_float - r['acc']) * 100:+.2f} pt  agree {r['agree'] * 100:.2f}%  "
                  f"neurons {r['neurons']}  latency {r['latency']}  spikes/input {r['spikes']:.0f}  "
                  f"compile {r['compile_s']:.1f}s", flush=True)
        report.append((name, path, acc_float, ops_of(model), rows, target(model)))

    if a.write:
        from amosc.ir.serialize import atomic_write
        sections = _sections(a.write)
        test_file = "examples/fmnist_test2000.npz" if a.test_set == "heldout2000" else \
            "examples/fmnist_resnet/test_x.npy"
        if a.test_set == "heldout2000":  # update the summary's rows, keep every model's section
            rows_by_name = _summary_rows(sections.get(SUMMARY, ""))
            for name, path, acc_float, ops, rows, bound in report:
                for r in rows:
                    if r["variant"] != "defaults":
                        continue
                    ok = "yes" if r["agree"] >= bound else "**no**"
                    rows_by_name[name if r["bits"] == 8 else f"{name} K={r['bits']}"] = (
                        f"| {name} | {r['bits']} | {acc_float * 100:.2f}% | {r['acc'] * 100:.2f}% | "
                        f"{r['agree'] * 100:.2f}% ({r['n_agree']}/{len(x)}) | {bound * 100:.0f}% | {ok} | "
                        f"{r['neurons']} | {r['latency']} | {r['compile_s']:.1f} | {r['compile_rss_mb']:.0f} | "
                        f"{r['eval_s']:.0f} |")
            order = [n for n, _ in models()]
            sec = [f"## {SUMMARY} agreement on {len(x)} test images (the first {len(x)} of `{test_file}`)", "",
                   "The compiler's defaults; the bound is issue 11's: top-1 agreement with onnxruntime of at "
                   "least 98% at K=8 (97% for the models with squeeze-excitation products). At 2000 images "
                   "one binomial standard deviation is about 0.3 pt at 98%. *peak RSS* is the benchmark "
                   "process's peak after compiling (one model per process: run with `--only NAME`); "
                   "*eval* is the level-1 evaluation of all images. `gelu_wide`, `effnet_se6` and "
                   "`inception` are the held-out architectures (added after the compiler was tuned on the "
                   "others).", "",
                   "| model | K | float accuracy | SNN accuracy | top-1 agreement | bound | meets bound | neurons "
                   "| latency (steps) | compile (s) | peak RSS (MiB) | eval (s) |",
                   "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            sec += [rows_by_name[k] for k in sorted(rows_by_name, key=lambda k: (
                order.index(k.split()[0]) if k.split()[0] in order else len(order), k))]
            sections[SUMMARY] = "\n".join(sec) + "\n"
        elif not a.only:
            sections = {k: v for k, v in sections.items() if k == SUMMARY}
        lines = ["# Fixture architectures: measured fidelity (generated by benchmarks/architectures.py; "
                 "do not edit)", "",
                 "Held-out Fashion-MNIST test images (each section says which); calibration on the "
                 f"example's {len(calib)} "
                 "training images (the compiler's defaults: per-channel 'mse' ranges for ADC gates and "
                 "fitted units, round-to-nearest ADCs, 16-bit weights). Accuracy "
                 "and agreement are of the compiled integer program (level 1, equal integer for integer "
                 "to the spiking simulators). *fit err* is the largest fitted unit's max error in "
                 "output steps of its channel's K-bit grid. The first section is the agreement at K=8 on "
                 "2000 images (`--test-set heldout2000`); the per-model sections are the K and option "
                 "sweeps (`--test-set shipped500`).", ""]
        for name, path, acc_float, ops, rows, _ in report if a.test_set != "heldout2000" else ():
            sec = [f"## {name} (`{os.path.relpath(path, ROOT)}`)", "",
                   f"{TEST_IMAGES}the first {len(x)} of `{test_file}`.", "",
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
        for name in sorted(sections, key=lambda n: (n != SUMMARY, n != "resnet", n)):
            lines.append(sections[name])
        body = "\n".join(lines).encode()
        atomic_write(a.write, lambda f: f.write(body))
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
