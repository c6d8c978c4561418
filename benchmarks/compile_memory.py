"""Peak memory and time of compiling every fixture (issue 11: <= 2 GB at K = 8), each in a
fresh process, written into docs/speed.md (the table between the markers).

    .venv/bin/python benchmarks/compile_memory.py [--bits 8] [--only NAME,...] [--write docs/speed.md]

Each compile runs `amosc.compile` with the compiler's defaults on the example's 512
calibration images in its own Python process, which reports its peak resident set size
(``resource.getrusage``: the whole process, imports included) and the compile's wall time.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from amosc.fileio import atomic_write  # noqa: E402

BEGIN, END = "<!-- compile_memory:begin -->", "<!-- compile_memory:end -->"
LIMIT_MIB = 2048

CHILD = r"""
import json, resource, sys, time
import numpy as np
import amosc
from amosc.compiler.cost import static_cost
calib = np.load(sys.argv[3])
t = time.time()
p = amosc.compile(sys.argv[1], calib, bits=int(sys.argv[2]))
took = time.time() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
print(json.dumps({"seconds": took, "peak_mib": rss, "neurons": static_cost(p).neurons, "latency": p.latency}))
"""


def models() -> dict:
    out = {"resnet": os.path.join(ROOT, "examples", "fmnist_resnet", "model.onnx")}
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "fixtures", "*.onnx"))):
        out[os.path.splitext(os.path.basename(path))[0]] = path
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--write", help="replace the table between the markers of this markdown file")
    args = ap.parse_args(argv)
    calib = os.path.join(ROOT, "examples", "fmnist_resnet", "calib.npy")
    todo = models()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    rows = []
    for name, path in todo.items():
        res = subprocess.run([sys.executable, "-c", CHILD, path, str(args.bits), calib], capture_output=True,
                             text=True, env={**os.environ, "AMOSC_PROGRESS": "0"})
        if res.returncode:
            raise SystemExit(f"{name}: compile failed:\n{res.stderr[-2000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append((name, got))
        print(f"{name}: {got['peak_mib']:.0f} MiB, {got['seconds']:.1f} s, {got['neurons']} neurons", flush=True)
    lines = [f"| model | K | neurons | latency (steps) | compile (s) | peak RSS (MiB) | <= {LIMIT_MIB} MiB |",
             "|---|---|---|---|---|---|---|"]
    for name, g in rows:
        lines.append(f"| {name} | {args.bits} | {g['neurons']} | {g['latency']} | {g['seconds']:.1f} | "
                     f"{g['peak_mib']:.0f} | {'yes' if g['peak_mib'] <= LIMIT_MIB else 'NO'} |")
    block = (f"{BEGIN}\nMeasured by `benchmarks/compile_memory.py --bits {args.bits}` ({os.cpu_count()} cores, "
             f"{platform.machine()}): one fresh process per model, `amosc.compile` with the defaults on the "
             "example's 512 calibration images; peak RSS of the whole process (Python and imports included).\n\n"
             + "\n".join(lines) + f"\n{END}")
    print("\n".join(lines))
    if args.write:
        text = open(args.write).read()
        if BEGIN in text and END in text:
            a, b = text.index(BEGIN), text.index(END) + len(END)
            new = text[:a] + block + text[b:]
        else:
            new = text.rstrip("\n") + "\n\n## Compile memory (issue 11: at most 2 GB per fixture at K = 8)\n\n" + block + "\n"
        atomic_write(args.write, lambda f: f.write(new.encode()))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
