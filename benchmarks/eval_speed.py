"""Throughput of the integer evaluators next to onnxruntime on the float model.

    .venv/bin/python benchmarks/eval_speed.py [--bits 8] [--n 256] [--batch 64] [--write docs/speed.md]

For every model of benchmarks/architectures.py (the ResNet example and the fixtures),
compiled once at K bits (cached as ``.amos`` under ``--cache``): images per second of

- onnxruntime on the float model (CPU provider, 2 intra-op threads, batches of
  ``--batch``; a model whose ONNX input has a fixed batch of 1 gets a symbolic batch axis),
- the level-1 integer evaluation (``amosc.ir.semantics.evaluate``) on the same batches,
- the time-stepped reference simulator (``amosc.backends.reference.simulate``) with one
  lane per input of a batch,

all in one run on the same images, and the ratios level 1 / onnxruntime (target >= 0.05)
and reference / level 1 (target >= 1/3). It checks that the reference's readout integers
equal level 1's. Peak RSS growth is the largest resident set seen (sampled every 5 ms)
minus the resident set before the phase. Not part of CI: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import amosc  # noqa: E402
from amosc.backends.reference import simulate  # noqa: E402
from amosc.errors import AmoscError  # noqa: E402
from amosc.ir.semantics import evaluate  # noqa: E402
from amosc.ir.text import unit_count  # noqa: E402
from architectures import DATA, models  # noqa: E402

#: Targets of issue 11 (item 6).
LEVEL1_VS_ORT, REFERENCE_VS_LEVEL1 = 0.05, 1 / 3


class PeakRss:
    """Largest resident set (bytes) seen while the block runs, minus the one before it."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.growth = self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ort_session(path: str):
    """(session, input name, batch): onnxruntime on the float model with 2 threads; a fixed
    batch axis of the graph's input and outputs is made symbolic when the graph allows it."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    init = {i.name for i in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in init][0]
    fixed = inp.type.tensor_type.shape.dim[0].HasField("dim_value")
    if fixed:
        for v in (inp, *model.graph.output):
            v.type.tensor_type.shape.dim[0].dim_param = "N"
        del model.graph.value_info[:]
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    try:
        shape = [2] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
        sess.run(None, {inp.name: np.zeros(shape, np.float32)})
        return sess, inp.name, None
    except Exception:  # a reshape pins the batch: run it one image at a time
        sess = ort.InferenceSession(onnx.load(path).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        return sess, inp.name, 1


def program_for(name: str, path: str, calib, bits: int, cache: str):
    """The compiled program, from the cache when its source digest matches."""
    from amosc.compiler.importer import load_model
    digest = load_model(path)[1]
    file = os.path.join(cache, f"{name}_k{bits}.amos")
    if os.path.exists(file):
        program = amosc.load(file)
        if program.provenance.get("sha256") == digest:
            return program
    program = amosc.compile(path, calib, bits=bits)
    program.save(file)
    return program


def timed(fn, x, batch: int, repeat: int = 1):
    """(images per second, outputs) of fn over x in batches; the best of ``repeat`` runs
    after one warm-up batch."""
    fn(x[:batch])
    best, out = None, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = [fn(x[i:i + batch]) for i in range(0, len(x), batch)]
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return len(x) / best, out


def measure(name, path, calib, x, bits, batch, cache, ref_n):
    program = program_for(name, path, calib, bits, cache)
    sess, inp, fixed = ort_session(path)
    ort_batch = fixed or batch
    xf = x.astype(np.float32)
    with PeakRss() as m_ort:
        ort_ips, _ = timed(lambda b: sess.run(None, {inp: b}), xf, ort_batch, repeat=3)
    with PeakRss() as m_l1:
        l1_ips, vals = timed(lambda b: evaluate(program, b)[program.output], x, batch)
    with PeakRss() as m_ref:
        ref_ips, outs = timed(lambda b: simulate(program, b, lanes=batch).output, x[:ref_n], batch)
    equal = bool(np.array_equal(np.concatenate(outs), np.concatenate(vals)[:ref_n]))
    return dict(model=name, neurons=sum(unit_count(p) for p in program.populations if p.name != program.output),
                ort_batch=ort_batch, ort=ort_ips, level1=l1_ips, reference=ref_ips, equal=equal,
                rss_ort=m_ort.growth, rss_level1=m_l1.growth, rss_reference=m_ref.growth)


def table(rows, bits, n, ref_n, batch) -> list:
    mib = 1 << 20
    lines = [f"Measured by `benchmarks/eval_speed.py --bits {bits} --n {n} --reference-n {ref_n} "
             f"--batch {batch}` in one run on {os.cpu_count()} cores ({platform.processor() or platform.machine()}, "
             f"numpy {np.__version__}): images per second. onnxruntime runs the float model with "
             "2 intra-op threads; level 1 is `semantics.evaluate`, the reference is the time-stepped "
             "simulator with one lane per image of a batch. *RSS* is the peak resident-set growth "
             "of the phase. Targets: level 1 / onnxruntime >= "
             f"{LEVEL1_VS_ORT:g}, reference / level 1 >= 1/3.", "",
             "| model | neurons | onnxruntime (img/s) | level 1 (img/s) | reference (img/s) "
             "| level 1 / ort | reference / level 1 | RSS ort / level 1 / reference (MiB) | readouts equal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | - | - | refused: {r['refused']} |")
            continue
        a, b = r["level1"] / r["ort"], r["reference"] / r["level1"]
        ok_a = "" if a >= LEVEL1_VS_ORT else " (short)"
        ok_b = "" if b >= REFERENCE_VS_LEVEL1 else " (short)"
        note = "" if r["ort_batch"] == batch else f" (batch {r['ort_batch']})"
        lines.append(f"| {r['model']} | {r['neurons']} | {r['ort']:.0f}{note} | {r['level1']:.1f} | "
                     f"{r['reference']:.1f} | {a:.3f}{ok_a} | {b:.2f}{ok_b} | "
                     f"{r['rss_ort'] / mib:.0f} / {r['rss_level1'] / mib:.0f} / {r['rss_reference'] / mib:.0f} | "
                     f"{'yes' if r['equal'] else 'NO'} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--n", type=int, default=256, help="test images for onnxruntime and level 1")
    ap.add_argument("--reference-n", type=int, default=None, help="test images for the reference (default --n)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "amosc-eval-speed"),
                    help="directory for the compiled programs")
    ap.add_argument("--write", help="write the markdown table to this file (between its markers)")
    a = ap.parse_args(argv)
    os.makedirs(a.cache, exist_ok=True)
    calib = np.load(os.path.join(DATA, "calib.npy"))
    x = np.load(os.path.join(DATA, "test_x.npy"))[:a.n].astype(np.float64)
    ref_n = min(a.reference_n or a.n, len(x))
    rows = []
    for name, path in models():
        if a.only and name not in a.only.split(","):
            continue
        try:
            r = measure(name, path, calib, x, a.bits, a.batch, a.cache, ref_n)
        except AmoscError as exc:   # a refusal is a row of the table, not the end of the run
            rows.append(dict(model=name, refused=" ".join(str(exc).split()).replace("|", "/")))
            print(f"{name:13s} refused: {exc}", flush=True)
            continue
        rows.append(r)
        print(f"{name:13s} ort {r['ort']:8.0f}/s  level1 {r['level1']:7.1f}/s  reference {r['reference']:7.1f}/s  "
              f"level1/ort {r['level1'] / r['ort']:.3f}  reference/level1 {r['reference'] / r['level1']:.2f}  "
              f"RSS +{r['rss_level1'] >> 20} / +{r['rss_reference'] >> 20} MiB  equal {r['equal']}", flush=True)
    if a.write:
        write(a.write, table(rows, a.bits, len(x), ref_n, a.batch))
        print(f"wrote {a.write}")


BEGIN, END = "<!-- eval_speed:begin -->", "<!-- eval_speed:end -->"


def write(path, lines):
    """Replace the text between BEGIN and END in ``path`` (or append them with the table)."""
    from docblock import write_block
    write_block(path, BEGIN, END, lines)


if __name__ == "__main__":
    main()
