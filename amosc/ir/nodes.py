"""Node kinds of the AMOS spiking IR.

A :class:`Program` is a DAG of *populations* (groups of AMOS units, all with the
same code) joined by *projections* (synapses with 8-bit weight mantissas).
Everything is integer; floats appear only at the host boundary (input encoding
scale, output decoding scale) and as provenance. The semantics, timing and
integer ranges are specified in docs/ir.md; :mod:`amosc.ir.semantics` is the
executable form of that specification.
"""

from __future__ import annotations

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

PROJECTION_KINDS = ("conv", "dense", "sparse")


@dataclass(frozen=True)
class Code:
    """The K-step AMOS code of a unit (Stöckl & Maass 2019).

    Unit k (k = 0..K-1, MSB first) fires once or never::

        z_k = [ y - sum_{j<k} h_j z_j >= T_k ]        code c = sum_k d_k z_k

    For a ReLU unit with step theta and rounding offset r: T_k = 2^(K-1-k) theta - r,
    h_k = 2^(K-1-k) theta, d_k = 2^(K-1-k), so c = clip(floor((y + r) / theta), 0, 2^K - 1).
    """

    thresholds: tuple[int, ...]
    resets: tuple[int, ...]
    weights: tuple[int, ...]

    def __post_init__(self):
        k = len(self.thresholds)
        if k == 0 or len(self.resets) != k or len(self.weights) != k:
            raise IRError(
                f"code needs K >= 1 and K thresholds, resets and weights; got "
                f"{len(self.thresholds)}, {len(self.resets)}, {len(self.weights)}"
            )
        for t in self.thresholds:
            if not 1 <= t <= THRESHOLD_LIMIT:
                raise IRError(f"threshold {t} outside [1, {THRESHOLD_LIMIT}]")

    @property
    def bits(self) -> int:
        return len(self.thresholds)

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

    def is_binary(self) -> bool:
        return all(d == 2 ** (self.bits - 1 - k) for k, d in enumerate(self.weights))


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
        _check_bias(self.name, self.bias, self.shape)
        _check_scale(self.name, self.scale, self.shape)
        if self.fit is not None and self.shape[0] % int(self.fit["segments"]):
            raise IRError(f"population {self.name!r}: {self.shape[0]} channels are not a multiple of "
                          f"its {self.fit['segments']} segments")
        if not (isinstance(self.compartments, int) and self.compartments >= 1):
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
        _check_bias(self.name, self.bias, self.shape)
        _check_scale(self.name, self.scale, self.shape)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.shape)


Population = Union[InputPop, GatePop, ReadoutPop]


def _check_scale(name, scale, shape):
    if not isinstance(scale, np.ndarray) or scale.shape != (shape[0],) or not np.all(scale > 0):
        raise IRError(f"population {name!r}: scale must be positive float64 ({shape[0]},), got "
                      f"{getattr(scale, 'shape', type(scale).__name__)}")


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
