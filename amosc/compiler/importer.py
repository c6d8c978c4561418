"""ONNX importer: an ONNX classifier -> a :class:`TensorGraph` of gates and linear maps.

The model is normalized first (onnx version converter up to opset 13 when older,
shape inference), constants are folded, and every tensor is tracked either as a
constant or as an *affine expression* ``sum_s map_s(gate_s) + bias`` over the
outputs of activation gates. Linear ops only transform expressions, so BatchNorm,
biases, pooling and reshapes fold into the maps for free; an activation op closes
an expression into a new gate. Shapes are per sample: the batch axis is dropped.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from ..ir.tensor import INPUT, Expr, Gate, TensorGraph, value_bounds
from ..ir import linear as L
from .activations import ScalarFn

#: ONNX op types the importer supports (docs/onnx-support.md says how each maps).
SUPPORTED_OPS = (
    "Add", "AveragePool", "BatchNormalization", "Clip", "Constant", "ConstantOfShape", "Conv",
    "Div", "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LogSoftmax", "MatMul",
    "Mul", "Pad", "Relu", "Reshape", "Softmax", "Sub", "Sum", "Transpose",
    # activations realized as fitted AMOS units or exact ADC combinations
    "Elu", "Erf", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Selu", "Sigmoid",
    "Softplus", "Tanh",
    # pooling circuits and re-indexing
    "MaxPool", "Resize",
    # shape arithmetic, folded when its inputs are constant
    "Cast", "Concat", "Gather", "Shape", "Slice", "Squeeze", "Unsqueeze",
)
#: activation ops, handled by :meth:`_Importer.activation`
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu", "HardSigmoid", "Sigmoid", "Tanh", "Softplus",
               "Elu", "Selu", "Erf", "Gelu", "HardSwish")
TARGET_OPSET = 13

#: The attributes each op's import rule understands (for a node that reads the network
#: input; constant nodes are folded by ``onnx.reference``): name -> ANY (every value is
#: handled) or the one value the rule supports (the ONNX default). Any other attribute, or
#: another value, is refused naming node, op and attribute, never silently dropped.
ANY = object()
_POOL = {"auto_pad": ANY, "ceil_mode": ANY, "kernel_shape": ANY, "pads": ANY, "strides": ANY}
ATTRIBUTES: dict[str, dict[str, object]] = {
    "Relu": {}, "PRelu": {}, "Sigmoid": {}, "Tanh": {}, "Softplus": {}, "Erf": {}, "HardSwish": {},
    "Clip": {"min": ANY, "max": ANY}, "LeakyRelu": {"alpha": ANY}, "HardSigmoid": {"alpha": ANY, "beta": ANY},
    "Elu": {"alpha": ANY}, "Selu": {"alpha": ANY, "gamma": ANY}, "Gelu": {"approximate": ANY},
    "Conv": {"auto_pad": ANY, "dilations": ANY, "group": ANY, "kernel_shape": ANY, "pads": ANY, "strides": ANY},
    "BatchNormalization": {"epsilon": ANY, "momentum": ANY, "training_mode": ANY},
    "Gemm": {"alpha": ANY, "beta": ANY, "transA": ANY, "transB": ANY},
    "MatMul": {}, "Add": {}, "Sum": {}, "Sub": {}, "Mul": {}, "Div": {}, "Identity": {},
    "Dropout": {"seed": ANY, "ratio": ANY},  # inference: identity whatever the ratio
    "Flatten": {"axis": ANY}, "Reshape": {"allowzero": ANY}, "Transpose": {"perm": ANY},
    "Pad": {"mode": ANY, "pads": ANY, "value": ANY}, "Concat": {"axis": ANY},
    "AveragePool": {**_POOL, "count_include_pad": ANY, "dilations": [1, 1]},
    "MaxPool": {**_POOL, "dilations": ANY, "storage_order": ANY},  # storage_order: Indices only
    "GlobalAveragePool": {},
    "Resize": {"mode": ANY, "coordinate_transformation_mode": ANY, "nearest_mode": ANY,
               "cubic_coeff_a": ANY,  # read only by mode 'cubic', which is refused
               "exclude_outside": 0, "extrapolation_value": ANY, "antialias": 0,
               "keep_aspect_ratio_policy": "stretch"},
    "Softmax": {"axis": ANY}, "LogSoftmax": {"axis": ANY},
    "Shape": {"start": ANY, "end": ANY},
}


def _plain(v):
    """An attribute value in comparable form: lists for sequences, str for bytes."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _str(v) -> str:
    """A string attribute as onnx.helper returns it (bytes) or as a default (str)."""
    return v.decode() if isinstance(v, bytes) else v


