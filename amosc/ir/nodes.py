"""Node kinds of the AMOS spiking IR.

A :class:`Program` is a DAG of *populations* (groups of AMOS units, all with the
same code) joined by *projections* (synapses with 8-bit weight mantissas).
Everything is integer; floats appear only at the host boundary (input encoding
scale, output decoding scale) and as provenance. The semantics, timing and
integer ranges are specified in docs/ir.md; :mod:`amosc.ir.semantics` is the
executable form of that specification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import scipy.sparse as sp

from ..errors import IRError

#: Largest |synaptic input| a neuron may receive in one step. Loihi's current is a
#: 24-bit register and synaptic input is left-shifted by 6 for MSB alignment, so
#: 18 signed bits remain for the sum of weights times spikes (docs/ir.md#ranges).
ACC_LIMIT = 2**17 - 1
#: A unit's bias b is *gated*: it acts only at the unit's evaluation step. On Loihi the
#: unit holds the constant bias ``b - E`` in [-2^ENABLE_SHIFT, -1] (so an idle unit never
#: fires) and a per-input enable spike of weight ``E = 2^ENABLE_SHIFT * q`` (8-bit q)
#: arrives with its synaptic input (:func:`amosc.ir.semantics.enable_weights`).
ENABLE_SHIFT = 8
#: Largest |bias|: the enable weight's mantissa q stays within 8 bits.
BIAS_LIMIT = 127 * 2**ENABLE_SHIFT - 1
#: Weight mantissas are 8-bit signed.
WEIGHT_MIN, WEIGHT_MAX = -128, 127
#: Largest power-of-two exponent of a synaptic weight (mantissa * 2^s). Lava stores
#: mixed-sign weights doubled with weight_exp in [-8, 7], so s = weight_exp + 1 <= 8.
MAX_WEIGHT_SHIFT = 8
#: Smallest exponent of a synaptic plane: Lava's weight_exp >= -8, minus the doubling.
MIN_WEIGHT_SHIFT = -7
#: Largest threshold: Loihi's 17-bit unsigned vth (compared after the same << 6).
THRESHOLD_LIMIT = 2**17 - 1
#: Largest code length K (units per gate, bits of the input encoder), as ``--bits``.
MAX_BITS = 16
#: units of one code (a flash ADC of 8 bits has 255)
MAX_UNITS = 255
#: Largest |h_k|: an inhibition weight is part of a neuron's 18-bit input (ACC_LIMIT).
RESET_LIMIT = ACC_LIMIT
#: Largest |d_k|: a plane's weights are M * d_k * 2^e with e >= MIN_WEIGHT_SHIFT and shift
#: at most MAX_WEIGHT_SHIFT, so |d_k| < 2^(MAX_WEIGHT_SHIFT - MIN_WEIGHT_SHIFT + 1) anyway.
CODE_WEIGHT_LIMIT = 2**16
#: Largest start step of a population (a program's latency is at most this + 1 steps):
#: generous for real programs (depth x K is a few hundred) and it bounds a run's steps.
MAX_START_STEP = 2**16
#: Largest gate or readout scale: a decoded value (scale times an integer of at most
#: 2^20) then stays finite even in float32.
MAX_SCALE = 2.0**100
#: A conv's zero-padded input may hold at most this many times the elements of its input
#: (or CONV_PAD_ELEMENTS, whichever is larger), so padding cannot blow up a run's memory.
CONV_PAD_FACTOR = 16
CONV_PAD_ELEMENTS = 2**16
#: Conv attributes and their lengths (strides, pads top/left/bottom/right, dilations).
CONV_ATTRS = {"strides": 2, "pads": 4, "dilations": 2}

PROJECTION_KINDS = ("conv", "dense", "sparse")


def is_int(v) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    """A real number (integer or float, Python or numpy), not a bool."""
    return is_int(v) or isinstance(v, (float, np.floating))


def _check_shape(name, shape):
    if not isinstance(shape, tuple) or not shape or not all(is_int(n) and n >= 1 for n in shape):
        raise IRError(f"population {name!r}: shape must be a non-empty tuple of positive integers, "
                      f"got {shape!r}")


def _check_start(name, start):
    if not (is_int(start) and 0 <= start <= MAX_START_STEP):
        raise IRError(f"population {name!r}: start step must be an integer in [0, {MAX_START_STEP}] "
                      f"(MAX_START_STEP), got {start!r}")


@dataclass(frozen=True)
class Code:
    """The K-step AMOS code of a unit (Stöckl & Maass 2019).

    Unit k (k = 0..K-1, MSB first) fires once or never::

        z_k = [ y - sum_{j<k} h_j z_j >= T_k ]        code c = sum_k d_k z_k

    For a ReLU unit with step theta and rounding offset r: T_k = 2^(K-1-k) theta - r,
    h_k = 2^(K-1-k) theta, d_k = 2^(K-1-k), so c = clip(floor((y + r) / theta), 0, 2^K - 1).

    ``steps`` (optional): the step, relative to the population's start, at which each unit
    fires (non-decreasing from 0, rising by at most 1). Units of one step fire together and
    do not inhibit each other: z_k = [y - sum_{j: steps_j < steps_k} h_j z_j >= T_k]. Empty
    (the default): unit k fires at step k, the sequential AMOS code. :meth:`radix` builds the
    radix-2^r and flash ADCs with it (docs/ir.md#gate-structures). ``bits`` is the number of
    units, ``depth`` the number of steps.
    """

    thresholds: tuple[int, ...]
    resets: tuple[int, ...]
    weights: tuple[int, ...]
    steps: tuple[int, ...] = ()

    def __post_init__(self):
        k = len(self.thresholds)
        if k == 0 or len(self.resets) != k or len(self.weights) != k:
            raise IRError(
                f"code needs K >= 1 and K thresholds, resets and weights; got "
                f"{len(self.thresholds)}, {len(self.resets)}, {len(self.weights)}"
            )
        if k > MAX_UNITS:
            raise IRError(f"code has {k} units; at most {MAX_UNITS} (MAX_UNITS)")
        for what, vals in (("thresholds", self.thresholds), ("resets", self.resets),
                           ("weights", self.weights)):
            bad = [v for v in vals if not is_int(v)]
            if bad:
                raise IRError(f"code {what} must be integers, got {bad[0]!r}")
        for t in self.thresholds:
            if not 1 <= t <= THRESHOLD_LIMIT:
                raise IRError(f"threshold {t} outside [1, {THRESHOLD_LIMIT}]")
        for h in self.resets:
            if abs(h) > RESET_LIMIT:
                raise IRError(f"reset {h} outside [-{RESET_LIMIT}, {RESET_LIMIT}]")
        for d in self.weights:
            if abs(d) > CODE_WEIGHT_LIMIT:
                raise IRError(f"code weight {d} outside [-{CODE_WEIGHT_LIMIT}, {CODE_WEIGHT_LIMIT}]")
        if self.steps != ():
            st = self.steps
            if not isinstance(st, tuple) or len(st) != k or not all(is_int(v) for v in st):
                raise IRError(f"code steps must be a tuple of {k} integers, got {st!r}")
            if st[0] != 0 or any(not 0 <= b - a <= 1 for a, b in zip(st, st[1:])):
                raise IRError(f"code steps must start at 0 and rise by 0 or 1 per unit, got {st!r}")
            if st == tuple(range(k)):
                raise IRError("code steps equal to 0..K-1 are the default: leave them empty")

    @property
    def bits(self) -> int:
        """The number of units (K)."""
        return len(self.thresholds)

    @property
    def unit_steps(self) -> tuple:
        """The step of each unit relative to the population's start."""
        return self.steps or tuple(range(len(self.thresholds)))

    @property
    def depth(self) -> int:
        """Steps the code takes: its last unit fires at start + depth - 1."""
        return self.unit_steps[-1] + 1

    @property
    def max_code(self) -> int:
        return int(sum(d for d in self.weights if d > 0))

    @property
    def min_code(self) -> int:
        return int(sum(d for d in self.weights if d < 0))

    @classmethod
    def binary(cls, bits: int, theta: int = 1, offset: int = 0) -> "Code":
        """The successive-approximation ADC code (ReLU, and the input encoder)."""
        if bits < 1 or theta < 1 or not 0 <= offset < theta:
            raise IRError(f"binary code needs bits >= 1, theta >= 1, 0 <= offset < theta "
                          f"(got bits={bits}, theta={theta}, offset={offset})")
        pw = [2 ** (bits - 1 - k) for k in range(bits)]
        return cls(tuple(p * theta - offset for p in pw), tuple(p * theta for p in pw), tuple(pw))

    @classmethod
    def radix(cls, bits: int, r: int, theta: int = 1, offset: int = 0) -> "Code":
        """A ``bits``-bit ADC of radix 2^r: stages of r bits (the last one smaller when r does
        not divide ``bits``), most significant first; stage s of b_s bits is 2^b_s - 1
        thermometer units of weight w_s = 2^(bits resolved after s) firing in step s, unit
        j = 1..2^b_s - 1 with T = j w_s theta - offset and h = w_s theta. The code is
        clip(floor((y + offset) / theta), 0, 2^bits - 1), as :meth:`binary` (r = 1) gives;
        r = bits is the flash ADC (one step)."""
        if bits < 1 or not 1 <= r <= bits or theta < 1 or not 0 <= offset < theta:
            raise IRError(f"radix code needs 1 <= r <= bits, theta >= 1, 0 <= offset < theta "
                          f"(got bits={bits}, r={r}, theta={theta}, offset={offset})")
        if r == 1:
            return cls.binary(bits, theta, offset)
        full, rest = divmod(bits, r)
        sizes = (r,) * full + ((rest,) if rest else ())
        t, h, d, st = [], [], [], []
        low = bits
        for s, b in enumerate(sizes):
            low -= b
            w = 2 ** low
            for j in range(1, 2 ** b):
                t.append(j * w * theta - offset)
                h.append(w * theta)
                d.append(w)
                st.append(s)
        return cls(tuple(t), tuple(h), tuple(d), tuple(st))

    def is_binary(self) -> bool:
        return not self.steps and all(d == 2 ** (self.bits - 1 - k) for k, d in enumerate(self.weights))


@dataclass(frozen=True, eq=False)
class InputPop:
    """Host-driven encoder: x -> c = clip(round((x - zero_point) / scale), 0, 2^K - 1);
    bit k of c (MSB first) spikes at step ``start + k``."""

    name: str
    shape: tuple[int, ...]
    bits: int
    scale: float
    zero_point: float
    start: int = 0

    def __post_init__(self):
        _check_shape(self.name, self.shape)
        _check_start(self.name, self.start)
        if not (is_int(self.bits) and 1 <= self.bits <= MAX_BITS):
            raise IRError(f"population {self.name!r}: input bits must be an integer in [1, {MAX_BITS}], "
                          f"got {self.bits!r}")
        if not (is_real(self.scale) and math.isfinite(self.scale) and self.scale > 0):
            raise IRError(f"population {self.name!r}: input scale must be a finite number > 0, "
                          f"got {self.scale!r}")
        if not (is_real(self.zero_point) and math.isfinite(self.zero_point)):
            raise IRError(f"population {self.name!r}: input zero point must be a finite number, "
                          f"got {self.zero_point!r}")

    @property
    def code(self) -> Code:
        return Code.binary(self.bits)


@dataclass(frozen=True, eq=False)
class GatePop:
    """AMOS units: integer input y = bias + synaptic input, arriving complete at step
    ``start``; unit k fires at ``start + k`` by the :class:`Code` rule. The decoded
    value is ``scale[channel] * c`` (``scale``: float64 (C,), C = shape[0])."""

    name: str
    shape: tuple[int, ...]
    code: Code
    bias: np.ndarray
    scale: float
    start: int = 0
    activation: str = "relu"
    tensor: str = ""  # the ONNX tensor this population reproduces
    #: a segmented (fitted) activation: {"fn", "range", "bits", "segments", "slopes", "offset",
    #: "max_err", "mean_err", ...}; channel c * S + s is segment s of activation channel c,
    #: and the activation is offset[c] + sum_s slopes[c][s] * decoded[c * S + s] (slopes
    #: (S,) and a scalar offset when every channel shares one fit)
    fit: dict | None = None
    #: m > 1: every unit has m input compartments joined by max (lateral-inhibition pooling,
    #: docs/ir.md#compartments): incoming projections target ``input_shape`` = (C * m, ...),
    #: compartment i of channel c at c * m + i, and y = bias + max_i (input of compartment i)
    compartments: int = 1

    def __post_init__(self):
        _check_shape(self.name, self.shape)
        _check_start(self.name, self.start)
        if not isinstance(self.code, Code):
            raise IRError(f"population {self.name!r}: code must be a Code, got {type(self.code).__name__}")
        _check_bias(self.name, self.bias, self.shape)
        _check_scale(self.name, self.scale, self.shape)
        if self.fit is not None:
            _check_fit(self.name, self.fit, self.shape)
        if not (is_int(self.compartments) and self.compartments >= 1):
            raise IRError(f"population {self.name!r}: compartments must be an int >= 1, got "
                          f"{self.compartments!r}")

    @property
    def input_shape(self) -> tuple:
        """The shape incoming projections deliver to (one block of channels per compartment)."""
        return (self.shape[0] * self.compartments, *self.shape[1:])


@dataclass(frozen=True, eq=False)
class ReadoutPop:
    """Non-spiking accumulators: the output y = bias + synaptic input arriving at step
    ``start`` is read by the host and decoded as ``scale[i] * y`` (``scale``: (C,))."""

    name: str
    shape: tuple[int, ...]
    bias: np.ndarray
    scale: float
    start: int = 0
    tensor: str = ""

    def __post_init__(self):
        _check_shape(self.name, self.shape)
        _check_start(self.name, self.start)
        _check_bias(self.name, self.bias, self.shape)
        _check_scale(self.name, self.scale, self.shape)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.shape)


