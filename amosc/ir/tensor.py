"""The tensor IR: the float graph between the ONNX importer and integer lowering.

A :class:`TensorGraph` is a list of activation :class:`Gate` s in topological order and
one readout. Every tensor is an *affine expression* (:class:`Expr`) ``sum_s maps[s](value
of s) + bias`` over sources ``s`` -- ``"input"`` (the network input) or an earlier gate --
with float linear maps from :mod:`.linear`. A gate applies its activation elementwise to
its expression: a clipped ReLU (``upper``), a fitted scalar function (``fn``, expanded
into ADC segments by the ``expand_fitted`` pass), or a max over ``compartments``.
Shapes are per sample (no batch axis). docs/ir.md#the-tensor-ir specifies it;
:func:`verify_graph` checks it after the importer and after every tensor pass;
:func:`dumps` prints it; :func:`float_eval` runs it in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import IRError
from . import linear as L
from .semantics import max_compartments

#: the name of the network input as a source
INPUT = "input"


@dataclass
class Expr:
    """sum over sources s of maps[s](value of s) + bias; per-sample ``shape``."""
    shape: tuple
    maps: dict
    bias: np.ndarray
    #: (parent, s, o) when this is s * parent + o for scalars s, o (fusion patterns)
    origin: tuple | None = None
    #: the gate whose output this expression is (identity map, zero bias)
    gate: str | None = None
    #: m > 1: a lateral-inhibition pool of a pre-activation, waiting for its ReLU: shape
    #: (C * m, ...) holds m window taps per channel (see _Importer._lateral_inhibition_pool)
    pooled: int = 1

    def apply(self, m: L.LinearMap, extra_bias=None) -> "Expr":
        maps = {s: L.compose(m, mm) for s, mm in self.maps.items()}
        bias = m.apply(self.bias[None].astype(np.float64))[0]
        if extra_bias is not None:
            bias = bias + extra_bias
        return Expr(tuple(m.out_shape), maps, bias)

    def root(self):
        """(root expression, s, o) with self = s * root + o (scalars)."""
        e, s, o = self, 1.0, 0.0
        while e.origin is not None:
            parent, ps, po = e.origin
            s, o = s * ps, s * po + o
            e = parent
        return e, s, o

    def plus(self, other: "Expr", sign: float = 1.0) -> "Expr":
        """self + sign * other (same shape)."""
        maps = dict(self.maps)
        for s, m in other.maps.items():
            if sign != 1.0:
                m = L.compose(L.Scale(m.out_shape, m.out_shape, np.full(m.out_shape[0], float(sign))), m)
            L.accumulate(maps, s, m)
        return Expr(self.shape, maps, self.bias + sign * other.bias)

    def scaled(self, c: float, o: float = 0.0) -> "Expr":
        """c * self + o for scalars."""
        e = self.apply(L.Scale(self.shape, self.shape, np.full(self.shape[0], float(c))))
        return Expr(e.shape, e.maps, e.bias + o, origin=(self, float(c), float(o)))


@dataclass
class Gate:
    name: str
    shape: tuple
    expr: Expr
    activation: str        # label: "relu", "relu6", "sigmoid", "max", ...
    upper: object          # ReLU gates: clip upper bound, float or per channel (C,); None: unbounded
    pre_tensor: str        # ONNX tensor fed to the activation ("" for synthetic gates)
    tensor: str            # ONNX tensor the gate produces ("" when it is part of one)
    node: str
    fn: object = None      # ScalarFn of a fitted gate (expanded into segments after calibration)
    alpha_from: str | None = None   # max-circuit gate: its output step is this gate's (exact)
    fixed_alpha: object = None      # per-channel range set by the compiler, not calibrated
    bits: int | None = None         # code bits when not the program's K (segments)
    #: 8 or 16: the precision of the gate's incoming synapses when not the program's
    #: (per-layer weight precision, chosen by --max-drop)
    weight_bits: int | None = None
    #: a fitted gate's neurons per element as a fitted AMOS unit when not the program's
    #: ``--fitted-units`` (per-layer unit size, chosen by --neuron-budget with validation data)
    units: int | None = None
    fit: object = None              # the Fit a segmented gate realizes
    #: a product's pair of square units u^2 - v^2 (u = (x + y) / 2, v = (x - y) / 2): the
    #: u gate names the v gate; calibration balances the pair per channel (see expand.py)
    partner: str | None = None
    #: a product x * s whose factor s is one value per channel (squeeze-excitation): (x, s), x an
    #: expression of the gate's shape (C, H, W), s of shape (C, 1, 1); set on the square pair's
    #: u gate, so that a gated product circuit can replace the pair (expand.expand_products)
    factors: tuple | None = None
    #: m > 1: lateral-inhibition pooling, the gate is the max of m compartments; ``expr`` has
    #: shape (C * m, ...) with compartment i of channel c at c * m + i
    compartments: int = 1

    @property
    def fitted(self) -> bool:
        return self.fn is not None

    def value(self, pre: np.ndarray) -> np.ndarray:
        """The float activation of pre-activation values (N, *expr.shape)."""
        pre = max_compartments(pre, self.compartments)
        if self.fn is not None:
            return self.fn(pre)
        y = np.maximum(pre, 0)
        if self.upper is None:
            return y
        up = np.asarray(self.upper, np.float64)
        return np.minimum(y, up.reshape((-1,) + (1,) * (len(self.shape) - 1)) if up.ndim else up)


@dataclass
class TensorGraph:
    path: str
    sha256: str
    opset: int
    input_name: str
    input_shape: tuple     # per sample
    batch_fixed: bool      # the model's batch dimension is a fixed 1
    gates: list = field(default_factory=list)
    readout: Expr | None = None
    readout_tensor: str = ""
    output_name: str = ""
    softmax: str | None = None   # "Softmax"/"LogSoftmax" dropped at the output
    #: (node, input expression, running mean, running var) of the first BatchNormalization:
    #: the trained input statistics that calibration data is checked against
    first_norm: tuple | None = None

    @property
    def squares(self) -> set:
        """Names of the gates that form a product's square pair (both u and v)."""
        return {g.name for g in self.gates if g.partner} | {g.partner for g in self.gates if g.partner}


