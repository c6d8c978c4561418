"""``amosc export --target lava``: a self-contained Lava program.

The output directory holds ``network.py`` (builds the standard-process network
with public lava-nc APIs and runs it), ``lava_compat.py`` (the Python 3.11 import
fix), ``params.npz`` (the plan: weights, delays, thresholds; a convolution by its
kernel; no pickle) and a README that says what Loihi 2 hardware would need. It needs numpy, scipy and lava-nc, not amosc.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ...errors import AmoscError
from ...fileio import umask
from . import _compat, loihi, network

README = """# Exported AMOS program ({source})

Standard Lava processes only: RingBuffer sources (input, clock), LIFReset units, GradedVec
accumulators, Sparse and DelaySparse synapses, a Monitor on the readout. {processes} processes
({kinds}), {neurons:,} neurons, {synapses:,} synapses, latency {latency} steps (the IR's
{ir_latency} plus the accumulator and realignment hops, docs/lava.md#loihi).

    pip install numpy scipy "lava-nc==0.10.0"   # on Python 3.11: --no-deps --ignore-requires-python
    python network.py --input x.npy -o logits.npy [--interval 1]

`x.npy` is float (N, {shape}); `logits.npy` is float (N, {classes}), the model's pre-softmax
output. This runs Lava's bit-accurate CPU simulation (`Loihi2SimCfg(select_tag="fixed_pt")`),
which equals amosc's reference simulator spike for spike.{too_big}

## On Loihi 2 hardware (untested here: no hardware, no lava-loihi)

What changes, and what this network asks of the chip:

- **Run configuration.** `network.run_config()` returns `Loihi2SimCfg`; on hardware return
  `Loihi2HwCfg()` from `lava.magma.core.run_configs` instead (it needs Intel's lava-loihi
  for the processes' Loihi models). `network.build(plan, codes, interval, steps,
  record=False)` builds the same graph; the input and clock RingBuffers become host or
  embedded-CPU spike injection, and reading the readout's v through a Monitor is a probe.
- **Partitioning.** A Loihi 2 core holds up to 8192 neurons and a chip 128 cores (1,048,576
  neurons); a process larger than a core must be split over cores (lava-loihi's compiler;
  not checked here). At 8192 neurons per core this network needs at least {cores:,} cores,
  i.e. {chips} chip(s), before synaptic memory (per core, not modeled here) is counted. Largest neuron processes:

{largest}
- **Graded spikes.** Each population's synaptic sum is formed once by a GradedVec (24-bit
  graded spikes, a Loihi 2 feature) and passed down a graded chain to the K unit positions;
  a graded payload must stay within 24 bits (checked: every sum here is within 18 bits).
- **Delays and relays.** Synaptic delays are at most 63 steps (6 bits). Branches that are
  ready early wait in graded DelaySparse hops; a wait beyond 64 steps goes through relay
  neurons (GradedVec identity units), {relays} of them here.
- **Weight exponents.** Each synapse process has one weight exponent (Lava's weight_exp,
  -8..7) and 8-bit mixed-sign mantissas stored doubled (`sign_mode=MIXED`); a projection
  becomes one Sparse per plane shift, so the exponents of its channels and of its source's
  K planes are all exact. Unit thresholds share one vth per population; each unit's own
  threshold and gated bias ride on its enable weight (a multiple of 256) and a held bias in
  [-256, -1] (bias_exp 6, within the 13-bit bias mantissa).
"""


def _readme(program, plan) -> str:
    counts = loihi.process_count(plan)
    neurons = [(s["size"], s["name"], s["type"]) for s in plan["processes"] if s["type"] in ("lif", "graded")]
    total = sum(n for n, _, _ in neurons)
    cores = sum(-(-n // 8192) for n, _, _ in neurons)
    synapses = loihi.synapse_count(plan)
    largest = "\n".join(f"  - `{name}` ({kind}): {n:,} neurons, {-(-n // 8192):,} cores"
                         for n, name, kind in sorted(neurons, reverse=True)[:5])
    too_big = ""
    if synapses > loihi.MAX_SIM_SYNAPSES:
        too_big = (f" With {synapses:,} synapses it is too large to simulate on a typical CPU "
                   "(Lava keeps ~25 bytes per synapse).")
    kinds = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "total")
    return README.format(source=program.provenance.get("source", "?"), processes=counts["total"], kinds=kinds,
                         neurons=total, synapses=synapses, latency=plan["latency"], ir_latency=program.latency,
                         shape=", ".join(map(str, program.input_pop.shape)),
                         classes=program.output_pop.shape[0], too_big=too_big, cores=cores,
                         chips=-(-cores // 128), largest=largest,
                         relays=sum(1 for s in plan["processes"] if "#relay" in s["name"]))


def export_lava(program, out_dir) -> list[str]:
    out_dir = os.fspath(out_dir)
    plan = loihi.plan(program, record=False)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise AmoscError(f"{out_dir}: parent directory {parent} does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise AmoscError(f"{out_dir}: exists and is not a directory")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise AmoscError(f"{out_dir}: exists and is not empty")
    tmp = tempfile.mkdtemp(prefix=".amosc-export-", dir=parent)
    try:
        shutil.copyfile(network.__file__, os.path.join(tmp, "network.py"))
        shutil.copyfile(_compat.__file__, os.path.join(tmp, "lava_compat.py"))
        network.save_plan(plan, os.path.join(tmp, "params.npz"))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_readme(program, plan))
        os.chmod(tmp, 0o777 & ~umask())
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(os.listdir(out_dir))