Population = Union[InputPop, GatePop, ReadoutPop]


def _check_scale(name, scale, shape):
    if not isinstance(scale, np.ndarray) or scale.dtype != np.float64 or scale.shape != (shape[0],):
        raise IRError(f"population {name!r}: scale must be a float64 array ({shape[0]},), got "
                      f"{getattr(scale, 'dtype', type(scale).__name__)} {getattr(scale, 'shape', '')}")
    bad = ~(np.isfinite(scale) & (scale > 0) & (scale <= MAX_SCALE))
    if bad.any():
        raise IRError(f"population {name!r}: scale must be finite, > 0 and at most 2^100 (MAX_SCALE); "
                      f"channel {int(np.argmax(bad))} has {float(scale[bad][0])!r}")


def _check_fit(name, fit, shape):
    """What decoding a segmented gate needs (semantics.decode_activation): S segments per
    channel and, when given, finite slopes (S,) or (C, S) and offset (scalar or (C,))."""
    if not isinstance(fit, dict):
        raise IRError(f"population {name!r}: fit must be a dict, got {type(fit).__name__}")
    s = fit.get("segments")
    if not (is_int(s) and s >= 1):
        raise IRError(f"population {name!r}: fit segments must be an integer >= 1, got {s!r}")
    if shape[0] % s:
        raise IRError(f"population {name!r}: {shape[0]} channels are not a multiple of its {s} segments")
    c = shape[0] // s
    for key, shapes in (("slopes", [(s,), (c, s)]), ("offset", [(), (c,)])):
        if key not in fit:
            continue
        try:
            v = np.asarray(fit[key], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            v = None
        if v is None or v.shape not in shapes or not np.all(np.isfinite(v)):
            raise IRError(f"population {name!r}: fit {key} must be finite numbers shaped "
                          f"{' or '.join(map(str, shapes))}, got {fit[key]!r:.80}")
    relu = fit.get("relu")
    if relu is not None:
        try:
            slope = np.asarray(relu["slope"], dtype=np.float64) if isinstance(relu, dict) else None
        except (KeyError, TypeError, ValueError, OverflowError):
            slope = None
        if (slope is None or not isinstance(relu.get("population"), str) or slope.shape not in ((), (c,))
                or not np.all(np.isfinite(slope))):
            raise IRError(f"population {name!r}: fit relu must be {{'population': name, 'slope': a finite number "
                          f"or {c} of them}}, got {relu!r:.80}")


def _check_bias(name, bias, shape):
    if not isinstance(bias, np.ndarray) or bias.dtype != np.int32 or bias.shape != tuple(shape):
        raise IRError(f"population {name!r}: bias must be an int32 array of shape {tuple(shape)}, "
                      f"got {getattr(bias, 'dtype', type(bias))} {getattr(bias, 'shape', '')}")
    if bias.size and int(np.abs(bias).max()) > BIAS_LIMIT:
        raise IRError(f"population {name!r}: |bias| {int(np.abs(bias).max())} exceeds {BIAS_LIMIT}")


@dataclass(frozen=True, eq=False)
class Projection:
    """Synapses from every unit of ``source`` to ``target``.

    Spikes z_k of source unit k contribute ``floor(d_k * (M @ z_k) * 2^e[c])`` to
    target neuron i of output channel c: one sum per plane and target neuron, then one
    shift (Loihi's weight exponent; one synapse group per distinct exponent), see
    :func:`amosc.ir.semantics.plane_input`. ``exp`` is int64 (C_out,). ``kind`` says
    how M is laid out:

    - ``conv``: (C_out, C_in/groups, kh, kw) cross-correlation with ``attrs`` strides,
      pads (top, left, bottom, right), dilations, groups, on (C, H, W) tensors;
    - ``dense``: (F_out, F_in) on flattened tensors;
    - ``sparse``: a scipy CSR matrix (F_out, F_in) on flattened tensors.
    """

    name: str
    source: str
    target: str
    kind: str
    weight: Union[np.ndarray, sp.csr_matrix]
    exp: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in PROJECTION_KINDS:
            raise IRError(f"projection {self.name!r}: kind {self.kind!r} not in {PROJECTION_KINDS}")
        if self.kind == "sparse":
            if not (sp.issparse(self.weight) and self.weight.format == "csr"):
                raise IRError(f"projection {self.name!r}: a sparse projection needs a CSR weight matrix")
        elif not isinstance(self.weight, np.ndarray):
            raise IRError(f"projection {self.name!r}: a {self.kind} projection needs a numpy weight array, "
                          f"got {type(self.weight).__name__}")
        for what, shape in (("in_shape", self.in_shape), ("out_shape", self.out_shape)):
            if not isinstance(shape, tuple) or not shape or not all(is_int(n) and n >= 1 for n in shape):
                raise IRError(f"projection {self.name!r}: {what} must be a non-empty tuple of positive "
                              f"integers, got {shape!r}")
        if self.kind == "conv":
            _check_conv_attrs(self.name, self.attrs, self.in_shape)
        w = self.weight.data if sp.issparse(self.weight) else self.weight
        if w.dtype != np.int8:
            raise IRError(f"projection {self.name!r}: weight mantissas must be int8, got {w.dtype}")
        if not isinstance(self.exp, np.ndarray) or self.exp.shape != (self.out_shape[0],) \
                or self.exp.dtype.kind != "i":
            raise IRError(f"projection {self.name!r}: exp must be an integer array ({self.out_shape[0]},)")
        if self.exp.size and not (-32 <= self.exp.min() and self.exp.max() <= 31):
            raise IRError(f"projection {self.name!r}: exponents outside [-32, 31]")

    @property
    def synapses(self) -> int:
        """Number of non-zero synapses per unit of the source code (one of its K planes)."""
        if sp.issparse(self.weight):
            return int(self.weight.nnz)
        if self.kind == "conv":  # border positions counted as interior: an upper bound
            return int(np.count_nonzero(self.weight)) * int(np.prod(self.out_shape[1:]))
        return int(np.count_nonzero(self.weight))


def _check_conv_attrs(name, attrs, in_shape):
    """strides (2) and dilations (2) positive, pads (4: top, left, bottom, right) non-negative,
    groups positive, all integers; the zero-padded input at most CONV_PAD_FACTOR times the
    input (or CONV_PAD_ELEMENTS elements)."""
    if not isinstance(attrs, dict):
        raise IRError(f"projection {name!r}: conv attrs must be a dict, got {type(attrs).__name__}")
    for key, n in (*CONV_ATTRS.items(), ("groups", None)):
        if key not in attrs:
            raise IRError(f"projection {name!r}: conv attribute {key!r} is missing")
        v = attrs[key]
        vals = (v,) if n is None else v
        least = 0 if key == "pads" else 1
        if (n is not None and not (isinstance(v, (tuple, list)) and len(v) == n)) \
                or not all(is_int(x) and least <= x <= 2**31 - 1 for x in vals):
            what = "an integer" if n is None else f"{n} integers"
            raise IRError(f"projection {name!r}: conv attribute {key!r} must be {what} in "
                          f"[{least}, 2^31 - 1], got {v!r}")
    if len(in_shape) == 3:
        c, h, w = in_shape
        pt, pl, pb, pr = attrs["pads"]
        padded = c * (h + pt + pb) * (w + pl + pr)
        if padded > max(CONV_PAD_FACTOR * c * h * w, CONV_PAD_ELEMENTS):
            raise IRError(f"projection {name!r}: pads {tuple(attrs['pads'])} make the {h}x{w} input "
                          f"{h + pt + pb}x{w + pl + pr}: {padded} elements, more than {CONV_PAD_FACTOR} times "
                          f"its size and more than {CONV_PAD_ELEMENTS}")


@dataclass(eq=False)
class Program:
    """A compiled spiking program: populations in topological order and projections."""

    populations: list
    projections: list
    input: str
    output: str
    options: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        self._by_name = {p.name: p for p in self.populations}

    def pop(self, name: str) -> Population:
        try:
            return self._by_name[name]
        except KeyError:
            raise IRError(f"no population named {name!r}; known: {sorted(self._by_name)}") from None

    def incoming(self, name: str) -> list:
        return [p for p in self.projections if p.target == name]

    @property
    def input_pop(self) -> InputPop:
        return self.pop(self.input)

    @property
    def output_pop(self) -> ReadoutPop:
        return self.pop(self.output)

    @property
    def latency(self) -> int:
        """Time steps from the first input spike to the step the output is read, inclusive."""
        return self.output_pop.start + 1

    # Convenience API, implemented elsewhere to keep the IR free of heavy imports.
    def run(self, x, backend: str = "reference", **kw):
        from ..api import run_program
        return run_program(self, x, backend=backend, **kw)

    def validate(self, onnx_model, x, labels=None, backend: str = "reference", **kw):
        from ..validate import validate
        return validate(self, onnx_model, x, labels=labels, backend=backend, **kw)

    def save(self, path):
        from .serialize import save
        save(self, path)
