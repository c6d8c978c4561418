"""Executable specification of the IR's integer semantics (level 1 of docs/ir.md).

:func:`evaluate` computes every population's integer code directly from the
equations, without time steps. The spiking simulator in
:mod:`amosc.backends.reference` must produce exactly the same integers; the
tests compare the two integer for integer.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import IRError
from .nodes import Code, GatePop, InputPop, Program, Projection, ReadoutPop


# ---------------------------------------------------------------------------
# Linear kernels, shared by the compiler (float64) and the simulators (integers,
# computed exactly in floating point, see integer_product).
# ---------------------------------------------------------------------------

#: Bytes one im2col buffer (and so one conv's matrix product) may take; larger batches are
#: split into pieces of this size, so working memory stays bounded at any batch size.
CONV_CHUNK_BYTES = 64 << 20
#: Integers of magnitude below these are exact in float32 / float64 (their significands).
FLOAT32_EXACT, FLOAT64_EXACT = 2**24, 2**53


def conv_output_hw(hw, kernel, strides, pads, dilations):
    (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = hw, kernel, strides, pads, dilations
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return ho, wo


def conv2d(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
           groups: int = 1) -> np.ndarray:
    """ONNX Conv (cross-correlation) of x (N, C, H, W) with w (Co, C/groups, kh, kw), float64."""
    return _conv(np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64), strides, pads,
                 dilations, groups)


def _conv(x, w, strides, pads, dilations, groups):
    """conv2d in the dtype of x and w, the batch split into pieces whose working arrays
    take about CONV_CHUNK_BYTES.

    Shifted products: the zero-padded input is cut into its strides' phases (rows
    a::sh, columns b::sw), each laid out as one matrix (C, n * Hq * Wq). Output position
    (y, x) of image m reads tap (i, j) at phase (i dh % sh, j dw % sw), row y + i dh // sh,
    column x + j dw // sw: a fixed offset in that flat layout. So every tap is one matrix
    product of its weights (per group) with a shifted view of a phase, accumulated over
    the taps on the whole (Hq, Wq) grid, of which the (Ho, Wo) corner is kept. When that
    grid is much larger than the output (a kernel nearly as large as the image), the
    windows are gathered instead (im2col) and multiplied once."""
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    if cig * groups != c or co % groups:
        raise IRError(f"conv2d: weight {w.shape} with groups={groups} does not fit input {x.shape}")
    ho, wo = conv_output_hw((h, wd), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw))
    hq, wq = -(-(h + pt + pb) // sh), -(-(wd + pl + pr) // sw)
    shifted = hq * wq <= 2 * ho * wo
    per_image = (c * kh * kw * ho * wo if not shifted else (c + 2 * co) * hq * wq) * x.itemsize
    step = max(1, CONV_CHUNK_BYTES // max(1, per_image))
    out = np.empty((n, co, ho, wo), np.result_type(x, w))
    for s in range(0, n, step):
        xs = x[s:s + step]
        xs = np.pad(xs, ((0, 0), (0, 0), (pt, hq * sh - h - pt), (pl, wq * sw - wd - pl)))
        y = (_conv_shifted if shifted else _conv_im2col)(xs, w, (sh, sw), (dh, dw), groups, (ho, wo))
        out[s:s + len(xs)] = y.transpose(1, 0, 2, 3)
    return out


def _conv_shifted(xp, w, strides, dilations, groups, out_hw):
    """_conv's shifted products on the padded input xp (m, C, Hq sh, Wq sw) -> (Co, m, Ho, Wo)."""
    m, c = xp.shape[:2]
    co, cig, kh, kw = w.shape
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_hw
    hq, wq = xp.shape[2] // sh, xp.shape[3] // sw
    size = m * hq * wq
    phases = {}
    acc = np.zeros((groups, co // groups, size), np.result_type(xp, w))
    wt = np.ascontiguousarray(w.reshape(groups, co // groups, cig, kh, kw).transpose(3, 4, 0, 1, 2))  # BLAS operands
    for i in range(kh):
        for j in range(kw):
            (qi, a), (qj, b) = divmod(i * dh, sh), divmod(j * dw, sw)
            if (a, b) not in phases:  # (groups, C/groups, m * Hq * Wq), contiguous
                phases[a, b] = np.ascontiguousarray(xp[:, :, a::sh, b::sw].transpose(1, 0, 2, 3)).reshape(
                    groups, cig, size)
            off = qi * wq + qj
            acc[:, :, :size - off] += np.matmul(wt[i, j], phases[a, b][:, :, off:])
    return acc.reshape(co, m, hq, wq)[:, :, :ho, :wo]


def _conv_im2col(xp, w, strides, dilations, groups, out_hw):
    """_conv's gathered windows: rows (C/groups * kh * kw, m * Ho * Wo) per group, one product."""
    m, c = xp.shape[:2]
    co, cig, kh, kw = w.shape
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_hw
    xt = xp.transpose(1, 0, 2, 3)
    cols = np.empty((c, kh, kw, m, ho, wo), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xt[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
    y = np.matmul(w.reshape(groups, co // groups, cig * kh * kw), cols.reshape(groups, cig * kh * kw, -1))
    return y.reshape(co, m, ho, wo)


def linear(kind: str, weight, attrs: dict, x: np.ndarray, out_shape) -> np.ndarray:
    """Apply a projection's linear map to x (N, *in_shape); float64 result (N, *out_shape)."""
    if kind == "sparse":
        weight = weight.astype(np.float64)
    elif kind in ("conv", "dense"):
        weight = np.asarray(weight, dtype=np.float64)
    return _apply(kind, weight, attrs, np.asarray(x, dtype=np.float64), out_shape)


def _apply(kind, weight, attrs, x, out_shape):
    """linear() with weight and x already of one float dtype (dense: weight (F_out, F_in))."""
    n = x.shape[0]
    if kind == "conv":
        y = _conv(x, weight, attrs["strides"], attrs["pads"], attrs["dilations"], attrs["groups"])
    elif kind == "dense":
        y = x.reshape(n, -1) @ weight.T
    elif kind == "sparse":
        y = (weight @ x.reshape(n, -1).T).T
    else:
        raise IRError(f"unknown projection kind {kind!r}")
    return np.asarray(y).reshape((n, *out_shape))


class _Weights:
    """A projection's mantissas M as float32 / float64 (made once, on first use) and the
    largest sum of |M| over one output's synapses (a conv's full kernel: rows at the
    border have fewer taps, so it bounds them too)."""

    def __init__(self, proj: Projection):
        w = proj.weight
        if proj.kind == "sparse":
            absw = abs(w.astype(np.int16))
            self.row_abs = int(absw.sum(axis=1, dtype=np.int64).max()) if w.shape[0] else 0
        else:
            absw = np.abs(w.astype(np.int16)).reshape(w.shape[0], -1)
            self.row_abs = int(absw.sum(axis=1, dtype=np.int64).max()) if absw.size else 0
        del absw
        # not the projection itself: this object is the value of a WeakKeyDictionary keyed by
        # it, and a strong reference back would keep every evaluated program's weights alive
        self.weight, self.kind, self.attrs, self.out_shape = w, proj.kind, proj.attrs, tuple(proj.out_shape)
        self.by_dtype = {}
        #: (kind, q): a cheaper exact form of the same integer map, or None. "global": a conv
        #: whose kernel covers the whole input and repeats one weight per (output, input)
        #: channel (GAP-then-FC heads, squeeze-excitation): a spatial sum, then q (C_out,
        #: C_in / groups). "broadcast": a sparse matrix repeating one row per output channel
        #: over every output position (a gate broadcast over a map): q (C_out, F_in), then a
        #: broadcast. Both are the same integer sums, so the float bounds of
        #: :func:`integer_product` hold for them too.
        self.fast = _global_form(proj) or _broadcast_form(proj)

    def apply_fast(self, x: np.ndarray) -> np.ndarray:
        kind, q = self.fast
        n = x.shape[0]
        q = q.astype(x.dtype, copy=False)
        if kind == "global":
            s = x.reshape(n, x.shape[1], -1).sum(axis=2)          # (n, C_in)
            g = self.attrs["groups"]
            if g == 1:
                y = s @ q.T
            else:  # groups: output o reads input channels of its group
                cig, cog = x.shape[1] // g, q.shape[0] // g
                y = np.einsum("ngi,goi->ngo", s.reshape(n, g, cig), q.reshape(g, cog, cig)).reshape(n, -1)
            return y.reshape((n, *self.out_shape))
        y = x.reshape(n, -1) @ q.T                                 # (n, C_out)
        co = self.out_shape[0]
        return np.repeat(y[:, :, None], int(np.prod(self.out_shape)) // co, axis=2).reshape((n, *self.out_shape))

    def get(self, dtype):
        if dtype not in self.by_dtype:
            w = self.weight
            self.by_dtype[dtype] = w.astype(dtype) if self.kind == "sparse" else np.asarray(w, dtype)
        return self.by_dtype[dtype]

    def conv32(self, x: np.ndarray) -> np.ndarray:
        """The conv of float32 x by onnxruntime's CPU kernels (several times faster than
        numpy's shifted products), the batch split as :func:`_conv` splits it. Exact under
        :func:`integer_product`'s float32 bound: every product and partial sum is an integer
        below 2^24, so any order of float32 multiply-adds gives the integer sum (tested against
        int64 products in tests/test_semantics.py)."""
        if "session" not in self.by_dtype:
            self.by_dtype["session"] = _conv_session(self.get(np.float32), self.attrs)
        sess = self.by_dtype["session"]
        n = x.shape[0]
        per_image = 4 * (int(np.prod(x.shape[1:])) + int(np.prod(self.out_shape)))
        step = max(1, CONV_CHUNK_BYTES // max(1, per_image))
        if n <= step:
            return sess.run(None, {"x": x})[0]
        out = np.empty((n, *self.out_shape), np.float32)
        for a in range(0, n, step):
            out[a:a + step] = sess.run(None, {"x": x[a:a + step]})[0]
        return out


def _global_form(proj: Projection):
    if proj.kind != "conv" or len(proj.out_shape) != 3 or proj.out_shape[1:] != (1, 1):
        return None
    w, a = proj.weight, proj.attrs
    if (tuple(w.shape[2:]) != tuple(proj.in_shape[1:]) or any(a["pads"]) or tuple(a["dilations"]) != (1, 1)
            or w.shape[2] * w.shape[3] < 4):
        return None
    q = w[:, :, 0, 0]
    return ("global", q.copy()) if np.array_equal(w, np.broadcast_to(q[:, :, None, None], w.shape)) else None


def _broadcast_form(proj: Projection):
    if proj.kind != "sparse" or len(proj.out_shape) < 2:
        return None
    import scipy.sparse as sp
    co = proj.out_shape[0]
    per = int(np.prod(proj.out_shape)) // co
    m = proj.weight
    if per < 2 or m.shape[0] != co * per:
        return None
    q = m[::per]                                                  # the first position's rows
    if (sp.kron(q, np.ones((per, 1), np.int8), format="csr") != m).nnz:
        return None
    return ("broadcast", q.toarray())


def _conv_session(w: np.ndarray, attrs: dict):
    """An onnxruntime session computing one Conv (no bias) of float32 weights w."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(attrs["strides"]), pads=list(attrs["pads"]),
                            dilations=list(attrs["dilations"]), group=int(attrs["groups"]),
                            kernel_shape=list(w.shape[2:]))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ascontiguousarray(w), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # every optimization: on x86 the layout pass runs the Conv in NCHWc blocks (1.5-4x faster
    # than the plain kernel, measured on 16-64 channel maps). Still exact: any order of float32
    # multiply-adds gives the integer sum under integer_product's bound
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


_WEIGHTS: "weakref.WeakKeyDictionary[Projection, _Weights]" = weakref.WeakKeyDictionary()


def _weights(proj: Projection) -> _Weights:
    got = _WEIGHTS.get(proj)
    if got is None:
        got = _WEIGHTS[proj] = _Weights(proj)
    return got


def integer_product(proj: Projection, v: np.ndarray, vmax: int) -> np.ndarray:
    """The exact integer M @ v (int64, (B, *out_shape)) of a projection's mantissas M and
    integers v (B, *in_shape) with |v| <= vmax.

    Exactness: every product M_ij v_j and every partial sum of output i, in whatever order
    BLAS adds them, is an integer of magnitude at most sum_j |M_ij| |v_j| <= row_abs * vmax.
    When that bound is below 2^24 (2^53) every such integer is a float32 (float64) value, so
    each multiply and add, fused or not, is exact and the float result is the integer sum.
    The product runs in float32 when the bound allows (binary spike planes: 128 * fan-in
    < 2^24 for fan-ins up to 131072), else in float64, else (never for a verified program,
    whose range proof bounds every plane's sum) in int64, which numpy multiplies exactly."""
    return _product(proj, v, vmax).astype(np.int64, copy=False)


def _product(proj: Projection, v: np.ndarray, vmax: int) -> np.ndarray:
    """:func:`integer_product` in the dtype it was computed in (float32, float64 or int64),
    every value an exact integer."""
    wts = _weights(proj)
    bound = wts.row_abs * int(vmax)
    dtype = np.float32 if bound < FLOAT32_EXACT else np.float64 if bound < FLOAT64_EXACT else np.int64
    x = np.asarray(v).astype(dtype, copy=False)
    if wts.fast is not None:
        y = wts.apply_fast(x)
    elif proj.kind == "conv" and dtype is np.float32 and len(proj.out_shape) == 3:
        y = wts.conv32(np.ascontiguousarray(x))
    else:
        y = _apply(proj.kind, wts.get(dtype), proj.attrs, x, proj.out_shape)
    return y


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
    return plane_inputs(proj, [d], z[None])[0]


def plane_inputs(proj: Projection, weights, z: np.ndarray) -> np.ndarray:
    """:func:`plane_input` of several planes z (P, N, *in_shape) with code weights d_p
    (P of them), computed by one product with the planes stacked along the batch axis:
    (P, N, *out_shape), each plane floored on its own."""
    return _plane_values(proj, weights, z).astype(np.int64, copy=False)


def _plane_values(proj: Projection, weights, z: np.ndarray, dropped: list | None = None) -> np.ndarray:
    """:func:`plane_inputs` as exact integers in the dtype the product was computed in. When
    every d_p is a power of two (binary codes), floor(d_p S 2^e) is computed in that float
    dtype: d_p 2^e only rescales the exact integer S by a power of two (exact), and the floor
    of an exact value is exact. ``dropped``: receives the fractions the floors dropped,
    sum_p (d_p S 2^e - floor(d_p S 2^e)), float64 (N, *out_shape) (for the floor-bias pass)."""
    p, n = z.shape[:2]
    s = _product(proj, z.reshape(p * n, *z.shape[2:]), _max_abs(z)).reshape(p, n, *proj.out_shape)
    e = channel_exp(proj)
    if s.dtype.kind == "f" and all(int(d) > 0 and int(d) & (int(d) - 1) == 0 for d in weights):
        for i, d in enumerate(weights):
            s[i] *= (int(d) * np.exp2(e.astype(np.float64))).astype(s.dtype)
        if dropped is not None:   # plane by plane: no temporary of all the planes
            total = np.zeros(s.shape[1:], np.float64)
            for plane in s:
                total += plane - np.floor(plane)
            dropped.append(total)
        return np.floor(s, out=s)
    s = s.astype(np.int64, copy=False)
    exact = np.empty(s.shape, np.float64) if dropped is not None else None
    for i, d in enumerate(weights):
        if exact is not None:
            exact[i] = (s[i] * d) * np.exp2(e.astype(np.float64))
        s[i] = floor_shift(s[i] * d, e)
    if exact is not None:
        dropped.append((exact - s).sum(axis=0))
    return s


def _max_abs(v: np.ndarray) -> int:
    return int(np.abs(v).max()) if v.size else 0


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
    c = np.asarray(c)
    dt = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.int64   # codes are in [0, 2^K)
    shifts = np.arange(bits - 1, -1, -1, dtype=dt).reshape((bits,) + (1,) * c.ndim)
    return ((c.astype(dt, copy=False)[None] >> shifts) & dt(1)).astype(np.uint8, copy=False)


def spike_counts(codes: np.ndarray, bits: int) -> np.ndarray:
    """Spikes per input (N,) of a binary-coded population: the 1 bits of its codes."""
    return bit_planes(codes, bits).reshape(bits, codes.shape[0], -1).sum((0, 2)).astype(np.int64)


def unit_spikes(code: Code, y: np.ndarray) -> np.ndarray:
    """Spikes z_k (K, *y.shape) of the units for integer input y, by the code's recurrence:
    unit k sees y minus the resets of the units of earlier steps that fired (all earlier
    units for a sequential code; units of one step do not inhibit each other)."""
    z = np.zeros((code.bits, *y.shape), dtype=np.uint8)
    v = np.asarray(y, dtype=np.int64).copy()
    steps = code.unit_steps
    for k in range(code.bits):
        if k and steps[k] != steps[k - 1]:  # a new step: the previous steps' resets apply
            for j in range(k - 1, -1, -1):
                if steps[j] != steps[k - 1]:
                    break
                v -= code.resets[j] * z[j].astype(np.int64)
        z[k] = v >= code.thresholds[k]
    return z


def binary_params(code: Code):
    """(theta, offset) when the code is the successive-approximation ADC, else None."""
    if code.steps:
        return None
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


def spikes_input(proj: Projection, code: Code, z: np.ndarray, dropped: list | None = None) -> np.ndarray:
    """Synaptic input (N, *out_shape) into ``proj.target`` from source spikes z (K, N, *in_shape).

    Planes whose weights are exact multiples are folded into one product with the
    partial code (this is where level 1 differs in method from the simulator); the
    other planes go through one product together, stacked along the batch axis, and
    are floored one by one as :func:`plane_input` does. ``dropped``: as in
    :func:`_plane_values` (nothing is appended when every plane is exact)."""
    exact = [k for k, d in enumerate(code.weights) if plane_is_exact(proj.exp, d)]
    rest = [k for k in range(code.bits) if k not in exact]
    n = z.shape[1]
    e = channel_exp(proj)
    if exact:
        # d_k 2^e is an integer for these planes: one product with M, then one exact shift
        part = sum(z[k].astype(np.int64) * code.weights[k] for k in exact)
        out = floor_shift(integer_product(proj, part, sum(abs(code.weights[k]) for k in exact)), e)
    else:
        out = np.zeros((n, *proj.out_shape), np.int64)
    if rest:
        planes = z[rest[0]:rest[-1] + 1] if rest == list(range(rest[0], rest[-1] + 1)) else z[rest]
        vals = _plane_values(proj, [code.weights[k] for k in rest], planes, dropped)
        out += vals.sum(axis=0, dtype=vals.dtype if vals.dtype == np.int64 else np.float64).astype(np.int64)
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


#: Bytes of working memory :func:`evaluate` aims for: larger batches are evaluated in
#: pieces (:func:`eval_chunk` images each) whose results are written into the output.
EVAL_MEMORY = 512 << 20


def eval_chunk(program: Program, memory: int = EVAL_MEMORY) -> int:
    """Images :func:`evaluate` takes at a time so that its working set stays near ``memory``
    bytes: per image, every population's int64 codes and uint8 spike planes, a gate's
    int64 inputs (three arrays of its input shape) and the largest projection's stacked
    planes with their int64 products (im2col rows are bounded by CONV_CHUNK_BYTES)."""
    size = lambda shape: int(np.prod(shape))  # noqa: E731
    bits = {p.name: (p.bits if isinstance(p, InputPop) else p.code.bits) for p in program.populations
            if not isinstance(p, ReadoutPop)}
    per_image = sum(size(p.shape) * (8 + bits.get(p.name, 0)) for p in program.populations)
    per_image += max((24 * size(p.input_shape) for p in program.populations if not isinstance(p, InputPop)),
                     default=0)
    per_image += max((bits[pr.source] * 16 * (size(pr.in_shape) + size(pr.out_shape))
                      for pr in program.projections), default=0)
    return max(1, memory // per_image)


def evaluate(program: Program, x: np.ndarray, spike_counts: dict | None = None, adjust=None,
             keep=None) -> dict:
    """Level-1 evaluation of a program on float input x (N, *input_shape).

    Returns {population name: integer array (N, *shape)}: the codes of the input
    and gate populations and the integer y of the readout; with ``keep`` (names) only
    those populations' (a large program's codes of every population for many inputs
    need more memory than the evaluation itself). ``spike_counts``, when
    given, receives {population: spikes per input (N,)} of the input and gates.
    The batch is evaluated :func:`eval_chunk` images at a time (every input is
    independent of the others, so pieces give the same integers). ``adjust``: see
    :func:`_evaluate`; it sees the whole batch at once, so x may hold at most one piece.
    """
    n, step = x.shape[0], eval_chunk(program)
    if adjust is not None and n > step:
        raise IRError(f"evaluate with adjust takes at most {step} inputs of this program (one piece), got {n}")
    keep = None if keep is None else frozenset(keep)
    if n <= step:
        return _evaluate(program, x, spike_counts, adjust, keep)
    out: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for a in range(0, n, step):
        part_counts: dict = {}
        part = _evaluate(program, x[a:a + step], part_counts if spike_counts is not None else None, keep=keep)
        for store, got in ((out, part), (counts, part_counts)):
            for name, v in got.items():
                if name not in store:
                    store[name] = np.empty((n, *v.shape[1:]), v.dtype)
                store[name][a:a + len(v)] = v
    if spike_counts is not None:
        spike_counts.update(counts)
    return out


def _evaluate(program: Program, x: np.ndarray, spike_counts: dict | None, adjust=None, keep=None) -> dict:
    """evaluate() on one piece of the batch; a population's spike planes are dropped after
    its last target. ``adjust(pop, a, dropped)``, when given, is called for every gate and
    readout with its synaptic input a and the fractions its plane floors dropped (the list
    :func:`spikes_input` fills) and returns the population to go on with (the floor-bias
    pass changes biases this way, every later population seeing the adjusted codes)."""
    out: dict[str, np.ndarray] = {}
    spikes: dict[str, np.ndarray] = {}
    kept = {p.name for p in program.populations} if keep is None else keep   # whose values are returned
    order = {p.name: i for i, p in enumerate(program.populations)}
    last_use: dict[int, list] = {}
    sources = {pr.source for pr in program.projections}
    for name in sources:
        last = max(order[pr.target] for pr in program.projections if pr.source == name)
        last_use.setdefault(last, []).append(name)
    for i, pop in enumerate(program.populations):
        if isinstance(pop, InputPop):
            c = encode_input(pop, x)
            spikes[pop.name] = bit_planes(c, pop.bits)
            if pop.name in kept:
                out[pop.name] = c
            if spike_counts is not None:
                spike_counts[pop.name] = _per_input(spikes[pop.name])
            continue
        a = np.zeros((x.shape[0], *pop.input_shape), np.int64)
        dropped: list | None = [] if adjust is not None else None
        for proj in program.incoming(pop.name):
            src = program.pop(proj.source)
            a += spikes_input(proj, src.code, spikes[proj.source], dropped)
        for name in last_use.get(i, ()):
            del spikes[name]
        if adjust is not None:
            pop = adjust(pop, a, dropped)
            del dropped
        y = pop.bias.astype(np.int64) + join(pop, a)
        del a
        if isinstance(pop, GatePop):
            c = gate_code(pop.code, y)
            z = bit_planes(c, pop.code.bits) if pop.code.is_binary() else unit_spikes(pop.code, y)
            if pop.name in kept:
                out[pop.name] = c
            del c
            if spike_counts is not None:
                spike_counts[pop.name] = _per_input(z)
            if pop.name in sources:
                spikes[pop.name] = z
        elif isinstance(pop, ReadoutPop):
            if pop.name in kept:
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


def decode_activation(pop, values: np.ndarray, program: Program | None = None, codes: dict | None = None
                      ) -> np.ndarray:
    """The activation a gate population reproduces: :func:`decode`, and for a segmented
    (fitted) gate the slopes-weighted sum of its segments plus the offset, plus, for a
    ReLU split (``fit["relu"]``), slope times the value of its ReLU population (whose codes
    ``codes[name]`` and ``program`` it then needs)."""
    y = decode(pop, values)
    fit = getattr(pop, "fit", None)
    if not fit:
        return y
    s = int(fit["segments"])
    c = pop.shape[0] // s
    slopes = np.broadcast_to(np.asarray(fit["slopes"], np.float64), (c, s))  # (S,) or (C, S)
    offset = np.broadcast_to(np.asarray(fit["offset"], np.float64), (c,))
    y = y.reshape((y.shape[0], c, s) + tuple(pop.shape[1:]))
    out = (np.einsum("ncs...,cs->nc...", y, slopes)
           + offset.reshape((1, c) + (1,) * (len(pop.shape) - 1)))
    relu = fit.get("relu")
    if relu:
        if program is None or codes is None or relu["population"] not in codes:
            raise IRError(f"population {pop.name!r}: decoding its ReLU split needs the codes of "
                          f"{relu['population']!r}")
        slope = np.broadcast_to(np.asarray(relu["slope"], np.float64), (c,)).reshape((1, c) + (1,) * (len(pop.shape) - 1))
        out = out + slope * decode(program.pop(relu["population"]), codes[relu["population"]])
    return out
