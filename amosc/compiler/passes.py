"""Passes over the integer IR: plain ``Program -> Program`` functions.

The pass manager in :mod:`amosc.compiler.pipeline` verifies the program after
each one and names the pass that broke it.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir.nodes import InputPop, Program


def schedule_asap(program: Program) -> Program:
    """Give every population the earliest start step its inputs allow.

    A population can start once the last unit of each source has fired:
    start(P) = max over sources S of start(S) + K_S (Lava's one-step synapse hop
    is part of that: unit K_S - 1 fires at start(S) + K_S - 1 and arrives one step
    later). Shorter paths (residual branches) are balanced by synaptic delays,
    which the timing rules derive from the start steps (docs/ir.md#timing).
    """
    starts: dict[str, int] = {}
    pops = []
    for pop in program.populations:
        if isinstance(pop, InputPop):
            start = 0
        else:
            start = max(starts[pr.source] + program.pop(pr.source).code.bits
                        for pr in program.incoming(pop.name))
        starts[pop.name] = start
        pops.append(replace(pop, start=start))
    return Program(pops, program.projections, program.input, program.output,
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
DEFAULT_PASSES = (drop_dead_populations, schedule_asap)  # lower() schedules once already
