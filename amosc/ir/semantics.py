"""Executable specification of the IR's integer semantics (level 1 of docs/ir.md).

:func:`evaluate` computes every population's integer code directly from the
equations, without time steps. The spiking simulator in
:mod:`amosc.backends.reference` must produce exactly the same integers; the
tests compare the two integer for integer.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import IRError
from .nodes import Code, GatePop, InputPop, Program, Projection, ReadoutPop


# ---------------------------------------------------------------------------
# Linear kernels, shared by the compiler (float64) and the simulators (integers
# carried exactly in float64: every sum stays far below 2**53).
# ---------------------------------------------------------------------------

def conv_output_hw(hw, kernel, strides, pads, dilations):
    (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = hw, kernel, strides, pads, dilations
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return ho, wo


def conv2d(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
           groups: int = 1) -> np.ndarray:
    """ONNX Conv (cross-correlation) of x (N, C, H, W) with w (Co, C/groups, kh, kw), float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, _, _ = x.shape
    co, cig, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    if cig * groups != c or co % groups:
        raise IRError(f"conv2d: weight {w.shape} with groups={groups} does not fit input {x.shape}")
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2], win.shape[3]
    if groups == 1:
        return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    # grouped: one batched matrix product per group (BLAS), windows as rows
    cog = co // groups
    rows = win.reshape(n, groups, cig, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    rows = rows.reshape(groups, n * ho * wo, cig * kh * kw)
    out = np.matmul(rows, w.reshape(groups, cog, cig * kh * kw).transpose(0, 2, 1))
    return out.reshape(groups, n, ho, wo, cog).transpose(1, 0, 4, 2, 3).reshape(n, co, ho, wo)


def linear(kind: str, weight, attrs: dict, x: np.ndarray, out_shape) -> np.ndarray:
    """Apply a projection's linear map to x (N, *in_shape); float64 result (N, *out_shape)."""
    n = x.shape[0]
    if kind == "conv":
        y = conv2d(x, weight, attrs["strides"], attrs["pads"], attrs["dilations"], attrs["groups"])
    elif kind == "dense":
        y = x.reshape(n, -1).astype(np.float64) @ np.asarray(weight, dtype=np.float64).T
    elif kind == "sparse":
        y = (weight.astype(np.float64) @ x.reshape(n, -1).astype(np.float64).T).T
    else:
        raise IRError(f"unknown projection kind {kind!r}")
    return np.asarray(y).reshape((n, *out_shape))


# ---------------------------------------------------------------------------
# Integer rules
# ---------------------------------------------------------------------------

def floor_shift(v, e):
    """v * 2^e where e >= 0, else floor(v / 2^-e) (an arithmetic right shift); e is an
    int or an array broadcasting against v."""
    v = np.asarray(v, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    return np.right_shift(np.left_shift(v, np.maximum(e, 0)), np.maximum(-e, 0))


def channel_exp(proj: Projection) -> np.ndarray:
    """The per-output-channel exponents shaped to broadcast over (N, *out_shape)."""
    return proj.exp.reshape((1, -1) + (1,) * (len(proj.out_shape) - 1))


def plane_input(proj: Projection, d: int, z: np.ndarray) -> np.ndarray:
    """Contribution floor(d * (M @ z) * 2^e) of one source plane z (N, *in_shape)."""
    s = np.rint(linear(proj.kind, proj.weight, proj.attrs, z, proj.out_shape)).astype(np.int64)
    return floor_shift(s * d, channel_exp(proj))


def plane_is_exact(exp, d: int) -> bool:
    """Whether d * 2^exp is an integer (for every channel's exp), so the plane needs no
    flooring and can be folded with the others into one product."""
    lowest = int(np.min(exp))
    return lowest >= 0 or d % (1 << -lowest) == 0


def enable_weights(bias: np.ndarray) -> np.ndarray:
    """Per-neuron enable weight E = 2^ENABLE_SHIFT * q with b - E in [-2^ENABLE_SHIFT, -1]
    (how Loihi realizes a gated bias b: constant bias b - E, enable spike of weight E)."""
    from .nodes import ENABLE_SHIFT
    q = np.floor_divide(np.asarray(bias, np.int64), 2**ENABLE_SHIFT) + 1
    return q << ENABLE_SHIFT


def encode_input(pop: InputPop, x: np.ndarray) -> np.ndarray:
    """Host-side input encoding, x (N, *shape) float -> integer codes in [0, 2^K - 1]."""
    q = np.round((np.asarray(x, dtype=np.float64) - pop.zero_point) / pop.scale)
    return np.clip(q, 0, 2**pop.bits - 1).astype(np.int64)


def bit_planes(c: np.ndarray, bits: int) -> np.ndarray:
    """Binary planes of codes c, MSB first: (K, *c.shape) uint8."""
    return np.stack([(c >> (bits - 1 - k)) & 1 for k in range(bits)]).astype(np.uint8)


def spike_counts(codes: np.ndarray, bits: int) -> np.ndarray:
    """Spikes per input (N,) of a binary-coded population: the 1 bits of its codes."""
    return bit_planes(codes, bits).reshape(bits, codes.shape[0], -1).sum((0, 2)).astype(np.int64)


def unit_spikes(code: Code, y: np.ndarray) -> np.ndarray:
    """Spikes z_k (K, *y.shape) of the units for integer input y, by the code's recurrence."""
    z = np.zeros((code.bits, *y.shape), dtype=np.uint8)
    v = np.asarray(y, dtype=np.int64).copy()
    for k in range(code.bits):
        z[k] = v >= code.thresholds[k]
        v -= code.resets[k] * z[k].astype(np.int64)
    return z


def binary_params(code: Code):
    """(theta, offset) when the code is the successive-approximation ADC, else None."""
    k, theta = code.bits, code.resets[-1]
    offset = theta - code.thresholds[-1]
    pw = [2 ** (k - 1 - j) for j in range(k)]  # compared as tuples: a large theta may not be a valid Code
    ideal = (tuple(p * theta - offset for p in pw), tuple(p * theta for p in pw), tuple(pw))
    binary = theta >= 1 and 0 <= offset < theta and (code.thresholds, code.resets, code.weights) == ideal
    return (theta, offset) if binary else None


def gate_code(code: Code, y: np.ndarray) -> np.ndarray:
    """Integer code c = sum_k d_k z_k of units with integer input y (closed form for ADCs)."""
    params = binary_params(code)
    if params is not None:
        theta, offset = params
        return np.clip((np.asarray(y, np.int64) + offset) // theta, 0, 2**code.bits - 1)
    z = unit_spikes(code, y)
    return np.tensordot(np.asarray(code.weights, np.int64), z.astype(np.int64), axes=1)


def spikes_input(proj: Projection, code: Code, z: np.ndarray) -> np.ndarray:
    """Synaptic input (N, *out_shape) into ``proj.target`` from source spikes z (K, N, *in_shape).

    Planes whose weights are exact multiples are folded into one product with the
    partial code (this is where level 1 differs in method from the simulator)."""
    exact = [k for k, d in enumerate(code.weights) if plane_is_exact(proj.exp, d)]
    n = z.shape[1]
    total = np.zeros((n, *proj.out_shape), dtype=np.float64)
    if exact:
        # d_k 2^e is an integer for these planes: one product with M, then one exact shift
        part = sum(z[k].astype(np.int64) * code.weights[k] for k in exact)
        total += linear(proj.kind, proj.weight, proj.attrs, part, proj.out_shape)
    out = floor_shift(np.rint(total).astype(np.int64), channel_exp(proj))
    for k in range(code.bits):
        if k not in exact:
            out += plane_input(proj, code.weights[k], z[k])
    return out


def max_compartments(a: np.ndarray, m: int) -> np.ndarray:
    """a (N, C * m, ...) with compartment i of channel c at c * m + i -> the max over each
    channel's m compartments (N, C, ...); a itself when m == 1."""
    if m == 1:
        return a
    return a.reshape((a.shape[0], a.shape[1] // m, m) + tuple(a.shape[2:])).max(axis=2)


def join(pop, a: np.ndarray) -> np.ndarray:
    """A population's per-unit input from what its projections deliver, a (N, *input_shape):
    the max over each unit's compartments (lateral-inhibition pooling), else a itself."""
    return max_compartments(a, getattr(pop, "compartments", 1))


def evaluate(program: Program, x: np.ndarray, spike_counts: dict | None = None) -> dict:
    """Level-1 evaluation of a program on float input x (N, *input_shape).

    Returns {population name: integer array (N, *shape)}: the codes of the input
    and gate populations and the integer y of the readout. ``spike_counts``, when
    given, receives {population: spikes per input (N,)} of the input and gates.
    """
    out: dict[str, np.ndarray] = {}
    spikes: dict[str, np.ndarray] = {}
    for pop in program.populations:
        if isinstance(pop, InputPop):
            out[pop.name] = encode_input(pop, x)
            spikes[pop.name] = bit_planes(out[pop.name], pop.bits)
            if spike_counts is not None:
                spike_counts[pop.name] = _per_input(spikes[pop.name])
            continue
        a = np.zeros((x.shape[0], *pop.input_shape), np.int64)
        for proj in program.incoming(pop.name):
            src = program.pop(proj.source)
            a += spikes_input(proj, src.code, spikes[proj.source])
        y = pop.bias.astype(np.int64) + join(pop, a)
        if isinstance(pop, GatePop):
            out[pop.name] = gate_code(pop.code, y)
            spikes[pop.name] = (bit_planes(out[pop.name], pop.code.bits) if pop.code.is_binary()
                                else unit_spikes(pop.code, y))
            if spike_counts is not None:
                spike_counts[pop.name] = _per_input(spikes[pop.name])
        elif isinstance(pop, ReadoutPop):
            out[pop.name] = y
        else:
            raise IRError(f"unknown population kind {type(pop).__name__}")
    return out


def _per_input(z: np.ndarray) -> np.ndarray:
    """Spikes per input (N,) of unit spikes z (K, N, ...)."""
    return z.reshape(z.shape[0], z.shape[1], -1).sum((0, 2), dtype=np.int64)


def decode(pop, values: np.ndarray) -> np.ndarray:
    """Float value of a population's integers (codes or readout y)."""
    if isinstance(pop, InputPop):
        return values * pop.scale + pop.zero_point
    return values.astype(np.float64) * pop.scale.reshape((-1,) + (1,) * (len(pop.shape) - 1))


def decode_activation(pop, values: np.ndarray) -> np.ndarray:
    """The activation a gate population reproduces: :func:`decode`, and for a segmented
    (fitted) gate the slopes-weighted sum of its segments plus the offset."""
    y = decode(pop, values)
    fit = getattr(pop, "fit", None)
    if not fit:
        return y
    s = int(fit["segments"])
    c = pop.shape[0] // s
    slopes = np.broadcast_to(np.asarray(fit["slopes"], np.float64), (c, s))  # (S,) or (C, S)
    offset = np.broadcast_to(np.asarray(fit["offset"], np.float64), (c,))
    y = y.reshape((y.shape[0], c, s) + tuple(pop.shape[1:]))
    return (np.einsum("ncs...,cs->nc...", y, slopes)
            + offset.reshape((1, c) + (1,) * (len(pop.shape) - 1)))
