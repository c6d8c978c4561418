"""One chip's neurons: compile a fixture within ``--neuron-budget`` with each layer's K chosen on
validation images (``precision.fit_budget``), then measure top-1 agreement with onnxruntime on
the 2000 held-out test images (examples/fmnist_test2000.npz), beside the uniform-K program of
the same size class.

    .venv/bin/python benchmarks/heldout.py --out /tmp/fmnist_val --count 500      # test images 5000..5499
    .venv/bin/python benchmarks/chip_budget.py --val /tmp/fmnist_val/test_x.npy [--model efficientnet]
        [--bits 6] [--budget 1000000] [--option fitted_units=10 ...] [--write docs/optimizer.md]

The validation images (agreement only, no labels) are disjoint from the 2000 test images the
result is measured on. Defaults: the EfficientNet fixture at --bits 6 with 10-neuron fitted
units, fit tolerance 0.5, the ReLU split and gated products (docs/onnx-support.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from amosc.compiler.cost import static_cost  # noqa: E402
from amosc.compiler.pipeline import compile_model  # noqa: E402
from amosc.compiler.quantize import Options  # noqa: E402
from architectures import DATA, _option, float_logits, models, run_streamed, test_set  # noqa: E402
from docblock import write_block  # noqa: E402

BEGIN, END = "<!-- chip_budget:begin -->", "<!-- chip_budget:end -->"
DEFAULT_OPTIONS = ("fitted_units=10", "fit_tolerance=0.5", "relu_split=True", "product=gated")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, help="validation inputs (.npy), e.g. from benchmarks/heldout.py")
    ap.add_argument("--model", default="efficientnet")
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--budget", type=int, default=1_000_000)
    ap.add_argument("--option", action="append", default=None, metavar="OPTION=VALUE",
                    help=f"compile options (default: {' '.join(DEFAULT_OPTIONS)})")
    ap.add_argument("--write", default=None, help="write the table into this docs page")
    a = ap.parse_args(argv)
    path = dict(models())[a.model]
    options = dict(_option(o) for o in (a.option or DEFAULT_OPTIONS))
    calib = np.load(os.path.join(DATA, "calib.npy"))
    xv = np.load(a.val).astype(np.float32)
    x, y = test_set("heldout2000")
    ref = float_logits(path, x)[0].reshape(len(x), -1)
    lines = []
    t0 = time.time()
    prog = compile_model(path, calib, Options(bits=a.bits, **options), neuron_budget=a.budget,
                         validation=(xv, None), log=lambda m: (print(m, flush=True), lines.append(m)))
    took = time.time() - t0
    report = lines[-1]
    base_bits = int(report.split("base K=")[1].split()[0])
    rows = []
    for name, p, secs in (("uniform", compile_model(path, calib, Options(bits=base_bits, **options)), None),
                          ("chosen", prog, took)):
        logits, spikes = run_streamed(p, x)
        pred = logits.argmax(1)
        rows.append((name, p, secs, float((pred == ref.argmax(1)).mean()), float((pred == y).mean()), spikes / len(x)))
        print(f"{name}: {static_cost(p).neurons} neurons, agreement {100 * rows[-1][3]:.2f}%", flush=True)
    opt_text = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in options.items())
    table = [f"Measured by `benchmarks/chip_budget.py --model {a.model} --bits {a.bits} --budget {a.budget}` "
             f"({len(xv)} validation images from `--val`, disjoint from the {len(x)} held-out test images the "
             f"agreement is measured on; options `{opt_text}`; compile {took / 60:.0f} min on "
             f"{os.cpu_count()} cores, the search included).", "",
             "| program | neurons | latency (steps) | top-1 agreement | accuracy | spikes per input |",
             "|---|---|---|---|---|---|"]
    for name, p, _, agree, acc, spikes in rows:
        label = f"uniform K={base_bits}" if name == "uniform" else f"per-layer K <= {a.bits} within {a.budget}"
        table.append(f"| {label} | {static_cost(p).neurons} | {p.latency} | {100 * agree:.2f}% | "
                     f"{100 * acc:.2f}% | {spikes:.0f} |")
    table += ["", "The search's report (validation images):", "", "```", *report.splitlines(), "```"]
    print("\n".join(table))
    if a.write:
        write_block(a.write, BEGIN, END, table)
        print(f"wrote {a.write}")


if __name__ == "__main__":
    main()
