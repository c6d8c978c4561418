"""Passes over the integer IR: plain ``Program -> Program`` functions.

The pass manager in :mod:`amosc.compiler.pipeline` verifies the program after
each one and names the pass that broke it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import ModelError, RangeError
from ..ir.nodes import BIAS_LIMIT, InputPop, Program
from ..ir.semantics import spikes_input, unit_spikes


def schedule_asap(program: Program) -> Program:
    """Give every population the earliest start step its inputs allow.

    A population can start once the last unit of each source has fired:
    start(P) = max over sources S of start(S) + D_S, D_S the depth of S's code (K for a
    sequential code; Lava's one-step synapse hop is part of that: the last unit fires at
    start(S) + D_S - 1 and arrives one step later). Shorter paths (residual branches) are balanced by synaptic delays,
    which the timing rules derive from the start steps (docs/ir.md#timing).
    """
    starts: dict[str, int] = {}
    pops = []
    for pop in program.populations:
        if isinstance(pop, InputPop):
            start = 0
        else:
            start = max(starts[pr.source] + program.pop(pr.source).code.depth
                        for pr in program.incoming(pop.name))
        starts[pop.name] = start
        pops.append(replace(pop, start=start))
    return Program(pops, program.projections, program.input, program.output,
                   program.options, program.provenance)


def fold_constant_populations(program: Program) -> Program:
    """Fold gates with no incoming projection (every weight into them quantized or was
    zero) into their readers' biases: such a gate's units see only their bias, so its
    code is a constant, and so is what it delivers. Repeats down the graph; the folded
    gates are left for :func:`drop_dead_populations`."""
    pops = {p.name: p for p in program.populations}
    projs = list(program.projections)
    constant: set = set()
    for pop in program.populations:
        if not isinstance(pop, InputPop) and all(pr.source in constant for pr in program.incoming(pop.name)):
            constant.add(pop.name)
    if program.output in constant:
        raise ModelError(f"the output {program.output!r} does not depend on the input (the weights on "
                         "every path to it are zero)")
    for pop in program.populations:
        if isinstance(pop, InputPop) or any(pr.target == pop.name for pr in projs):
            continue
        z = unit_spikes(pop.code, pop.bias.astype(np.int64)[None])  # (K, 1, *shape): one constant input
        for pr in [pr for pr in projs if pr.source == pop.name]:
            tgt = pops[pr.target]
            if getattr(tgt, "compartments", 1) > 1:
                raise RangeError(f"population {tgt.name!r}: its input compartment from {pop.name!r} is "
                                 "constant (zero weights into it); a constant compartment cannot be folded "
                                 "into a max-join unit's bias")
            bias = tgt.bias.astype(np.int64) + spikes_input(pr, pop.code, z)[0]
            if np.abs(bias).max(initial=0) > BIAS_LIMIT:
                raise RangeError(f"population {tgt.name!r}: folding the constant output of {pop.name!r} "
                                 f"into its bias exceeds the bias range +-{BIAS_LIMIT}")
            pops[tgt.name] = replace(tgt, bias=bias.astype(np.int32))
            projs.remove(pr)
    return Program([pops[p.name] for p in program.populations], projs, program.input, program.output,
                   program.options, program.provenance)


def drop_dead_populations(program: Program) -> Program:
    """Remove gates with no path to the output (e.g. after a projection quantized to zero)."""
    live = {program.output}
    for pop in reversed(program.populations):
        if pop.name in live:
            live.update(pr.source for pr in program.incoming(pop.name))
    live.add(program.input)
    if len(live) == len(program.populations):
        return program
    pops = [p for p in program.populations if p.name in live]
    projs = [p for p in program.projections if p.source in live and p.target in live]
    return Program(pops, projs, program.input, program.output, program.options, program.provenance)


#: The default pipeline, in order.
DEFAULT_PASSES = (fold_constant_populations, drop_dead_populations, schedule_asap)  # lower() schedules once already
