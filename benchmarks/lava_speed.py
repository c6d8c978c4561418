"""Speed of the Lava 'loihi' style next to the reference simulator, on the same program.

    .venv/bin/python benchmarks/lava_speed.py                 # the example (K=8) and mobilenet, 8 images
    .venv/bin/python benchmarks/lava_speed.py --write-docs    # also replace the table in docs/lava.md

For each program: the plan's processes and synapses, the time to plan and to build the Lava
processes, Lava's first chunk (its compiler and the processes' start, plus 16 steps) and the
steady steps/s after it, the reference's steps/s on the same pipelined schedule (one lane,
a new input every step), their ratio, and whether every spike and readout integer agreed.
Not part of CI: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import amosc  # noqa: E402
from amosc.backends.lava import _Guarded, loihi, network  # noqa: E402
from amosc.backends.lava._compat import install  # noqa: E402
from amosc.backends.reference import simulate  # noqa: E402
from amosc.ir.semantics import encode_input  # noqa: E402
from amosc.validate import compare_spikes  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "fmnist_resnet")
PROGRAMS = {"example": os.path.join(EXAMPLE, "model.onnx"),
            "mobilenet": os.path.join(ROOT, "examples", "fixtures", "mobilenet.onnx"),
            "relu_maxpool": os.path.join(ROOT, "examples", "fixtures", "relu_maxpool.onnx")}
BEGIN, END = "<!-- lava_speed:begin -->", "<!-- lava_speed:end -->"


class Timed(_Guarded):
    """The backend's guarded runner, timing each chunk."""

    def __init__(self):
        super().__init__()
        self.chunks = []

    def run(self, anchor, steps):
        t = time.perf_counter()
        super().run(anchor, steps)
        self.chunks.append((steps, time.perf_counter() - t))


def measure(name: str, bits: int, n: int) -> dict:
    calib = np.load(os.path.join(EXAMPLE, "calib.npy"))
    x = np.load(os.path.join(EXAMPLE, "test_x.npy"))[:n]
    program = amosc.compile(PROGRAMS[name], calib, bits=bits, maxpool="tree")
    t = time.perf_counter()
    p = loihi.plan(program)
    t_plan = time.perf_counter() - t
    codes = encode_input(program.input_pop, x)
    runner = Timed()
    t = time.perf_counter()
    y, rasters, steps = network.run(p, codes, 1, record=True, runner=runner)
    t_lava = time.perf_counter() - t
    res = loihi.result_from_lava(program, p, codes, 1, y, rasters, steps, True)
    t = time.perf_counter()
    ref = simulate(program, x, record=True, interval=1, lanes=1)
    t_ref = time.perf_counter() - t
    rep = compare_spikes(program, res, ref, "lava-loihi")
    first_steps, first_s = runner.chunks[0]
    rest_steps = sum(s for s, _ in runner.chunks[1:])
    rest_s = sum(d for _, d in runner.chunks[1:])
    lava_sps = rest_steps / rest_s if rest_s else first_steps / first_s
    ref_sps = ref.steps / t_ref
    return {"program": f"{name} K={bits}", "images": n, "processes": loihi.process_count(p)["total"],
            "synapses": loihi.synapse_count(p), "plan_s": t_plan, "lava_s": t_lava, "first_s": first_s,
            "steps": steps, "lava_sps": lava_sps, "ref_steps": ref.steps, "ref_sps": ref_sps,
            "ratio": ref_sps / lava_sps, "equal": rep.equal}


def table(rows) -> str:
    head = ("| program | images | processes | synapses | plan | Lava run (all) | Lava first chunk | Lava steps/s "
            "| reference steps/s | reference / Lava | spikes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['program']} | {r['images']} | {r['processes']} | {r['synapses'] / 1e6:.1f}M | {r['plan_s']:.1f} s "
        f"| {r['lava_s']:.0f} s ({r['steps']} steps) | {r['first_s']:.0f} s | {r['lava_sps']:.2f} "
        f"| {r['ref_sps']:.0f} | {r['ratio']:.0f}x | {'equal' if r['equal'] else 'DIFFER'} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", action="append", metavar="NAME:K",
                    help=f"program and bits (default example:8, mobilenet:8); names: {', '.join(PROGRAMS)}")
    ap.add_argument("-n", "--images", type=int, default=8)
    ap.add_argument("--write-docs", action="store_true", help="replace the table in docs/lava.md")
    a = ap.parse_args(argv)
    install()
    rows = []
    for item in a.program or ["example:8", "mobilenet:8"]:
        name, bits = item.split(":")
        r = measure(name, int(bits), a.images)
        print(f"{r['program']}: {r['processes']} processes, Lava {r['lava_sps']:.2f} steps/s, reference "
              f"{r['ref_sps']:.0f} steps/s ({r['ratio']:.0f}x), spikes {'equal' if r['equal'] else 'DIFFER'}",
              flush=True)
        rows.append(r)
    out = table(rows)
    print(out)
    if a.write_docs:
        path = os.path.join(ROOT, "docs", "lava.md")
        text = open(path).read()
        block = f"{BEGIN}\n{out}\n{END}"
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote the table into {path}")
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