def float_eval(fg: TensorGraph, x: np.ndarray, pre_values: dict | None = None) -> dict:
    """Evaluate the imported graph in float64 (gate outputs and the readout).

    This is the ANN as amosc understood it, before any quantization: the tests
    check it against onnxruntime to isolate importer bugs from quantization error.
    """
    vals = {INPUT: np.asarray(x, np.float64)}
    for g in fg.gates:
        pre = expr_value(g.expr, vals)
        if pre_values is not None:
            pre_values[g.name] = pre
        vals[g.name] = g.value(pre)
    vals["output"] = expr_value(fg.readout, vals)
    return vals


def expr_value(e: Expr, vals: dict) -> np.ndarray:
    """The value (N, *e.shape) of an expression over source values ``vals`` (N, ...)."""
    y = np.broadcast_to(e.bias, (vals[INPUT].shape[0], *e.shape)).copy()
    for src, m in e.maps.items():
        y += m.apply(vals[src])
    return y


def source_bounds(gates: dict, src: str) -> tuple[float, float]:
    """(lo, hi) of a source's values: the input is unbounded, a gate spans its activation's range."""
    g = gates.get(src)
    if g is None:
        return -np.inf, np.inf
    if g.fn is not None:
        return g.fn.bounds()
    return 0.0, np.inf if g.upper is None else float(np.max(g.upper))


