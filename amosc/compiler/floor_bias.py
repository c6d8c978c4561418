"""The floor-bias pass: compensate, in every neuron's bias, what the plane floors drop on average.

Every source plane whose weight ``d_k * 2^e`` is not an integer reaches its target as
``floor(d_k * (M @ z_k) * 2^e)`` (docs/ir.md, ``plane_input``: Lava's Dense shifts the whole
sum right). Each such floor drops a fraction in [0, 1) accumulator units, always downwards,
so a gate fed by P inexact planes reads on average about P/2 units less than the real-valued
sum the lowering assumed. At ``theta`` = 64 units per output step and a few planes that is a
small fraction of a step; a fitted unit whose wide fan-in leaves it a small ``theta`` (the
Inception fixture's Tanh segments: theta 3, ~70 inexact planes) reads ten and more steps
low, and the next layer sums that bias over its whole receptive field.

``correct_floor_bias`` measures the dropped fractions on calibration inputs with the
level-1 semantics (its evaluation loop, with a hook per population), population by population in topological order (every earlier
population already corrected, so a population is corrected for the codes it will really
receive), and adds to each gate's and the readout's bias, per output channel, the rounded
mean fraction over the inputs and positions (per neuron would fit the calibration images'
noise; the border neurons of a padded conv drop a little less, which a per-channel mean
leaves). This is bias correction in the sense of quantization practice (Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction", §4.2) applied to
the floors instead of the weights. The program stays integer and bit-exact between backends:
only constants change, the range proof is re-checked for every corrected population.

Measured: the Inception fixture at K = 8, logits error (rms, 100 held-out images, against
onnxruntime) 0.242 -> 0.047 with 32 calibration images (rounding every plane instead of
flooring it, a semantics Lava's Dense has no way to express, gives 0.052; K = 9 without the
correction 0.083).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import IRError, RangeError
from ..ir.nodes import BIAS_LIMIT, Program
from ..ir.semantics import EVAL_MEMORY, eval_chunk, evaluate, join
from ..ir.verify import check_ranges

#: Calibration inputs the pass measures on by default (``--bias-correction``).
DEFAULT_IMAGES = 32
#: Stored synapses times inputs the pass evaluates at most (level 1 runs about 10^9 of them a
#: second on one core): an ImageNet-size program (10^10 - 10^11 synapses) is measured on one to a
#: few inputs, whose 56x56 - 224x224 positions per channel make a steady mean already.
WORK_BUDGET = 3 * 10**10


@dataclass
class FloorBiasReport:
    """What :func:`correct_floor_bias` did: ``images`` measured, and per corrected population
    the mean correction over its channels and the largest (accumulator units)."""
    images: int = 0
    corrections: dict = field(default_factory=dict)   # population -> (mean, max) units
    skipped: dict = field(default_factory=dict)       # population -> why its bias was kept

    def render(self) -> str:
        lines = [f"floor-bias correction on {self.images} calibration inputs:"]
        for name, (mean, top) in self.corrections.items():
            lines.append(f"  {name}: +{mean:.1f} units per channel on average (largest {top})")
        for name, why in self.skipped.items():
            lines.append(f"  {name}: kept ({why})")
        return "\n".join(lines)


def correct_floor_bias(program: Program, x: np.ndarray, images: int = DEFAULT_IMAGES):
    """(program with floor-compensated biases, :class:`FloorBiasReport`). ``x``: float inputs
    (N, *input_shape); the first ``images`` of them are used, fewer (at least one) when the
    program's level-1 working set for that many exceeds a quarter of
    :func:`~amosc.ir.semantics.eval_chunk`'s memory target or its stored synapses times the
    inputs exceed :data:`WORK_BUDGET`; the program's options record how many. ``images`` = 0
    returns the program unchanged."""
    report = FloorBiasReport()
    if program.options.get("bias_correction"):
        raise IRError("correct_floor_bias: the program's biases are corrected already (a second "
                      "correction would add the floors' mean again)")
    if int(images) <= 0 or not len(x):
        return program, report
    synapses = sum(pr.synapses for pr in program.projections)
    # a quarter of level 1's memory target: the pass also holds the dropped fractions (float64)
    n = max(1, min(int(images), len(x), eval_chunk(program, EVAL_MEMORY // 4), WORK_BUDGET // max(synapses, 1)))
    x = x[:n]
    report.images = n
    pops = list(program.populations)
    index = {p.name: i for i, p in enumerate(pops)}

    def adjust(pop, a, dropped):
        if not dropped:
            return pop
        lost = dropped[0]
        for more in dropped[1:]:
            lost += more
        # the mean of what the floors dropped, after the max of a pooling unit's compartments
        gap = lost if getattr(pop, "compartments", 1) == 1 else join(pop, a + lost) - join(pop, a.astype(np.float64))
        per_channel = np.rint(gap.mean(axis=tuple(j for j in range(gap.ndim) if j != 1)))
        i = index[pop.name]
        pops[i], why = _corrected(program, pops, i, per_channel)
        if why:
            report.skipped[pop.name] = why
        elif np.any(per_channel):
            report.corrections[pop.name] = (float(per_channel.mean()), int(per_channel.max()))
        return pops[i]
    evaluate(program, x, adjust=adjust, keep=())
    return Program(pops, program.projections, program.input, program.output,
                   {**program.options, "bias_correction": n}, program.provenance), report


def _corrected(program: Program, pops: list, i: int, per_channel: np.ndarray):
    """(population i with ``per_channel`` added to its bias, "") or (unchanged, why) when the
    corrected bias would leave the bias or accumulator range."""
    pop = pops[i]
    shape = (-1,) + (1,) * (len(pop.shape) - 1)
    bias = pop.bias.astype(np.int64) + per_channel.astype(np.int64).reshape(shape)
    if np.abs(bias).max(initial=0) > BIAS_LIMIT:
        return pop, f"the corrected bias would exceed {BIAS_LIMIT}"
    new = replace(pop, bias=bias.astype(np.int32))
    trial = Program([*pops[:i], new, *pops[i + 1:]], program.projections, program.input, program.output)
    try:
        check_ranges(trial, pop.name)
    except RangeError as exc:
        return pop, f"the corrected bias would leave the accumulator range: {exc}"
    return new, ""

