"""The Lava backend: run a program on Lava's bit-accurate Loihi simulator.

Two lowering styles (docs/lava.md):

- ``fast``: one custom Lava process per population and per projection
  (:mod:`.procs.amos`), fixed-point models that implement docs/ir.md's dynamics
  themselves (integer sparse weight matrices, delay-line ring buffers, gated units),
  independently of amosc's simulators: they share only the program's data; quick on CPU.
- ``loihi``: standard Lava processes only (RingBuffer, LIFReset, GradedVec, Sparse,
  DelaySparse, Monitor), the form that maps onto Loihi; a handful of processes per
  population and one per projection plane shift (:mod:`.loihi`).

Lava always runs one lane: inputs enter every ``interval`` steps (default 1, the
pipelined throughput of memoryless AMOS units).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError
from ..base import Backend, RunResult
from ._compat import install, lava_problem

STYLES = ("fast", "loihi")
STOP_TIMEOUT = 30.0


def _stop(anchor, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the Lava runtime; if stop() hangs (as it can after a failed run), kill
    Lava's child processes so nothing outlives the call."""
    done = threading.Event()
    err = []

    def target():
        try:
            anchor.stop()
        except Exception as exc:  # pragma: no cover - depends on lava internals
            err.append(exc)
        finally:
            done.set()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    if not done.wait(timeout):
        for child in multiprocessing.active_children():
            child.kill()
        raise BackendError(f"Lava did not stop within {timeout:.0f} s; its processes were killed")


def run_guarded(anchor, steps: int, run_cfg=None):
    """Run ``steps`` steps and always stop; a failing process model becomes a BackendError."""
    install()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    run_cfg = run_cfg or Loihi2SimCfg(select_tag="fixed_pt")
    failure = None
    try:
        anchor.run(condition=RunSteps(num_steps=steps), run_cfg=run_cfg)
    except Exception as exc:
        failure = exc
    if failure is not None:
        try:
            _stop(anchor, timeout=10.0)
        except BackendError:
            pass
        raise BackendError(f"Lava run failed: {type(failure).__name__}: {failure}") from failure
    return lambda: _stop(anchor)


@dataclass
class LavaGraph:
    """What :func:`to_lava` returns: the processes, the input source(s), the output
    process, and ``stop()``, which always stops the runtime (also as a context manager)."""

    processes: dict
    inputs: list
    output: object
    steps: int
    style: str
    _stopper: object = None

    def run(self, run_cfg=None):
        self._stopper = run_guarded(self.output, self.steps, run_cfg)

    def stop(self):
        if self._stopper is not None:
            stopper, self._stopper = self._stopper, None
            stopper()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def input_spike_data(codes: np.ndarray, bits: int, start: int, interval: int, steps: int) -> np.ndarray:
    """The input encoder's spikes as a RingBuffer's (K * n, steps) matrix: row k * n + i is
    unit k of neuron i, spiking bit k (MSB first) of input s's code at step s * interval +
    start + k (column t is sent at Lava time step t + 1)."""
    flat = codes.reshape(codes.shape[0], -1)
    n = flat.shape[1]
    data = np.zeros((bits * n, steps), np.int32)
    for s in range(flat.shape[0]):
        for k in range(bits):
            col = s * interval + start + k
            if col < steps:
                data[k * n:(k + 1) * n, col] = (flat[s] >> (bits - 1 - k)) & 1
    return data


