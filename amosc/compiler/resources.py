"""Resource limits: what a compile will cost, estimated before it is paid.

The compiler estimates a program's neurons, synapses and its own peak memory from the
imported float graph, before calibrating and before building any integer weights, and
refuses (:class:`~amosc.errors.ResourceError`, naming the estimate and the option that
raises the limit) instead of thrashing the machine. The estimates are checked twice:
after import (fitted units still counted as one K-bit unit per element, a lower bound)
and after the fitted units are expanded into their segments (exact neuron count).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ResourceError
from ..ir import linear as L

#: Default neuron limit: 2^24, 16 Loihi 2 chips of 1 M neurons; every fixture fits
#: (the largest, EfficientNet at K=8, is 12.6 M neurons).
MAX_NEURONS = 2**24


def physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def default_max_memory() -> int:
    """Three quarters of this machine's physical memory."""
    return physical_memory() * 3 // 4


@dataclass(frozen=True)
class Limits:
    """``max_neurons``: neurons of the compiled program; ``max_memory``: bytes the
    compiler may use (a rough estimate of its peak, see :func:`estimate`)."""
    max_neurons: int = MAX_NEURONS
    max_memory: int = field(default_factory=default_max_memory)


def map_entries(m: L.LinearMap) -> int:
    """Stored weights of a float map (a convolution's kernel once, not per position)."""
    if isinstance(m, L.Embedded):
        return map_entries(m.inner)
    if isinstance(m, L.PositionScaled):   # lowered as a sparse matrix: a kernel per position
        return map_synapses(m.conv)
    if isinstance(m, L.Conv):
        return int(m.w.size)
    if isinstance(m, L.Dense):
        return int(m.w.size)
    if isinstance(m, L.Sparse):
        return int(m.m.nnz)
    if isinstance(m, L.ChannelSum):
        return int(m.f.size)
    if isinstance(m, L.GlobalDense):
        return int(m.w.nnz)
    return int(np.prod(m.out_shape))


def map_synapses(m: L.LinearMap) -> int:
    """Synapses a float map deploys per source plane (a kernel at every output position)."""
    if isinstance(m, L.Embedded):
        return map_synapses(m.inner)
    if isinstance(m, L.PositionScaled):
        return map_synapses(m.conv)
    if isinstance(m, L.Conv):
        return int(np.count_nonzero(m.w)) * int(np.prod(m.out_shape[1:]))
    if isinstance(m, L.Dense):
        return int(np.count_nonzero(m.w))
    if isinstance(m, L.Sparse):
        return int(m.m.nnz)
    if isinstance(m, L.ChannelTile):
        return int(np.prod(m.out_shape))
    if isinstance(m, L.GlobalDense):
        pin, pout = m.positions
        return int(m.w.nnz) * pin * pout
    return int(np.prod(m.in_shape))


def map_integer_bytes(m: L.LinearMap) -> int:
    """Bytes of the int8 mantissas (and CSR indices) of one synapse set lowered from ``m``
    (:func:`amosc.compiler.quantize._projection`): a global map becomes a whole-map kernel,
    a dense matrix over every input position or a broadcast sparse matrix; a part of a
    concatenation is lowered padded to all the concatenation's channels."""
    if isinstance(m, L.Embedded):
        return map_integer_bytes(m.inner) * m.out_shape[0] // max(m.inner.out_shape[0], 1)
    if isinstance(m, L.GlobalDense):
        pin, pout = m.positions
        if pout == 1:
            return int(np.prod(m.w.shape)) * pin
        return int(m.w.nnz) * pin * pout * 5
    if isinstance(m, (L.Sparse, L.ChannelTile, L.PositionScaled)) or (isinstance(m, L.Scale) and len(m.in_shape) != 3):
        return map_entries(m) * 5
    return map_entries(m)


def estimate(fg, bits: int, weight_bits: int, calib_n: int, calib_batch: int) -> dict:
    """Neurons, synapses and the compiler's peak memory (bytes) for the float graph ``fg``."""
    def k(g):
        return g.bits or bits
    gates = fg.gates
    neurons = int(np.prod(fg.input_shape)) * bits + int(np.prod(fg.readout.shape))
    neurons += sum(int(np.prod(g.shape)) * k(g) for g in gates)
    exprs = [g.expr for g in gates] + [fg.readout]
    source_bits = {g.name: k(g) for g in gates}
    source_bits["input"] = bits
    planes = weight_bits // 8
    synapses = sum(map_synapses(m) * source_bits.get(s, bits) * planes
                   for e in exprs for s, m in e.maps.items())
    entries = sum(map_entries(m) for e in exprs for m in e.maps.values())
    # calibration (of the graph before its fitted units are expanded into segments): a batch
    # of pre-activations and activations in float64, plus kept samples
    calib = 0
    if not any(g.fit is not None for g in gates):
        elements = sum(int(np.prod(g.expr.shape)) + int(np.prod(g.shape)) for g in gates)
        calib = calib_batch * elements * 8 + sum(min(calib_n * int(np.prod(g.shape)), 4_000_000) * 4
                                                 for g in gates)
    # lowering: float64 maps and float64 temporaries of the same size, plus the program's
    # integer weights (one synapse set per 8 weight bits) and the range proof's sums over them
    lowering = entries * 8 * 3 + sum(map_integer_bytes(m) for e in exprs for m in e.maps.values()) * planes * 3 // 2
    return {"neurons": neurons, "synapses": int(synapses), "memory": int(max(calib, lowering))}


def check(est: dict, limits: Limits, when: str) -> None:
    if est["neurons"] > limits.max_neurons:
        raise ResourceError(
            f"the program would have about {est['neurons']:,} neurons ({when}), more than "
            f"--max-neurons {limits.max_neurons:,}; raise --max-neurons if that is intended, or "
            "compile a smaller model or fewer --bits")
    if est["memory"] > limits.max_memory:
        raise ResourceError(
            f"compiling would need about {est['memory'] / 2**30:.1f} GiB of memory ({when}), more "
            f"than --max-memory {limits.max_memory / 2**30:.1f} GiB; raise --max-memory if this "
            "machine has it")
