"""Build and run a Lava network from a plain-data *plan* (standard Lava processes only).

This module is deliberately standalone (numpy, scipy and lava-nc public APIs, no
amosc imports): ``amosc export --target lava`` copies it verbatim next to the
plan's parameters, so the exported program runs wherever lava-nc runs.

A plan is a dict with ``processes`` (a list of specs), ``connections`` (pairs of
names: spikes or synaptic output from the first into the second; a synapse process may
feed several neuron processes, which then all receive its output) and the timing of its
``populations``. Spec types (all integers are Loihi fixed-point values):

- ``input``: a RingBuffer of ``bits * n`` neurons; row ``k * n + i`` spikes bit k (MSB
  first) of input s's code for element i at step ``s * interval + at``;
- ``clock``: a RingBuffer whose neuron m spikes at ``s * interval + at[m]`` for every input s;
- ``lif``: LIFReset(reset_interval=1, du=dv=0, bias_exp=6): a memoryless threshold unit
  that fires when ``a_in + bias_mant > vth``; ``record`` adds an Extractor that streams
  its spikes to the host, ``probe_v`` a Monitor on v;
- ``graded``: GradedVec(vth=0): sends its summed input as a graded spike in the same step;
- ``synapses``: Sparse (DelaySparse when ``delays`` is given: one delay, 0..63, per stored
  weight) with mixed-sign 8-bit weights given doubled, as Lava stores them, and
  ``weight_exp``; ``graded`` ones carry 24-bit payloads. A projection's plane processes
  instead name its weight matrix M in ``matrices`` (a convolution is stored by its kernel)
  and which source plane each output channel reads (:func:`plane_weights`).

Step t of the plan is Lava time step t + 1; a RingBuffer column t is sent at t + 1, and
every synapse hop takes one step plus its delay.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import scipy.sparse as sp


def source_data(spec: dict, codes: np.ndarray, interval: int, steps: int) -> np.ndarray:
    """The (size, steps) spike matrix of an ``input`` or ``clock`` source."""
    n_items = codes.shape[0]
    cols = np.arange(n_items) * interval
    if spec["type"] == "input":
        bits = int(spec["bits"])
        flat = np.asarray(codes, np.int64).reshape(n_items, -1)
        planes = np.stack([(flat >> (bits - 1 - k)) & 1 for k in range(bits)], 1)  # (N, K, n)
        data = np.zeros((int(spec["size"]), steps), np.int32)
        data[:, cols + int(spec["at"])] = planes.reshape(n_items, -1).T
        return data
    at = np.asarray(spec["at"], np.int64)
    data = np.zeros((at.size, steps), np.int32)
    t = cols[None, :] + at[:, None]
    rows = np.broadcast_to(np.arange(at.size)[:, None], t.shape)
    ok = (t >= 0) & (t < steps)
    data[rows[ok], t[ok]] = 1
    return data


def conv_matrix(weight, in_shape, out_shape, strides, pads, dilations, groups) -> sp.csr_matrix:
    """The (C_out*H_out*W_out, C_in*H*W) integer matrix of an ONNX convolution (cross-
    correlation; pads top, left, bottom, right; (C, H, W) tensors flattened), tap by tap."""
    weight = np.asarray(weight, np.int64)
    (c, h, w), (co, ho, wo) = in_shape, out_shape
    cig, kh, kw = weight.shape[1:]
    (sh, sw), (pt, pl), (dh, dw) = strides, pads[:2], dilations
    base = (np.arange(co) // (co // groups)) * cig
    rows, cols, vals = [], [], []
    for i in range(kh):
        yi = np.arange(ho) * sh - pt + i * dh
        vy = (yi >= 0) & (yi < h)
        for j in range(kw):
            xi = np.arange(wo) * sw - pl + j * dw
            vx = (xi >= 0) & (xi < w)
            p_out = (np.flatnonzero(vy)[:, None] * wo + np.flatnonzero(vx)[None, :]).ravel()
            p_in = (yi[vy][:, None] * w + xi[vx][None, :]).ravel()
            oo, cc = np.nonzero(weight[:, :, i, j])
            rows.append(((oo * ho * wo)[:, None] + p_out[None, :]).ravel())
            cols.append((((base[oo] + cc) * h * w)[:, None] + p_in[None, :]).ravel())
            vals.append(np.repeat(weight[oo, cc, i, j], p_out.size))
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(co * ho * wo, c * h * w)).tocsr()
    m.sum_duplicates()
    return m


def matrix(spec: dict) -> sp.csr_matrix:
    """A projection's integer weight matrix M from the plan's ``matrices`` entry."""
    if spec["kind"] == "conv":
        return conv_matrix(spec["weight"], spec["in_shape"], spec["out_shape"], spec["strides"],
                           spec["pads"], spec["dilations"], int(spec["groups"]))
    m = sp.csr_matrix((np.asarray(spec["data"], np.int64), np.asarray(spec["indices"]),
                       np.asarray(spec["indptr"])), shape=tuple(spec["shape"]))
    m.sum_duplicates()
    return m


def plane_weights(spec: dict, m: sp.csr_matrix) -> sp.csr_matrix:
    """The Lava weights of a plane synapse process: rows of output channel c read source plane
    ``planes[c]`` (none if -1), i.e. columns ``planes[c] * block + col`` of the source's
    realigned spikes, with M's mantissas doubled (sign mode MIXED)."""
    planes = np.asarray(spec["planes"], np.int64)
    per = m.shape[0] // planes.size
    row_plane = np.repeat(planes, per)
    keep_row = row_plane >= 0
    counts = np.diff(m.indptr)
    ent = np.repeat(keep_row, counts)
    indptr = np.concatenate([[0], np.cumsum(np.where(keep_row, counts, 0))])
    indices = m.indices[ent] + np.repeat(row_plane, counts)[ent] * int(spec["block"])
    return sp.csr_matrix((2 * m.data[ent], indices, indptr),
                         shape=(m.shape[0], int(spec["blocks"]) * int(spec["block"])))


