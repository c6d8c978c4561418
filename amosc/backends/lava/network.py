"""Build and run a Lava network from a plain-data *plan* (standard Lava processes only).

This module is deliberately standalone (numpy, scipy and lava-nc public APIs, no
amosc imports): ``amosc export --target lava`` copies it verbatim next to the
plan's parameters, so the exported program runs wherever lava-nc runs.

A plan is a dict with ``processes`` (a list of specs) and ``connections``.
Spec types (all integers are Loihi fixed-point values):

- ``input_plane``: a RingBuffer source spiking bit ``plane`` of each input's code
  at step ``i * interval + plane`` (input i);
- ``clock``: a RingBuffer source (one neuron) spiking at ``i * interval + at``;
- ``lif``: LIFReset(reset_interval=1, du=dv=0): a memoryless threshold unit that
  fires when ``a_in + bias_mant >= vth + 1`` (bias_exp 6 aligns bias with input);
  ``record`` adds a sink that records its spikes, ``probe_v`` a Monitor on v;
- ``synapses``: DelaySparse with mixed-sign 8-bit weights (given doubled, as Lava
  stores them), ``weight_exp`` and one uniform ``delay`` (0..63).

Step t of the amosc IR is Lava time step t + 1; a RingBuffer column t is sent at t + 1.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import scipy.sparse as sp


def source_data(spec: dict, codes: np.ndarray, interval: int, steps: int) -> np.ndarray:
    """The (n, steps) spike matrix of an input_plane or clock source."""
    n_items = codes.shape[0]
    if spec["type"] == "input_plane":
        bits, plane = spec["bits"], spec["plane"]
        flat = codes.reshape(n_items, -1)
        data = np.zeros((flat.shape[1], steps), np.int32)
        for i in range(n_items):
            data[:, i * interval + plane] = (flat[i] >> (bits - 1 - plane)) & 1
        return data
    data = np.zeros((1, steps), np.int32)
    for i in range(n_items):
        data[0, i * interval + spec["at"]] = 1
    return data


def build(plan: dict, codes: np.ndarray, interval: int, steps: int):
    """Instantiate the processes and connections; returns (processes by name, sinks, monitors)."""
    from lava.proc.dense.process import DelayDense  # noqa: F401  (imported for users' reference)
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor
    from lava.proc.sparse.process import DelaySparse
    from lava.utils.weightutils import SignMode

    import warnings
    warnings.filterwarnings("ignore", category=sp.SparseEfficiencyWarning)  # from lava's DelaySparse
    procs, sinks, monitors = {}, {}, {}
    for spec in plan["processes"]:
        kind, name = spec["type"], spec["name"]
        if kind in ("input_plane", "clock"):
            procs[name] = Source(data=source_data(spec, codes, interval, steps))
        elif kind == "lif":
            p = LIFReset(shape=(int(spec["size"]),), vth=int(spec["vth"]),
                         bias_mant=np.asarray(spec["bias_mant"], np.int32), bias_exp=6,
                         du=0, dv=0, reset_interval=1, name=name)
            procs[name] = p
            if spec.get("record"):
                sinks[name] = Sink(shape=(int(spec["size"]),), buffer=steps)
                p.s_out.connect(sinks[name].a_in)
            if spec.get("probe_v"):
                m = Monitor()
                m.probe(p.v, steps)
                monitors[name] = m
        elif kind == "synapses":
            w = sp.csr_matrix((spec["data"], spec["indices"], spec["indptr"]), shape=tuple(spec["shape"]))
            procs[name] = DelaySparse(weights=w, delays=int(spec["delay"]), weight_exp=int(spec["weight_exp"]),
                                      num_weight_bits=8, sign_mode=SignMode.MIXED, name=name)
        else:
            raise ValueError(f"unknown process spec type {kind!r}")
    for src, dst in plan["connections"]:
        a, b = procs[src], procs[dst]
        (a.a_out if hasattr(a, "a_out") else a.s_out).connect(b.s_in if hasattr(b, "s_in") else b.a_in)
    return procs, sinks, monitors


def run(plan: dict, codes: np.ndarray, interval: int = 1):
    """Run the plan on integer input codes (N, *input_shape), one input every
    ``interval`` steps. Returns (readout values (N, classes) int64, spike rasters
    {unit process name: (size, steps) uint8}, steps). The runtime is always stopped."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    n = codes.shape[0]
    steps = (n - 1) * interval + int(plan["latency"])
    procs, sinks, monitors = build(plan, codes, interval, steps)
    anchor = procs[plan["readout"]]
    started = False
    try:
        started = True
        anchor.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        rasters = {k: np.asarray(s.data.get(), np.uint8) for k, s in sinks.items()}
        v = monitors[plan["readout"]].get_data()[plan["readout"]]["v"]
    finally:
        if started:
            anchor.stop()
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
