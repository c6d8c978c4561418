"""The onnx package's real-size test graphs through amosc: import, range analysis, lowering.

    .venv/bin/python benchmarks/onnx_light.py [--bits 4] [--calib 8] [--timeout 600] [--only resnet50,...]
                                              [--write docs/onnx-light.md]

Models: ``onnx/backend/test/data/light/light_*.onnx`` from the installed onnx package
(ImageNet-size AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet,
VGG-19, ZFNet-512; opset 9, weights built by ConstantOfShape, so every weight of a tensor
is the same number). Calibration: ``--calib`` uniform random images in [0, 1] (seed 0):
the point is the graph, not the accuracy. Each model is compiled by ``amosc compile`` in
its own process (``--max-neurons`` raised to 2^28: these are large models), under a wall
clock limit; the table reports the outcome (the program's totals, or the one-line
refusal), the wall time and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def light_models() -> list:
    import onnx
    d = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return sorted(glob.glob(os.path.join(d, "light_*.onnx")))


def input_shape(path) -> tuple:
    from amosc.compiler.importer import graph_input, load_model, normalize
    model = normalize(load_model(path)[0], path)
    return tuple(graph_input(model, path)[1])


#: Address-space limit of each compile (a runaway allocation fails in that process instead
#: of waking the machine's OOM killer); the bound the table is checked against is 4 GB RSS.
ADDRESS_LIMIT = 8 * 1024 ** 3


def _limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))


def _run_measured(cmd, timeout, log) -> tuple:
    """Run cmd (output into the file ``log``): (exit status or None on timeout, the
    process's own peak RSS in KiB, from wait4)."""
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_limit_memory)
    end = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_maxrss
        if time.time() > end:
            p.kill()
            _, _, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            return None, ru.ru_maxrss
        time.sleep(0.2)


def run_one(path, bits, n_calib, timeout, tmp) -> dict:
    name = os.path.basename(path)[len("light_"):-len(".onnx")]
    row = {"model": name, "bits": bits}
    try:
        shape = input_shape(path)
    except Exception as exc:  # a refusal at import: the same message the compile would print
        row.update(status="refused", message=" ".join(str(exc).split())[:300], seconds=0.0, rss_mb=0.0)
        return row
    calib = os.path.join(tmp, f"{name}_calib.npy")
    np.save(calib, np.random.default_rng(0).uniform(0, 1, (n_calib, *shape)).astype(np.float32))
    out = os.path.join(tmp, f"{name}.amos")
    cmd = [os.path.join(os.path.dirname(sys.executable), "amosc"), "compile", path, "--calib", calib, "-o", out,
           "--bits", str(bits), "--max-neurons", str(2 ** 28)]
    t0 = time.time()
    rc, rss_kb = _run_measured(cmd, timeout, os.path.join(tmp, f"{name}.log"))
    text = open(os.path.join(tmp, f"{name}.log"), encoding="utf-8", errors="replace").read().strip().splitlines()
    if rc is None:
        status, message = "timeout", f"did not finish in {timeout} s"
    else:
        status = "compiled" if rc == 0 else "refused" if rc == 2 else f"exit {rc}"
        message = next((t for t in text if t.startswith(("wrote", "error:"))), text[-1] if text else "")
    for d in (os.path.dirname(path), tmp):   # no machine paths in the table
        message = message.replace(d + os.sep, "")
    if "; supported ops:" in message:
        message = message.split("; supported ops:")[0] + "; supported ops: (listed)"
    row.update(status=status, message=message[:300], seconds=time.time() - t0, input_shape=list(shape),
               rss_mb=rss_kb / 1024)
    if status == "compiled":
        import amosc
        from amosc.compiler.cost import static_cost
        c = static_cost(amosc.load(out))
        row.update(neurons=c.neurons, synapses=c.synapses, latency=c.latency_steps)
        os.remove(out)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--calib", type=int, default=8, help="random calibration images")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--only", help="comma-separated names (resnet50, vgg19, ...)")
    ap.add_argument("--write", help="write a markdown table here")
    ap.add_argument("--json", help="write the rows as JSON here")
    a = ap.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in light_models():
            name = os.path.basename(path)[len("light_"):-len(".onnx")]
            if only and name not in only:
                continue
            r = run_one(path, a.bits, a.calib, a.timeout, tmp)
            rows.append(r)
            print(f"{name:14s} {r['status']:9s} {r['seconds']:6.1f}s {r['rss_mb']:7.0f} MiB  {r['message']}",
                  flush=True)
    if a.json:
        from amosc.fileio import atomic_write
        body = json.dumps(rows, indent=1).encode()
        atomic_write(a.json, lambda f: f.write(body))
    if a.write:
        from amosc.fileio import atomic_write
        lines = ["# ONNX light test models (generated by benchmarks/onnx_light.py; do not edit)", "",
                 f"The onnx package's `backend/test/data/light` graphs, compiled by `amosc compile --bits {a.bits}` "
                 f"with {a.calib} uniform random calibration images, one process each, limit {a.timeout} s. "
                 "Their weights are built by ConstantOfShape (every weight of a tensor equal), so only the "
                 "graph is meaningful, not the accuracy. Issue 11's bound: every model compiles within "
                 "600 s and 4 GB, or (only the LRN models: alexnet, zfnet512, inception_v1) is refused "
                 "with one line naming LRN.", "",
                 "| model | input | outcome | neurons | latency (steps) | time (s) | peak RSS (MiB) | message |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            shape = "×".join(map(str, r.get("input_shape", []))) or "-"
            lines.append(f"| {r['model']} | {shape} | {r['status']} | {r.get('neurons', '-')} | "
                         f"{r.get('latency', '-')} | {r['seconds']:.1f} | {r['rss_mb']:.0f} | "
                         f"{r['message'].replace('|', '/')} |")
        body = ("\n".join(lines) + "\n").encode()
        atomic_write(a.write, lambda f: f.write(body))


if __name__ == "__main__":
    main()