def _synapses(spec: dict, matrices: dict, cache: dict):
    from lava.proc.sparse.process import DelaySparse, Sparse
    from lava.utils.weightutils import SignMode
    if "matrix" in spec:
        key = spec["matrix"]
        if key not in cache:
            cache.clear()  # plane processes of one projection come together: keep one matrix
            cache[key] = matrix(matrices[key])
        w = plane_weights(spec, cache[key]).astype(np.int32)
        kw = dict(weight_exp=int(spec["weight_exp"]), num_weight_bits=8, sign_mode=SignMode.MIXED,
                  num_message_bits=0, name=spec["name"])
        return Sparse(weights=w, **kw)
    shape = tuple(int(v) for v in spec["shape"])
    pattern = (np.asarray(spec["indices"]), np.asarray(spec["indptr"]))
    w = sp.csr_matrix((np.asarray(spec["data"], np.int32), *pattern), shape=shape)
    kw = dict(weight_exp=int(spec["weight_exp"]), num_weight_bits=8, sign_mode=SignMode.MIXED,
              num_message_bits=24 if spec.get("graded") else 0, name=spec["name"])
    if spec.get("delays") is None:
        return Sparse(weights=w, **kw)
    d = sp.csr_matrix((np.asarray(spec["delays"], int), *pattern), shape=shape)
    return DelaySparse(weights=w, delays=d, max_delay=int(d.data.max(initial=0)), **kw)


def build(plan: dict, codes: np.ndarray, interval: int, steps: int, record: bool = True, buffer: int = 0):
    """Instantiate the processes and connections; returns (processes by name, extractors of
    the recorded unit processes (each buffering ``buffer`` steps, all of them by default),
    monitors)."""
    import warnings
    from lava.proc.graded.process import GradedVec
    from lava.proc.io.extractor import Extractor
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor

    warnings.filterwarnings("ignore", category=sp.SparseEfficiencyWarning)  # from lava's DelaySparse
    procs, extractors, monitors, cache = {}, {}, {}, {}
    for spec in plan["processes"]:
        kind, name = spec["type"], spec["name"]
        if kind in ("input", "clock"):
            procs[name] = Source(data=source_data(spec, codes, interval, steps))
        elif kind == "lif":
            size = int(spec["size"])
            bias = np.broadcast_to(np.asarray(spec["bias_mant"], np.int32), (size,)).copy()
            p = LIFReset(shape=(size,), vth=int(spec["vth"]), bias_mant=bias, bias_exp=6,
                         du=0, dv=0, reset_interval=1, name=name)
            procs[name] = p
            if record and spec.get("record"):
                extractors[name] = Extractor(shape=(size,), buffer_size=max(int(buffer or steps), 1))
                p.s_out.connect(extractors[name].in_port)
            if spec.get("probe_v"):
                m = Monitor()
                m.probe(p.v, steps)
                monitors[name] = m
        elif kind == "graded":
            procs[name] = GradedVec(shape=(int(spec["size"]),), vth=0)
        elif kind == "synapses":
            procs[name] = _synapses(spec, plan.get("matrices", {}), cache)
        else:
            raise ValueError(f"unknown process spec type {kind!r}")
    for src, dst in plan["connections"]:
        a, b = procs[src], procs[dst]
        (a.a_out if hasattr(a, "a_out") else a.s_out).connect(b.s_in if hasattr(b, "s_in") else b.a_in)
    return procs, extractors, monitors