def to_lava(program, x: np.ndarray, style: str = "fast", interval: int = 1, dump_dir=None) -> LavaGraph:
    """Build the Lava process graph of ``program`` fed with inputs x (N, *shape)."""
    install()
    why = lava_problem()
    if why:
        raise BackendError(why)
    from ...ir.semantics import encode_input
    codes = encode_input(program.input_pop, x)
    interval = max(int(interval), 1)
    steps = (codes.shape[0] - 1) * interval + program.latency
    if style == "loihi":  # its own schedule (loihi.schedule): a few steps more per layer
        from . import loihi, network
        p = loihi.plan(program)
        loihi.check_simulable(p)
        steps = (codes.shape[0] - 1) * interval + p["latency"]
        procs, extractors, monitors = network.build(p, codes, interval, steps)
        procs.update({f"extractor:{k}": v for k, v in extractors.items()})
        procs.update({f"monitor:{k}": v for k, v in monitors.items()})
        return _LoihiGraph(procs, [procs[program.input]], procs[program.output], steps, style)
    if style != "fast":
        raise BackendError(f"unknown Lava style {style!r}; choose one of {STYLES}")
    from lava.proc.io.source import RingBuffer
    from .procs.amos import AmosSynapses, AmosUnits
    inp = program.input_pop
    procs = {inp.name: RingBuffer(data=input_spike_data(codes, inp.bits, inp.start, interval, steps))}
    dump_dir = dump_dir or tempfile.mkdtemp(prefix="amosc-lava-")
    for i, pop in enumerate(program.populations[1:]):
        procs[pop.name] = AmosUnits(pop=pop, n_items=codes.shape[0], interval=interval,
                                    dump=os.path.join(dump_dir, f"{i}.npz"), name=pop.name)
    for proj in program.projections:
        s = AmosSynapses(proj=proj, src=program.pop(proj.source), tgt=program.pop(proj.target), name=proj.name)
        procs[proj.name] = s
        procs[proj.source].s_out.connect(s.s_in)
        s.a_out.connect(procs[proj.target].a_in)
    g = LavaGraph(procs, [procs[inp.name]], procs[program.output], steps, style)
    g.dump_dir = dump_dir
    return g


class LavaBackend(Backend):
    name = "lava"
    style = "fast"
    description = ("Lava 0.10 bit-accurate Loihi simulator, one custom fixed-point process per population "
                   "and projection ('fast' style: an independent implementation of the IR's dynamics)")

    def available(self):
        return lava_problem()

    def run(self, program, x, *, record=False, interval=0, lanes=None) -> RunResult:
        from ...ir.semantics import decode, encode_input, spike_counts
        interval = max(int(interval), 1)
        n = x.shape[0]
        if self.style == "loihi":
            return _run_loihi(program, x, interval, record)
        g = to_lava(program, x, "fast", interval)
        try:
            with g:
                g.run()
            results = {}
            for i, pop in enumerate(program.populations[1:]):
                path = os.path.join(g.dump_dir, f"{i}.npz")
                if not os.path.exists(path):
                    raise BackendError(f"Lava process for {pop.name!r} produced no results")
                with np.load(path, allow_pickle=False) as f:
                    results[pop.name] = {k: f[k] for k in f.files}
        finally:
            shutil.rmtree(g.dump_dir, ignore_errors=True)
        out = results[program.output]["output"]
        rasters = {k: v["raster"] for k, v in results.items() if "raster" in v}
        spikes = {k: r.reshape(n, -1).sum(1).astype(np.int64) for k, r in rasters.items()}
        codes = encode_input(program.input_pop, x)
        spikes = {program.input: spike_counts(codes, program.input_pop.bits), **spikes}
        spurious = sum(int(v["spurious"]) for v in results.values() if "spurious" in v)
        return RunResult(out, decode(program.output_pop, out), spikes, rasters if record else {},
                         latency=program.latency, steps=g.steps, interval=interval,
                         extra={"spurious_spikes": spurious, "style": "fast"})


class _LoihiGraph(LavaGraph):
    def run(self, run_cfg=None):
        from .network import run_config  # the Extractor's model carries no fixed_pt tag
        super().run(run_cfg or run_config())


class _Guarded:
    """network.Runner with this backend's hygiene: a failing run is a BackendError and the
    runtime is stopped once, with a timeout."""

    def __init__(self):
        self.stopped = False

    def run(self, anchor, steps):
        from .network import run_config
        try:
            run_guarded(anchor, steps, run_config())
        except BackendError:
            self.stopped = True  # run_guarded stopped it
            raise

    def stop(self, anchor):
        if not self.stopped:
            self.stopped = True
            _stop(anchor)


def _run_loihi(program, x, interval, record) -> RunResult:
    install()
    why = lava_problem()
    if why:
        raise BackendError(why)
    from ...ir.semantics import encode_input
    from . import loihi, network
    p = loihi.plan(program, record=record)
    loihi.check_simulable(p)
    codes = encode_input(program.input_pop, x)
    y, rasters, steps = network.run(p, codes, interval, record=record, runner=_Guarded())
    return loihi.result_from_lava(program, p, codes, interval, y, rasters, steps, record)


class LavaLoihiBackend(LavaBackend):
    name = "lava-loihi"
    style = "loihi"
    description = ("Lava 0.10 bit-accurate Loihi simulator, standard processes only "
                   "(LIFReset, GradedVec, Sparse, DelaySparse, RingBuffer; 'loihi' style)")
