"""AMOS against the rate-family conversion codes on the shipped example, written into
docs/codes.md (the table between the markers).

    .venv/bin/python benchmarks/codes.py [--limit 200] [--write docs/codes.md]

Runs `amosc compare` (amosc/codes.py) on the example's model, calibration images and the
first ``--limit`` held-out test images: rate, burst (2 spikes per step), ternary and
augmented spikes at T = 8 .. 256, AMOS at K = 4, 6, 8.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from amosc import codes  # noqa: E402
from amosc.fileio import atomic_write  # noqa: E402

DATA = os.path.join(ROOT, "examples", "fmnist_resnet")
BEGIN, END = "<!-- codes:begin -->", "<!-- codes:end -->"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--write", help="replace the table between the markers of this markdown file")
    args = ap.parse_args(argv)
    calib = np.load(os.path.join(DATA, "calib.npy"))
    x = np.load(os.path.join(DATA, "test_x.npy"))[:args.limit]
    y = np.load(os.path.join(DATA, "test_y.npy"))[:args.limit]
    t0 = time.time()
    rows = codes.compare(os.path.join(DATA, "model.onnx"), calib, x, y, log=print)
    took = time.time() - t0
    table = codes.render(rows)
    block = (f"{BEGIN}\nMeasured by `benchmarks/codes.py --limit {args.limit}` ({len(x)} held-out test images of "
             f"`examples/fmnist_resnet/test_x.npy`, {took:.0f} s on {os.cpu_count()} cores, {platform.machine()}). "
             "Agreement: top-1 agreement with onnxruntime's float model; latency: T plus one step per gate layer for "
             "the rate-family codes, the compiled program's latency for AMOS; spikes: all spikes of one input (a "
             "burst of n spikes or an augmented event of weight n counts n).\n\n" + table + f"\n{END}")
    print(table)
    if args.write:
        text = open(args.write).read()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.write}: markers {BEGIN} ... {END} not found")
        a, b = text.index(BEGIN), text.index(END) + len(END)
        new = text[:a] + block + text[b:]
        atomic_write(args.write, lambda f: f.write(new.encode()))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