class _Importer:
    def __init__(self, model: onnx.ModelProto, path: str, graph: "TensorGraph", maxpool: str = "tree"):
        self.maxpool = maxpool
        self.model = model
        self.path = path
        self.g = graph
        self.env: dict[str, object] = {}
        self.gates: dict[str, Gate] = {}

    # -- gates -----------------------------------------------------------------
    def gate(self, node, e: Expr, label: str, *, upper=None, fn=None, pre_tensor=None, tensor=None,
             suffix: str = "", alpha_from=None, compartments: int = 1) -> Expr:
        """Close expression ``e`` into a new gate; returns the gate's output expression.
        With m compartments, ``e`` holds m per channel and the gate has C = e.shape[0] / m."""
        base = node.name or node.output[0]
        name = f"g{len(self.g.gates)}_{base}" + (f"_{suffix}" if suffix else "")
        shape = (e.shape[0] // compartments, *e.shape[1:])
        spec = Gate(name, shape, e, label, upper,
                        node.input[0] if pre_tensor is None else pre_tensor,
                        node.output[0] if tensor is None else tensor, node.name,
                        fn=fn, alpha_from=alpha_from, compartments=compartments)
        self.g.gates.append(spec)
        self.gates[name] = spec
        return Expr(shape, {name: L.identity(shape)}, np.zeros(shape), gate=name)

    def activation(self, node, op, a) -> Expr:
        e = self.expr(node)
        if op == "Relu":
            return self.gate(node, e, "relu", compartments=e.pooled)
        if op == "Clip":
            lo, hi = (self.const(node, j) for j in (1, 2)) if len(node.input) > 1 else (None, None)
            lo = float(a.get("min", -np.inf) if lo is None else np.asarray(lo).ravel()[0])
            hi = float(a.get("max", np.inf) if hi is None else np.asarray(hi).ravel()[0])
            if hi < lo:
                self.fail(node, f"Clip bounds min={lo} > max={hi}")
            if e.pooled > 1 and lo != 0:  # (the import loop lets only Relu and Clip reach here)
                self.fail(node, "a lateral-inhibition pool of a pre-activation (--maxpool lipool) must feed "
                                "Relu or Clip(0, max) directly")
            if np.isfinite(lo):                       # lo + clip(x - lo, 0, hi - lo), hi may be inf
                upper = hi - lo if np.isfinite(hi) else None
                label = "relu" if upper is None else f"relu{hi:g}" if lo == 0 else f"clip[{lo:g},{hi:g}]"
                if lo == 0:
                    return self.gate(node, e, label, upper=upper, compartments=e.pooled)
                out = self.gate(node, e.scaled(1.0, -lo), label, upper=upper, pre_tensor="", tensor="")
                return out.scaled(1.0, lo)
            if np.isfinite(hi):                       # hi - relu(hi - x)
                out = self.gate(node, e.scaled(-1.0, hi), f"clip[-inf,{hi:g}]", pre_tensor="", tensor="")
                return out.scaled(-1.0, hi)
            return e
        if op in ("LeakyRelu", "PRelu"):              # relu(x) - slope * relu(-x): two exact ADCs
            slope = a.get("alpha", 0.01) if op == "LeakyRelu" else self.const(node, 1, "slope")
            pos = self.gate(node, e, "relu", tensor="", suffix="pos")
            neg = self.gate(node, e.scaled(-1.0), "relu", pre_tensor="", tensor="", suffix="neg")
            return pos.plus(self.elementwise(node, neg, -np.asarray(slope, np.float64)))
        if op == "HardSigmoid":                       # clip(alpha x + beta, 0, 1)
            return self.gate(node, e.scaled(a.get("alpha", 0.2), a.get("beta", 0.5)), "hardsigmoid",
                             upper=1.0, pre_tensor="")
        if op == "Gelu":
            approx = _str(a.get("approximate", "none"))
            return self.gate(node, e, "gelu", fn=ScalarFn("gelu_tanh" if approx == "tanh" else "gelu"))
        if op == "Elu":
            return self.gate(node, e, "elu", fn=ScalarFn("elu", (float(a.get("alpha", 1.0)),)))
        if op == "Selu":
            return self.gate(node, e, "selu", fn=ScalarFn(
                "selu", (float(a.get("alpha", 1.67326319217681884765625)),
                         float(a.get("gamma", 1.05070102214813232421875)))))
        name = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Erf": "erf",
                "HardSwish": "hardswish"}[op]
        return self.gate(node, e, name, fn=ScalarFn(name))

    def fail(self, node, msg):
        raise ModelError(f"{self.path}: node {node.name or '<unnamed>'!r} ({node.op_type}): {msg}")

    # -- helpers ---------------------------------------------------------------
    def const(self, node, i, what="input"):
        if i >= len(node.input) or not node.input[i]:
            return None
        v = self.env.get(node.input[i])
        if isinstance(v, Expr):
            self.fail(node, f"{what} {node.input[i]!r} must be a constant (an initializer), "
                            f"but it is computed from the network input")
        if v is None:
            self.fail(node, f"unknown input tensor {node.input[i]!r}")
        return v

    def expr(self, node, i=0) -> Expr:
        v = self.env.get(node.input[i])
        if not isinstance(v, Expr):
            self.fail(node, f"input {node.input[i]!r} must depend on the network input")
        return v

    @staticmethod
    def attrs(node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def value_bounds(self, e: Expr) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise (lo, hi) of an expression over every possible input (see
        :func:`~amosc.ir.tensor.value_bounds`)."""
        return value_bounds(e, self.gates)

    def check_attributes(self, node, a: dict) -> None:
        """Refuse an attribute the op's rule does not declare, or a value it does not handle."""
        known = ATTRIBUTES.get(node.op_type, {})
        for name, value in a.items():
            if name not in known:
                self.fail(node, f"attribute {name!r} is not supported by amosc's {node.op_type} "
                                f"(it understands: {', '.join(sorted(known)) or 'none'})")
            want = known[name]
            if want is not ANY and _plain(value) != _plain(want):
                self.fail(node, f"attribute {name}={_plain(value)!r} is not supported (only "
                                f"{_plain(want)!r})")

    def per_sample(self, node, c: np.ndarray, shape) -> np.ndarray:
        """Broadcast a constant operand to the per-sample shape (dropping a batch axis of 1)."""
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > len(shape):
            if c.ndim != len(shape) + 1 or c.shape[0] != 1:
                self.fail(node, f"constant of shape {c.shape} would broadcast over the batch axis")
            c = c[0]
        try:
            return np.broadcast_to(c, shape).copy()
        except ValueError:
            self.fail(node, f"constant of shape {c.shape} does not broadcast to {shape}")

    def elementwise(self, node, e: Expr, factor: np.ndarray) -> Expr:
        if np.size(factor) == 1:
            return e.scaled(float(np.asarray(factor, np.float64).ravel()[0]))
        full = self.per_sample(node, factor, e.shape)
        ch = full.reshape(full.shape[0], -1) if full.ndim else full.reshape(1, 1)
        if full.ndim and np.all(ch == ch[:, :1]):
            m = L.Scale(e.shape, e.shape, ch[:, 0].copy())
        else:
            import scipy.sparse as sp
            m = L.Sparse(e.shape, e.shape, sp.diags(full.ravel()).tocsr())
        return e.apply(m)

    # -- op handlers (expression inputs) --------------------------------------
    def op_Conv(self, node, a):
        e = self.expr(node)
        w = self.const(node, 1, "weight")
        b = self.const(node, 2, "bias")
        if len(e.shape) != 3 or w.ndim != 4:
            self.fail(node, f"only 2-D convolution on (C, H, W) tensors is supported; input is {e.shape}")
        kh, kw = w.shape[2:]
        strides = tuple(a.get("strides", (1, 1)))
        dil = tuple(a.get("dilations", (1, 1)))
        pads = self._pads(node, a, e.shape[1:], (kh, kw), strides, dil)
        m = L.conv_map(e.shape, w, strides, pads, dil, a.get("group", 1))
        extra = None if b is None else np.asarray(b, np.float64)[:, None, None]
        return self._apply_or_relay(node, e, m, extra)[1]

    def _apply_or_relay(self, node, e: Expr, m: L.LinearMap, extra=None):
        """(the input used, m applied to it). When m composed with e's maps is no convolution
        (a padded conv or pool over a max-pool's taps) it would be a sparse matrix per source,
        multiplied again by every reader (a fitted unit's segments); a relay gate holds e
        instead (exact on a max-pool of ReLU codes), and m reads the gate."""
        sparse = lambda x: any(isinstance(v, L.Sparse) for v in x.maps.values())  # noqa: E731
        if not isinstance(m, L.Conv) or sparse(e):
            return e, e.apply(m, extra)
        # a pair of convolutions is predicted from shapes (the product is never built); other
        # maps (e.g. a concatenation's) are found sparse after composing
        predicted = any(L.conv_pair_goes_sparse(m, v) for v in e.maps.values())
        out = None if predicted else e.apply(m, extra)
        if predicted or sparse(out):
            relayed = self._relay(node, e)
            if relayed is not None:
                return relayed, relayed.apply(m, extra)
        return e, e.apply(m, extra) if out is None else out

    def _relay(self, node, e: Expr, shifted: bool = False):
        """A relay gate holding the non-negative ``e`` (None when e may be negative): exact on
        the source's step (``alpha_from``) when e is an integer combination of one ReLU gate's
        codes (a max-pool), else one more K-bit quantization. ``shifted``: e bounded below by
        lo < 0 (range analysis, e.g. a max-pool of GELU) is held as relu(e - lo) + lo."""
        lo = float(self.value_bounds(e)[0].min())
        if lo < 0:
            if not shifted or not np.isfinite(lo):
                return None
            return self._relay(node, e.scaled(1.0, -lo)).scaled(1.0, lo)
        roots = {(self.gates[s].alpha_from or s) if s in self.gates else s for s in e.maps}
        root = roots.pop() if len(roots) == 1 else None
        weights = {L.Conv: lambda m: m.w, L.Scale: lambda m: m.s, L.Sparse: lambda m: m.m.data}
        integer = all(type(m) in weights and np.array_equal(weights[type(m)](m), np.round(weights[type(m)](m)))
                      for m in e.maps.values())
        exact = (integer and root in self.gates and self.gates[root].fn is None
                 and self.gates[root].compartments == 1 and not np.any(e.bias))
        return self.gate(node, e, "relay", pre_tensor="", tensor="", suffix="in",
                         alpha_from=root if exact else None)

    def _pads(self, node, a, hw, k, strides, dil):
        auto = _str(a.get("auto_pad", "NOTSET"))
        if auto in ("NOTSET", ""):
            p = tuple(a.get("pads", (0, 0, 0, 0)))
            return (p[0], p[1], p[2], p[3])
        if auto == "VALID":
            return (0, 0, 0, 0)
        out = []
        for n, kk, s, d in zip(hw, k, strides, dil):
            total = max((-(-n // s) - 1) * s + (kk - 1) * d + 1 - n, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return (out[0][0], out[1][0], out[0][1], out[1][1])

    def op_BatchNormalization(self, node, a):
        e = self.expr(node)
        if a.get("training_mode", 0):
            self.fail(node, "training_mode=1 is not an inference graph")
        scale, bias, mean, var = (self.const(node, i) for i in range(1, 5))
        if self.g.first_norm is None:  # the training statistics nearest the input (calibration check)
            self.g.first_norm = (node.name or node.output[0], e, np.asarray(mean, np.float64),
                                 np.asarray(var, np.float64))
        g = scale / np.sqrt(var + a.get("epsilon", 1e-5))
        m = L.Scale(e.shape, e.shape, g.astype(np.float64))
        shift = (bias - mean * g).astype(np.float64).reshape((-1,) + (1,) * (len(e.shape) - 1))
        return e.apply(m, np.broadcast_to(shift, e.shape))

    def op_Gemm(self, node, a):
        e = self.expr(node)
        if a.get("transA", 0):
            self.fail(node, "transA=1 is not supported (the activation must be the left operand)")
        if len(e.shape) != 1:
            self.fail(node, f"Gemm input must be flat (F,) per sample, got {e.shape}")
        w = np.asarray(self.const(node, 1, "weight B"), np.float64)
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        c = self.const(node, 2, "bias C")
        m = L.Dense(e.shape, (w.shape[0],), w)
        extra = None if c is None else self.per_sample(node, np.asarray(c) * a.get("beta", 1.0), (w.shape[0],))
        return self._dense_operand(node, e, w.shape[0]).apply(m, extra)

    #: a dense layer composed with its input's maps may store at most this many weights more
    #: than it reads values before its input is relayed (see _dense_operand)
    RELAY_DENSE_WEIGHTS = 1 << 24

    def _dense_operand(self, node, e: Expr, fout: int) -> Expr:
        """``e``, or a relay gate holding it when a dense layer of ``fout`` outputs composed with
        e's maps would store a weight for every value of a much larger source (VGG's flattened
        max-pool: its taps read the whole pre-pool map, so Gemm∘taps is 4x the Gemm, 3 GB in
        float64 for VGG-19), and always when those maps read a fitted unit, whose segment
        expansion multiplies the composition later (gelu_wide's head: 4.9 GB). See
        :meth:`_relay` (e bounded below by the range analysis, shifted when negative)."""
        size = int(np.prod(e.shape))
        wide = [s for s, m in e.maps.items() if not isinstance(m, (L.Scale, L.GlobalDense, L.Dense))
                and int(np.prod(m.in_shape)) > 2 * size]
        extra = sum(fout * (int(np.prod(e.maps[s].in_shape)) - size) for s in wide)
        # a fitted source is expanded into segments later (tens per element), and a fitted
        # reader tiles the rows again: such a composition grows far beyond this estimate
        fitted = any(s in self.gates and self.gates[s].fn is not None for s in wide)
        if extra <= self.RELAY_DENSE_WEIGHTS and not fitted:
            return e
        return self._relay(node, e, shifted=True) or e

    def op_MatMul(self, node, a):
        e = self.expr(node)
        w = np.asarray(self.const(node, 1, "weight"), np.float64)
        if len(e.shape) != 1 or w.ndim != 2:
            self.fail(node, f"MatMul supports flat (F,) activations times a 2-D weight; got {e.shape} @ {w.shape}")
        return self._dense_operand(node, e, w.shape[1]).apply(L.Dense(e.shape, (w.shape[1],), w.T.copy()))

    def _binary(self, node, sign):
        return self._combine(node, *(self.env.get(n) for n in node.input[:2]), sign)

    def _combine(self, node, x, y, sign):
        """x + sign * y for activations or constants (at least one an activation)."""
        if isinstance(x, Expr) and isinstance(y, Expr):
            x, y = self.broadcast(node, x, y)
            return x.plus(y, sign)
        if isinstance(x, Expr):
            if np.size(y) == 1:
                return x.scaled(1.0, sign * float(np.asarray(y).ravel()[0]))
            return Expr(x.shape, x.maps, x.bias + sign * self.per_sample(node, y, x.shape))
        if not isinstance(y, Expr):
            self.fail(node, "no input depends on the network input")
        e = y
        if np.size(x) == 1:
            return e.scaled(float(sign), float(np.asarray(x).ravel()[0]))
        if sign < 0:
            e = e.apply(L.Scale(e.shape, e.shape, -np.ones(e.shape[0])))
        return Expr(e.shape, e.maps, e.bias + self.per_sample(node, x, e.shape))

    def broadcast(self, node, x: Expr, y: Expr):
        """Both activations broadcast (numpy rules, per sample) to their common shape."""
        if x.shape == y.shape:
            return x, y
        try:
            shape = np.broadcast_shapes(x.shape, y.shape)
        except ValueError:
            self.fail(node, f"operand shapes {x.shape} and {y.shape} do not broadcast")
        if len(x.shape) != len(shape) or len(y.shape) != len(shape):
            self.fail(node, f"operand shapes {x.shape} and {y.shape} differ in rank")

        def to(e):
            if e.shape == shape:
                return e
            idx = np.broadcast_to(np.arange(int(np.prod(e.shape))).reshape(e.shape), shape)
            return self._select(e, np.ascontiguousarray(idx))
        return to(x), to(y)

    def op_Add(self, node, a):
        return self._binary(node, +1)

    def op_Sum(self, node, a):
        """n-ary Add (numpy broadcasting), as older exporters write residual joins."""
        acc = self.env.get(node.input[0])
        for name in node.input[1:]:
            acc = self._combine(node, acc, self.env.get(name), +1)
        if not isinstance(acc, Expr):
            self.fail(node, "no input depends on the network input")
        return acc

    def op_Sub(self, node, a):
        return self._binary(node, -1)

    def op_Mul(self, node, a):
        x, y = (self.env.get(n) for n in node.input[:2])
        if isinstance(x, Expr) and isinstance(y, Expr):
            return self.product(node, x, y)
        e, c = (x, y) if isinstance(x, Expr) else (y, x)
        return self.elementwise(node, e, c)

    def _fused(self, a: Expr, b: Expr):
        """x * (alpha + beta * g(gamma x + delta)) when b is an affine function of a fitted
        gate g whose input is an affine function of a's root: one fused fitted unit."""
        ra, sa, oa = a.root()
        rb, sb, ob = b.root()
        gate = self.gates.get(rb.gate) if rb.gate else None
        if gate is None or gate.fn is None:
            return None
        rg, sg, og = gate.expr.root()
        if rg is not ra or a.shape != b.shape:
            return None
        fn = ScalarFn("gated", (sa, oa, ob, sb, sg, og), gate.fn)
        return ra, fn

    def product(self, node, x: Expr, y: Expr) -> Expr:
        for a, b in ((x, y), (y, x)):
            got = self._fused(a, b)
            if got is not None:
                root, fn = got
                return self.gate(node, root, fn.canonical(), fn=fn, pre_tensor="")
        # x * y = ((x + y) / 2)^2 - ((x - y) / 2)^2: two fitted square units
        factors = None
        for a, b in ((x, y), (y, x)):   # one value per channel times a map: a gated circuit may replace them
            if len(a.shape) == 3 and tuple(b.shape) == (a.shape[0], 1, 1) and a.shape[1] * a.shape[2] > 1:
                factors = (a, b)
        x, y = self.broadcast(node, x, y)
        sq = ScalarFn("square")
        p = self.gate(node, x.plus(y).scaled(0.5), "square", fn=sq, pre_tensor="", tensor="", suffix="sum")
        m = self.gate(node, x.plus(y, -1.0).scaled(0.5), "square", fn=sq, pre_tensor="", tensor="",
                      suffix="diff")
        self.gates[p.gate].partner = m.gate
        self.gates[p.gate].factors = factors
        return p.plus(m, -1.0)

    def op_Div(self, node, a):
        e = self.expr(node)
        c = self.const(node, 1, "divisor")
        if np.any(np.asarray(c) == 0):
            self.fail(node, "division by zero")
        return self.elementwise(node, e, 1.0 / np.asarray(c, np.float64))

    def op_Identity(self, node, a):
        return self.expr(node)

    op_Dropout = op_Identity

    def op_Flatten(self, node, a):
        e = self.expr(node)
        if a.get("axis", 1) != 1:
            self.fail(node, f"Flatten axis={a.get('axis')} is not supported (only axis=1)")
        return self._reshape(e, (int(np.prod(e.shape)),))

    def _reshape(self, e, shape):
        shape = tuple(int(s) for s in shape)
        maps = {s: m.reshaped(shape) for s, m in e.maps.items()}
        return Expr(shape, maps, e.bias.reshape(shape))

    def op_Reshape(self, node, a):
        e = self.expr(node)
        target = [int(s) for s in np.asarray(self.const(node, 1, "shape"))]
        full = (1, *e.shape)
        if not a.get("allowzero", 0):
            target = [full[i] if s == 0 and i < len(full) else s for i, s in enumerate(target)]
        try:
            out = np.empty(full).reshape(target).shape
        except ValueError:
            self.fail(node, f"cannot reshape {full} to {target}")
        if out[0] != 1:
            self.fail(node, f"reshape to {target} mixes the batch axis with features")
        return self._reshape(e, out[1:])

    @staticmethod
    def _select(e: Expr, idx: np.ndarray) -> Expr:
        """Re-index: output position p takes input flat index idx[p] (-1: zero)."""
        import scipy.sparse as sp
        flat = idx.ravel()
        ok = flat >= 0
        m = sp.csr_matrix((np.ones(int(ok.sum())), (np.nonzero(ok)[0], flat[ok])),
                          shape=(flat.size, int(np.prod(e.shape))))
        return e.apply(L.sparse_map(e.shape, idx.shape, m))

    def op_Transpose(self, node, a):
        e = self.expr(node)
        perm = list(a.get("perm", range(len(e.shape) + 1)[::-1]))
        if perm[0] != 0:
            self.fail(node, f"perm {perm} moves the batch axis")
        p = [q - 1 for q in perm[1:]]
        return self._select(e, np.arange(int(np.prod(e.shape))).reshape(e.shape).transpose(p))

    def op_Pad(self, node, a):
        e = self.expr(node)
        mode = _str(a.get("mode", "constant"))
        if mode != "constant":
            self.fail(node, f"Pad mode {mode!r} is not supported (only 'constant')")
        pads = self.const(node, 1, "pads") if len(node.input) > 1 else a.get("pads")
        pads = [int(v) for v in np.asarray(pads)]
        value = self.const(node, 2, "constant_value") if len(node.input) > 2 else None
        value = float(np.asarray(value).ravel()[0]) if value is not None and np.size(value) else 0.0
        if len(node.input) > 3 and node.input[3]:
            self.fail(node, "Pad with an axes input is not supported")
        r = len(e.shape) + 1
        if len(pads) != 2 * r or pads[0] or pads[r]:
            self.fail(node, f"pads {pads} must leave the batch axis alone")
        before, after = pads[1:r], pads[r + 1:]
        if min(before + after) < 0:
            self.fail(node, f"negative pads {pads} (cropping) are not supported")
        idx = np.pad(np.arange(int(np.prod(e.shape))).reshape(e.shape), list(zip(before, after)),
                     constant_values=-1)
        out = self._select(e, idx)
        if value:
            out.bias = out.bias + value * (idx < 0)
        return out

    def op_Concat(self, node, a):
        parts = [self.env.get(n) for n in node.input]
        if not all(isinstance(p, Expr) for p in parts):
            self.fail(node, "Concat of activations with constants is not supported")
        r = len(parts[0].shape) + 1
        axis = a.get("axis", 1) % r
        if axis == 0:
            self.fail(node, "Concat along the batch axis")
        shapes = [p.shape for p in parts]
        ax = axis - 1
        if any(len(s) != r - 1 or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:] for s in shapes):
            self.fail(node, f"cannot concatenate shapes {shapes} along axis {axis}")
        total = sum(s[ax] for s in shapes)
        out_shape = shapes[0][:ax] + (total,) + shapes[0][ax + 1:]
        maps, biases, offset = {}, [], 0
        for p in parts:
            if ax == 0:  # channels: each part's maps embedded as they are (L.Embedded), no copy
                for src, m in p.maps.items():
                    L.accumulate(maps, src, L.embed(m, offset, total))
                biases.append(p.bias)
                offset += p.shape[ax]
                continue
            # embed p at [offset, offset + p.shape[ax]) along ax
            pos = np.full(out_shape, -1, np.int64)
            sl = [slice(None)] * len(out_shape)
            sl[ax] = slice(offset, offset + p.shape[ax])
            pos[tuple(sl)] = np.arange(int(np.prod(p.shape))).reshape(p.shape)
            emb = self._select(p, pos)
            for src, m in emb.maps.items():
                L.accumulate(maps, src, m)
            biases.append(p.bias)
            offset += p.shape[ax]
        return Expr(out_shape, maps, np.concatenate(biases, axis=ax))

    def _pool(self, node, e, k, strides, pads, counted):
        """Average pooling with zero ``pads``; a window is divided by its number of elements
        inside the input padded by ``counted`` (pads for count_include_pad=1, none for 0; the
        extra end padding of ceil_mode=1 never counts)."""
        c = e.shape[0]
        w = np.full((c, 1, *k), 1.0 / (k[0] * k[1]))
        m = L.conv_map(e.shape, w, strides, pads, (1, 1), c)
        if tuple(counted) != tuple(pads):
            (ct, cl, cb, cr), (h, wd) = counted, e.shape[1:]
            region = (1, h + ct + cb, wd + cl + cr)   # where window elements count
            rest = (pads[0] - ct, pads[1] - cl, pads[2] - cb, pads[3] - cr)
            cnt = L.conv_map(region, np.ones((1, 1, *k)), strides, rest, (1, 1), 1).apply(
                np.ones((1, *region)))[0, 0]
            # each window divided by its own size: a factor per output position
            m = L.PositionScaled(m.in_shape, m.out_shape, m, k[0] * k[1] / cnt)
            if float(self.value_bounds(e)[0].min()) >= 0:
                plain = all(isinstance(v, L.Scale) or (isinstance(v, L.Embedded) and isinstance(v.inner, L.Scale))
                            for v in e.maps.values())
                if not plain:
                    # the padded pool of a map that is not a gate's values (e.g. a max-pool's
                    # taps) composes into no convolution: relay the input first (>= 0; exact on
                    # the source's step when it is a max-pool of one ReLU gate's codes)
                    e = self._relay(node, e)
                # a convolution reading a position-dependent map is no convolution: lowered,
                # it would be a sparse matrix of C_in * k^2 synapses per output (130 M for one
                # Inception-v2 pool projection). The input is non-negative (range analysis), so
                # a relay gate holds the average exactly as a ReLU of it (its K-bit code adds
                # one quantization) and the consumer reads the gate by a convolution.
                return self.gate(node, e.apply(m), "avgpool", pre_tensor="")
        return e.apply(m)

    def op_AveragePool(self, node, a):
        e = self.expr(node)
        k = tuple(a["kernel_shape"])
        if len(k) != 2 or len(e.shape) != 3:
            self.fail(node, f"only 2-D pooling on (C, H, W) is supported; input {e.shape}")
        strides = tuple(a.get("strides", (1, 1)))
        pads = self._pads(node, a, e.shape[1:], k, strides, (1, 1))
        counted = pads if a.get("count_include_pad", 0) else (0, 0, 0, 0)
        if a.get("ceil_mode", 0):
            pads = _ceil_pads(e.shape[1:], k, strides, pads)
        return self._pool(node, e, k, strides, pads, counted)

    def op_MaxPool(self, node, a):
        e = self.expr(node)
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the Indices output of MaxPool is not supported")
        k = tuple(a["kernel_shape"])
        if len(k) != 2 or len(e.shape) != 3:
            self.fail(node, f"only 2-D pooling on (C, H, W) is supported; input {e.shape}")
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            self.fail(node, "dilated MaxPool is not supported")
        strides = tuple(a.get("strides", (1, 1)))
        pads = self._pads(node, a, e.shape[1:], k, strides, (1, 1))
        if a.get("ceil_mode", 0):
            pads = _ceil_pads(e.shape[1:], k, strides, pads)
        src = self.gates.get(e.gate) if e.gate else None
        codes = src is not None and src.fn is None   # one ReLU-family gate's codes: exact max units
        if self.maxpool == "lipool":
            return self._lateral_inhibition_pool(node, e, k, strides, pads, codes)
        if any(pads) and not codes:
            low = float(self.value_bounds(e)[0].min())
            if low < 0:
                self.fail(node, "padded (or ceil_mode=1) MaxPool needs a non-negative input (padding reads 0); "
                                f"this input can be negative (range analysis: down to {low:.4g})")
        # tap t of every window: a one-hot depthwise convolution, so that it composes with the
        # source's and the consumer's maps into convolutions; padding reads 0, max-neutral
        # for x >= 0
        taps = [L.conv_map(e.shape, tap, strides, pads, (1, 1), e.shape[0]) for tap in _window_taps(e.shape[0], k)]
        e, first = self._apply_or_relay(node, e, taps[0])
        terms = [first] + [e.apply(t) for t in taps[1:]]
        # a tree of max(p, q) = q + relu(p - q); each relu is an exact AMOS ADC when the input
        # is a ReLU gate's code (same step, see quantize.lower)
        level = 0
        while len(terms) > 1:
            nxt = []
            for t in range(0, len(terms) - 1, 2):
                p, q = terms[t], terms[t + 1]
                r = self.gate(node, p.plus(q, -1.0), "max", pre_tensor="", tensor="",
                              suffix=f"max{level}_{t // 2}", alpha_from=e.gate if codes else None)
                nxt.append(q.plus(r))
            if len(terms) % 2:
                nxt.append(terms[-1])
            terms = nxt
            level += 1
        return terms[0]

    def _lateral_inhibition_pool(self, node, e, k, strides, pads, nonneg):
        """MaxPool as one unit per output with a compartment per window tap, joined by max
        (the burst paper's LIPooling on AMOS codes): the taps' codes share their source's
        step, so the max of the codes is the code of the max, exact and one layer deep.
        A pool of a pre-activation (Conv -> MaxPool -> Relu) is left pending and becomes the
        ReLU gate itself: relu(max_i y_i) = max_i relu(y_i), one gate at the pooled size."""
        c, m = e.shape[0], k[0] * k[1]
        w = np.stack(_window_taps(c, k), axis=1).reshape(c * m, 1, *k)  # row c * m + t: tap t
        taps = e.apply(L.conv_map(e.shape, w, strides, pads, (1, 1), c))
        if nonneg:
            return self.gate(node, taps, "lipool", pre_tensor="", alpha_from=e.gate, compartments=m)
        if e.gate or e.pooled > 1:
            what = "a fitted (segmented) activation" if e.gate else "another pending pool"
            self.fail(node, f"lateral-inhibition pooling (--maxpool lipool) needs its input to be one "
                            f"ReLU-family activation's AMOS code, or a pre-activation that feeds a ReLU; "
                            f"this input is {what}. Use --maxpool tree (exact max units on any input)")
        if any(pads):
            self.fail(node, "padded lateral-inhibition pooling of a pre-activation: padding reads 0, "
                            "not -inf, for inputs that can be negative. Use --maxpool tree")
        return Expr(taps.shape, taps.maps, taps.bias, pooled=m)

    def op_Resize(self, node, a):
        e = self.expr(node)
        mode = _str(a.get("mode", "nearest"))
        if mode != "nearest":
            self.fail(node, f"Resize mode {mode!r} is not supported (only 'nearest')")
        ctm = _str(a.get("coordinate_transformation_mode", "half_pixel"))
        nm = _str(a.get("nearest_mode", "round_prefer_floor"))
        scales = self.const(node, 2, "scales") if len(node.input) > 2 and node.input[2] else None
        sizes = self.const(node, 3, "sizes") if len(node.input) > 3 and node.input[3] else None
        full = (1, *e.shape)
        if sizes is not None and np.size(sizes):
            out = tuple(int(v) for v in sizes)
            sc = [o / i for o, i in zip(out, full)]
        elif scales is not None and np.size(scales):
            sc = [float(v) for v in scales]
            out = tuple(int(np.floor(i * s)) for i, s in zip(full, sc))
        else:
            self.fail(node, "Resize needs constant scales or sizes")
        if out[0] != 1 or len(out) != len(full):
            self.fail(node, f"Resize to {out} changes the batch axis or the rank")
        if ctm not in ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners"):
            self.fail(node, f"coordinate_transformation_mode {ctm!r} is not supported")
        axes = []
        for ax, (n_in, n_out, s_) in enumerate(zip(full, out, sc)):
            o = np.arange(n_out, dtype=np.float64)
            if ctm == "asymmetric":
                xin = o / s_
            elif ctm == "align_corners":
                xin = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)
            elif ctm == "pytorch_half_pixel" and n_out == 1:
                xin = np.zeros_like(o)
            else:
                xin = (o + 0.5) / s_ - 0.5
            if nm == "floor":
                idx = np.floor(xin)
            elif nm == "ceil":
                idx = np.ceil(xin)
            elif nm == "round_prefer_ceil":
                idx = np.floor(xin + 0.5)
            else:  # round_prefer_floor
                idx = np.ceil(xin - 0.5)
            axes.append(np.clip(idx, 0, n_in - 1).astype(np.int64))
        grid = np.arange(int(np.prod(e.shape))).reshape(e.shape)
        idx = grid[np.ix_(*axes[1:])]
        return self._select(e, idx)

    def op_GlobalAveragePool(self, node, a):
        e = self.expr(node)
        if len(e.shape) != 3:
            self.fail(node, f"expects a (C, H, W) input, got {e.shape}")
        return self._pool(node, e, e.shape[1:], (1, 1), (0, 0, 0, 0), (0, 0, 0, 0))


def load_model(path) -> tuple[onnx.ModelProto, str]:
    """Read an ONNX file (with its external tensor data) and return (model, sha256), the
    digest covering the file and every external data byte it pulls in."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (the graph has no nodes)")
    digest = hashlib.sha256(data)
    _load_external_data(model, path, digest)
    _check_tensor_sizes(model, path)
    return model, digest.hexdigest()


def _load_external_data(model: onnx.ModelProto, path: str, digest) -> None:
    """Read external tensor data relative to the model file's directory. A location
    outside that directory (absolute, ``..``, or a symlink leading out) is refused."""
    from onnx import external_data_helper as ext
    base = os.path.dirname(os.path.abspath(path))
    root = os.path.realpath(base)
    for t in ext._get_all_tensors(model):
        if not ext.uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"{path}: tensor {t.name!r}: external data location {loc!r}"
        if not loc or os.path.isabs(loc) or ".." in re.split(r"[\\/]", loc):
            raise ModelError(f"{where} must be a relative path inside the model's directory {base}")
        real = os.path.realpath(os.path.join(base, loc))
        if os.path.commonpath([root, real]) != root:
            raise ModelError(f"{where} leads outside the model's directory {base} (through a symlink)")
        if not os.path.isfile(real):
            raise ModelError(f"{where}: no such file in {base}")
        try:
            ext.load_external_data_for_tensor(t, base)
        except Exception as exc:
            raise ModelError(f"{where}: cannot be read ({type(exc).__name__}: {exc})") from None
        digest.update(t.name.encode() + b"\0" + t.raw_data)


_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _check_tensor_sizes(model: onnx.ModelProto, path: str) -> None:
    """Every initializer's declared dims must match the data it carries (before numpy
    is asked to reshape or allocate anything)."""
    from onnx import external_data_helper as ext
    for t in ext._get_all_tensors(model):
        if any(d < 0 for d in t.dims):
            raise ModelError(f"{path}: tensor {t.name!r} has negative dims {list(t.dims)}")
        n = int(np.prod([int(d) for d in t.dims], dtype=object)) if t.dims else 1
        if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            field = onnx.helper.tensor_dtype_to_field(t.data_type)
        except Exception:  # a type numpy_helper cannot read either; it fails on its own later
            continue
        if t.HasField("raw_data"):
            have, need, unit = len(t.raw_data), n * itemsize, "bytes"
        else:
            have, unit = len(getattr(t, field)), "values"
            need = 2 * n if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else n
        if t.data_type in _PACKED_4BIT:
            need = (n + 1) // 2  # packed two to a byte or an int32
        if have != need:
            raise ModelError(f"{path}: tensor {t.name!r} declares dims {list(t.dims)} ({n} elements) "
                             f"but carries {have} {unit} ({need} expected)")


def normalize(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    opset = _opset(model)
    if opset < 9:
        raise ModelError(f"{path}: opset {opset} is too old; amosc reads opset 9 and newer")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(f"{path}: opset {opset} is newer than the installed onnx {onnx.__version__} "
                         f"knows (opset {newest}); upgrade onnx or export with opset {newest} or older")
    if opset < TARGET_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:
            raise ModelError(f"{path}: converting opset {opset} to {TARGET_OPSET} failed: {exc}") from None
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelError(f"{path}: ONNX shape inference failed: {exc}") from None


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("model has no default-domain opset import")


def graph_input(model, path):
    """(name, per-sample shape, batch_fixed) of the model's single data input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected exactly one data input, found {[i.name for i in inputs]}")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                              onnx.TensorProto.FLOAT16):
        raise ModelError(f"{path}: input {inp.name!r} must be a float tensor")
    dims = inp.type.tensor_type.shape.dim
    if not dims:
        raise ModelError(f"{path}: input {inp.name!r} has no shape")
    shape = []
    for i, d in enumerate(dims):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        elif i == 0:
            shape.append(None)
        else:
            raise ModelError(f"{path}: input {inp.name!r} dimension {i} is dynamic "
                             f"({d.dim_param or '?'}); only the batch dimension may be")
    if shape[0] not in (None, 1):
        raise ModelError(f"{path}: input {inp.name!r} has a fixed batch of {shape[0]}; "
                         "export with batch 1 or a symbolic batch dimension")
    return inp.name, tuple(shape[1:]), shape[0] == 1


def check_ops(model: onnx.ModelProto, path: str) -> None:
    """Refuse a model with an op outside :data:`SUPPORTED_OPS` (or a custom domain) before
    anything is converted, inferred or folded."""
    for node in model.graph.node:
        where = f"{path}: node {node.name or '<unnamed>'!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(f"{where}: custom domain {node.domain!r} is not supported")
        if node.op_type not in SUPPORTED_OPS:
            raise ModelError(f"{where}: unsupported op type {node.op_type!r}; supported ops: "
                             f"{', '.join(sorted(SUPPORTED_OPS))}")


#: Largest constant (in elements) that folding may create: 2^28 (1 GiB of float32), above
#: the largest weight tensor of the real-size test models (VGG-19's 25088 x 4096 = 1e8).
MAX_FOLDED_ELEMENTS = 2**28


def _folded_size(node, values) -> int | None:
    """Elements of a constant-folded node's output, known before folding it, for the ops
    whose output can be much larger than their inputs (None when it cannot grow much)."""
    if node.op_type == "ConstantOfShape" and values and values[0] is not None:
        dims = np.asarray(values[0]).ravel()
        if np.any(dims < 0):
            return None
        return int(np.prod([int(d) for d in dims], dtype=object))
    arrays = [np.asarray(v) for v in values if v is not None]
    if node.op_type in ("Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum") and arrays:
        try:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            return None
        return int(np.prod(shape, dtype=object))
    return None


def _fold(node, values, path):
    n = _folded_size(node, values)
    if n is not None and n > MAX_FOLDED_ELEMENTS:
        raise ModelError(f"{path}: node {node.name!r} ({node.op_type}): folding it would create a "
                         f"constant of {n} elements, more than the {MAX_FOLDED_ELEMENTS} amosc allows")
    from onnx.reference import ReferenceEvaluator
    try:
        ev = ReferenceEvaluator(node)
        return ev.run(None, {n: v for n, v in zip(node.input, values) if n})
    except Exception as exc:
        raise ModelError(f"{path}: node {node.name!r} ({node.op_type}): constant folding failed: {exc}") from None


def _window_taps(c: int, k) -> list:
    """The k[0] * k[1] positions of a pooling window, row-major, each as a one-hot
    depthwise kernel (c, 1, *k)."""
    taps = []
    for i in range(k[0]):
        for j in range(k[1]):
            tap = np.zeros((c, 1, *k))
            tap[:, 0, i, j] = 1.0
            taps.append(tap)
    return taps


def _ceil_pads(hw, k, strides, pads) -> tuple:
    """Pads that make a floor-mode pool produce the ceil_mode=1 output size: ONNX (as
    PyTorch) rounds the count of windows up, except a window that would start in the end
    padding; the extra windows read the added padding (zero: max-neutral for x >= 0, and
    not counted by an average)."""
    end = list(pads[2:])
    for a, (n, kk, s) in enumerate(zip(hw, k, strides)):
        span = n + pads[a] + pads[a + 2] - kk
        out = -(-span // s) + 1
        if (out - 1) * s >= n + pads[a]:
            out -= 1
        end[a] += max(0, (out - 1) * s - span)
    return (pads[0], pads[1], end[0], end[1])


#: How MaxPool is lowered: "tree" (a tree of exact max(p, q) = q + relu(p - q) units, any
#: input) or "lipool" (lateral-inhibition pooling: one max-join unit per output, ReLU inputs).
MAXPOOL_MODES = ("tree", "lipool")


#: Ops that only reshape: a Softmax followed by a chain of them is still the final op.
SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _final_tensors(nodes, output: str) -> tuple[set, set]:
    """The tensors that are the graph output up to a chain of reshaping nodes (as the
    version converter writes a 4-D Softmax: Flatten, Softmax, Reshape), and the indices of
    the chain's nodes."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict = {}
    for n in nodes:
        for t in n.input:
            consumers[t] = consumers.get(t, 0) + 1
    final, tail, t = {output}, set(), output
    while t in producer and nodes[producer[t]].op_type in SHAPE_ONLY:
        i = producer[t]
        src = nodes[i].input[0]
        if consumers.get(src, 0) != 1:
            break
        tail.add(i)
        final.add(src)
        t = src
    return final, tail


def import_model(path, maxpool: str = "tree") -> TensorGraph:
    model, digest = load_model(path)
    path = os.fspath(path)
    check_ops(model, path)
    model = normalize(model, path)
    check_ops(model, path)  # again: the version converter may rewrite nodes
    name, shape, fixed = graph_input(model, path)
    g = TensorGraph(path, digest, _opset(model), name, shape, fixed)
    if maxpool not in MAXPOOL_MODES:
        raise ModelError(f"maxpool must be one of {MAXPOOL_MODES}, got {maxpool!r}")
    imp = _Importer(model, path, g, maxpool)
    env = imp.env
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"{path}: initializer {init.name!r} contains NaN or Inf")
        env[init.name] = arr
    env[name] = Expr(shape, {INPUT: L.identity(shape)}, np.zeros(shape))
    outputs = [o.name for o in model.graph.output]
    if len(outputs) != 1:
        raise ModelError(f"{path}: expected one graph output, found {outputs}")
    g.output_name = outputs[0]
    nodes = list(model.graph.node)
    final, tail = _final_tensors(nodes, g.output_name)
    for i, node in enumerate(nodes):
        op = node.op_type
        if i in tail and g.softmax:   # Reshape/Flatten after the dropped Softmax (the version converter's)
            continue
        ins = [env.get(n) if n else None for n in node.input]
        for n, v in zip(node.input, ins):
            if n and v is None:
                imp.fail(node, f"input tensor {n!r} is not produced by any earlier node")
        a = imp.attrs(node)
        pending = [n for n, v in zip(node.input, ins) if isinstance(v, Expr) and v.pooled > 1]
        if pending and op not in ("Relu", "Clip", "Identity", "Dropout"):
            imp.fail(node, f"input {pending[0]!r} is a lateral-inhibition pool of a pre-activation "
                           "(--maxpool lipool), which must feed Relu or Clip(0, max) directly; use "
                           "--maxpool tree")
        if op == "Constant":
            env[node.output[0]] = _fold(node, [], path)[0]
            continue
        if op == "Shape" and isinstance(ins[0], Expr):
            imp.check_attributes(node, a)
            full = np.array((1, *ins[0].shape), dtype=np.int64)
            env[node.output[0]] = full[a.get("start", 0):a.get("end", len(full))]
            continue
        if not any(isinstance(v, Expr) for v in ins):
            for o, v in zip(node.output, _fold(node, ins, path)):
                env[o] = v
            continue
        imp.check_attributes(node, a)
        if op in ("Softmax", "LogSoftmax"):
            if node.output[0] not in final:
                imp.fail(node, f"{op} is supported only as the final op (it is dropped: argmax is unchanged)")
            if a.get("axis", 1) not in (1, -1):
                imp.fail(node, f"{op} over axis {a['axis']} is not over the classes (axis 1 or -1)")
            g.softmax = op
            g.readout = imp.expr(node)
            g.readout_tensor = node.input[0]
            continue
        if op in ACTIVATIONS:
            env[node.output[0]] = imp.activation(node, op, a)
            continue
        handler = getattr(imp, f"op_{op}", None)
        if handler is None:
            imp.fail(node, f"{op} must have constant inputs here (it only folds shape arithmetic)")
        env[node.output[0]] = handler(node, a)
    if g.readout is None:
        out = env.get(g.output_name)
        if not isinstance(out, Expr):
            raise ModelError(f"{path}: output {g.output_name!r} does not depend on the input")
        g.readout, g.readout_tensor = out, g.output_name
    if g.readout.pooled > 1:
        raise ModelError(f"{path}: output {g.output_name!r} is a lateral-inhibition pool of a "
                         "pre-activation (--maxpool lipool) with no ReLU after it; use --maxpool tree")
    if len(g.readout.shape) > 1 and all(d == 1 for d in g.readout.shape[1:]):
        # a fully convolutional head (a 1x1 conv on a 1x1 map, as in DenseNet/SqueezeNet): (C, 1, 1) is (C,)
        g.readout = imp._reshape(g.readout, g.readout.shape[:1])
    if len(g.readout.shape) != 1:
        raise ModelError(f"{path}: output {g.output_name!r} must be (N, classes), got per-sample shape "
                         f"{g.readout.shape}")
    return g