def run_config():
    """Lava's bit-accurate CPU simulation (the Extractor's model carries no tag). On Loihi
    hardware this is where Loihi2HwCfg goes instead."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel})


class Runner:
    """How :func:`run` drives Lava: ``run(anchor, steps)`` runs that many more steps and
    ``stop(anchor)`` stops the runtime (called once, also after a failure)."""

    def run(self, anchor, steps: int):
        from lava.magma.core.run_conditions import RunSteps
        anchor.run(condition=RunSteps(num_steps=steps), run_cfg=run_config())

    def stop(self, anchor):
        anchor.stop()


def run(plan: dict, codes: np.ndarray, interval: int = 1, record: bool = False, chunk: int = 16,
        runner: Runner = None):
    """Run the plan on integer input codes (N, *input_shape), one input every ``interval``
    steps. Returns (readout values (N, classes) int64, spike rasters {recorded unit process:
    (size, steps) uint8}, empty unless ``record``, steps). The runtime is always stopped;
    recorded spikes are streamed out every ``chunk`` steps."""
    n = codes.shape[0]
    steps = (n - 1) * interval + int(plan["latency"])
    chunk = max(min(int(chunk), steps), 1) if record else steps
    procs, extractors, monitors = build(plan, codes, interval, steps, record=record, buffer=chunk)
    anchor = procs[plan["readout"]]
    runner = runner or Runner()
    cols = {k: [] for k in extractors}
    try:
        done = 0
        while done < steps:
            c = min(chunk, steps - done)
            runner.run(anchor, c)
            for k, ex in extractors.items():
                cols[k] += [np.asarray(ex.receive(), np.uint8) for _ in range(c)]
            done += c
        v = monitors[plan["readout"]].get_data()[plan["readout"]]["v"]
    finally:
        runner.stop(anchor)
    rasters = {k: np.stack(c, axis=1) for k, c in cols.items()}
    v = np.asarray(v, np.int64).reshape(steps, -1)  # (steps, classes), v = synaptic input << 6
    start = int(plan["readout_start"])
    rows = [i * interval + start for i in range(n)]
    return (v[rows] >> 6) + np.asarray(plan["readout_bias"], np.int64), rasters, steps


# ---------------------------------------------------------------------------
# Plans on disk: params.npz holds the arrays and the structure as JSON (no pickle).
# ---------------------------------------------------------------------------

def save_plan(plan: dict, path) -> None:
    arrays = {}

    def strip(v, key):
        if isinstance(v, np.ndarray):
            arrays[key] = v
            return {"@array": key}
        if isinstance(v, dict):
            return {k: strip(x, f"{key}/{k}") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strip(x, f"{key}/{i}") for i, x in enumerate(v)]
        if isinstance(v, np.generic):
            return v.item()
        return v

    meta = strip(plan, "plan")
    arrays["plan.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_plan(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(bytes(f["plan.json"]).decode())

        def fill(v):
            if isinstance(v, dict):
                return f[v["@array"]] if set(v) == {"@array"} else {k: fill(x) for k, x in v.items()}
            if isinstance(v, list):
                return [fill(x) for x in v]
            return v

        return fill(meta)


def encode(plan: dict, x: np.ndarray) -> np.ndarray:
    """Float inputs (N, *shape) -> the integer input codes of the program."""
    inp = plan["input"]
    q = np.round((np.asarray(x, np.float64) - inp["zero_point"]) / inp["scale"])
    return np.clip(q, 0, 2 ** inp["bits"] - 1).astype(np.int64)


def main(argv=None) -> int:
    import argparse
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Run this exported AMOS program on Lava (fixed-point simulation).")
    ap.add_argument("--input", required=True, help="float .npy (N, *input_shape)")
    ap.add_argument("-o", "--output", required=True, help="logits .npy (N, classes)")
    ap.add_argument("--params", default=os.path.join(here, "params.npz"))
    ap.add_argument("--interval", type=int, default=1, help="steps between inputs (pipelining)")
    a = ap.parse_args(argv)
    if sys.version_info >= (3, 11):
        sys.path.insert(0, here)
        import lava_compat  # makes lava-nc 0.10 import on Python 3.11
        lava_compat.install()
    plan = load_plan(a.params)
    x = np.load(a.input, allow_pickle=False)
    if tuple(x.shape[1:]) != tuple(plan["input"]["shape"]):
        print(f"error: {a.input} has shape {x.shape}; expected (N, {plan['input']['shape']})", file=sys.stderr)
        return 2
    y, _, steps = run(plan, encode(plan, x), a.interval)
    np.save(a.output, (y * plan["output_scale"]).astype(np.float32))
    print(f"wrote {a.output}: {y.shape[0]} inputs, {steps} Lava steps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