def value_bounds(e: Expr, gates: dict) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise (lo, hi) of an expression over every possible input (interval analysis
    over the maps' positive and negative row sums; conservative at convolution borders).
    ``gates``: name -> :class:`Gate` of the expression's sources."""
    def times(a, b):  # a * b with 0 * inf = 0
        return np.where(a == 0, 0.0, a * b)
    lo = e.bias.astype(np.float64).copy()
    hi = lo.copy()
    with np.errstate(invalid="ignore"):
        for src, m in e.maps.items():
            slo, shi = source_bounds(gates, src)
            pos, neg = (np.asarray(r, np.float64) for r in m.row_sums())
            lo = lo + times(pos, min(slo, 0.0)) + times(neg, max(shi, 0.0))
            hi = hi + times(pos, max(shi, 0.0)) + times(neg, min(slo, 0.0))
    return lo, hi


def _source_shapes(g: TensorGraph) -> dict:
    return {INPUT: tuple(g.input_shape)}


def _check_expr(where: str, e: Expr, shapes: dict) -> None:
    if not isinstance(e, Expr):
        raise IRError(f"{where}: expected an expression, got {type(e).__name__}")
    shape = tuple(e.shape)
    if np.shape(e.bias) != shape:
        raise IRError(f"{where}: bias shape {np.shape(e.bias)} is not the expression's shape {shape}")
    if not np.all(np.isfinite(e.bias)):
        raise IRError(f"{where}: bias is not finite")
    for src, m in e.maps.items():
        if src not in shapes:
            raise IRError(f"{where}: reads {src!r}, which is not the input or an earlier gate")
        if not isinstance(m, L.LinearMap):
            raise IRError(f"{where}: the map from {src!r} is a {type(m).__name__}, not a linear map")
        if tuple(m.in_shape) != shapes[src]:
            raise IRError(f"{where}: the map from {src!r} takes shape {tuple(m.in_shape)}, but {src!r} "
                          f"has shape {shapes[src]}")
        if tuple(m.out_shape) != shape:
            raise IRError(f"{where}: the map from {src!r} gives shape {tuple(m.out_shape)}, not {shape}")


def verify_graph(g: TensorGraph) -> None:
    """Check the structural rules of docs/ir.md#the-tensor-ir; raise :class:`IRError`
    naming the gate and the rule. Gates are in topological order: an expression reads
    only the input and earlier gates; every map's shapes match its source and its
    expression; a gate's shape is its expression's (one channel per ``compartments``
    taps); ranges are non-negative; partners and ``alpha_from`` name gates of the graph."""
    shapes = _source_shapes(g)
    by_name = {}
    for gate in g.gates:
        where = f"gate {gate.name!r}"
        if gate.name in shapes:
            raise IRError(f"{where}: the name is used twice (or is the input's)")
        _check_expr(where, gate.expr, shapes)
        if gate.factors is not None:
            x, sc = gate.factors
            if gate.partner is None or len(gate.shape) != 3 or tuple(x.shape) != tuple(gate.shape) \
                    or tuple(sc.shape) != (gate.shape[0], 1, 1):
                raise IRError(f"{where}: a product's factors (x {tuple(x.shape)}, s {tuple(sc.shape)}) belong to "
                              f"the u gate of a square pair of shape (C, H, W), s of shape (C, 1, 1)")
            _check_expr(f"{where} factor x", x, shapes)
            _check_expr(f"{where} factor s", sc, shapes)
        m = int(gate.compartments)
        if m < 1:
            raise IRError(f"{where}: compartments must be >= 1, got {m}")
        want = (gate.shape[0] * m, *gate.shape[1:])
        if tuple(gate.expr.shape) != tuple(want):
            raise IRError(f"{where}: expression shape {tuple(gate.expr.shape)} does not give gate shape "
                          f"{tuple(gate.shape)} with {m} compartment(s)")
        if gate.fn is not None and gate.upper is not None:
            raise IRError(f"{where}: a fitted gate (fn {gate.fn.name}) has no clip bound")
        for what in ("upper", "fixed_alpha"):
            v = getattr(gate, what)
            if v is not None and not (np.all(np.isfinite(v)) and np.all(np.asarray(v) >= 0)):
                raise IRError(f"{where}: {what} must be finite and non-negative")
        if gate.bits is not None and not 1 <= int(gate.bits) <= 31:
            raise IRError(f"{where}: bits must be 1..31, got {gate.bits}")
        if gate.weight_bits not in (None, 8, 16):
            raise IRError(f"{where}: weight_bits must be 8 or 16, got {gate.weight_bits}")
        if gate.units is not None and (gate.fn is None or not 1 <= int(gate.units) <= 255):
            raise IRError(f"{where}: units must be 1..255 neurons of a fitted gate, got {gate.units}")
        if gate.alpha_from is not None and gate.alpha_from not in by_name:
            raise IRError(f"{where}: alpha_from names {gate.alpha_from!r}, not an earlier gate")
        shapes[gate.name] = tuple(gate.shape)
        by_name[gate.name] = gate
    for gate in g.gates:
        if gate.partner is not None:
            p = by_name.get(gate.partner)
            if p is None or tuple(p.shape) != tuple(gate.shape):
                raise IRError(f"gate {gate.name!r}: partner {gate.partner!r} is not a gate of the same shape")
    if g.readout is None:
        raise IRError("the graph has no readout")
    _check_expr("readout", g.readout, shapes)
    if len(g.readout.shape) != 1:
        raise IRError(f"readout: shape {tuple(g.readout.shape)} is not (classes,)")


def _fmt_shape(s) -> str:
    return "x".join(str(int(d)) for d in s) or "scalar"


def _fmt_range(a) -> str:
    a = np.asarray(a, np.float64)
    if a.size == 0:
        return "[]"
    lo, hi = float(a.min()), float(a.max())
    return f"{lo:.6g}" if lo == hi else f"[{lo:.6g}..{hi:.6g}]"


def describe_map(m: L.LinearMap) -> str:
    """One line: kind, shapes and the map's parameters (weights summarized)."""
    kind = type(m).__name__.lower()
    head = f"{kind} {_fmt_shape(m.in_shape)} -> {_fmt_shape(m.out_shape)}"
    if isinstance(m, L.Conv):
        a = m.attrs()
        return (f"{head} w={_fmt_shape(m.w.shape)} {_fmt_range(m.w)} strides={a['strides']} "
                f"pads={a['pads']} dilations={a['dilations']} groups={a['groups']}")
    if isinstance(m, L.Scale):
        return f"{head} s={_fmt_range(m.s)}"
    if isinstance(m, L.Dense):
        return f"{head} w={_fmt_range(m.w)}"
    if isinstance(m, L.Sparse):
        return f"{head} nnz={m.m.nnz} w={_fmt_range(m.m.data)}"
    if isinstance(m, L.ChannelTile):
        return f"{head} reps={m.reps}"
    if isinstance(m, L.ChannelSum):
        return f"{head} f={_fmt_shape(m.f.shape)} {_fmt_range(m.f)}"
    if isinstance(m, L.GlobalDense):
        return f"{head} w={_fmt_shape(m.w.shape)} nnz={m.w.nnz} {_fmt_range(m.w.data)}"
    if isinstance(m, L.Embedded):
        return f"{head} channels={m.part.start}:{m.part.stop} of {describe_map(m.inner)}"
    if isinstance(m, L.PositionScaled):
        return f"{head} f={_fmt_shape(m.f.shape)} {_fmt_range(m.f)} of {describe_map(m.conv)}"
    return head


def _dump_expr(e: Expr) -> list:
    lines = [f"    + {src}: {describe_map(m)}" for src, m in e.maps.items()]
    return lines + [f"    bias {_fmt_range(e.bias)}"]


def dumps(g: TensorGraph) -> str:
    """The tensor IR as text, one gate per paragraph in program order (for
    ``amosc compile --dump-after``); weights are summarized by shape and range."""
    out = [f"tensor-graph {g.path.rsplit('/', 1)[-1]!r} opset {g.opset}",
           f"  input {INPUT} {_fmt_shape(g.input_shape)} (onnx {g.input_name!r})"]
    for gate in g.gates:
        act = gate.activation
        if gate.fn is not None:
            act += f" fn={gate.fn.name}"
        if gate.upper is not None:
            act += f" upper={_fmt_range(gate.upper)}"
        if gate.fit is not None:   # a segmented gate, or a fitted AMOS unit (unitfit.UnitFit)
            act += f" unit={gate.fit.bits}" if hasattr(gate.fit, "codes") else f" segments={gate.fit.segments}"
        for what in ("bits", "weight_bits", "units", "alpha_from", "partner"):
            if getattr(gate, what) is not None:
                act += f" {what}={getattr(gate, what)}"
        if gate.compartments > 1:
            act += f" compartments={gate.compartments}"
        out.append(f"  gate {gate.name} {_fmt_shape(gate.shape)} = {act}"
                   + (f"  ; onnx {gate.tensor!r}" if gate.tensor else ""))
        out += _dump_expr(gate.expr)
        if gate.factors is not None:
            for label, e in zip(("x", "s"), gate.factors):
                out.append(f"    factor {label} {_fmt_shape(e.shape)}")
                out += ["  " + line for line in _dump_expr(e)]
    out.append(f"  readout {_fmt_shape(g.readout.shape)}" + (f" then {g.softmax}" if g.softmax else "")
               + f"  ; onnx {g.output_name!r}")
    out += _dump_expr(g.readout)
    return "\n".join(out) + "\n"
