"""Float linear maps between activation tensors, and their composition.

The importer turns every chain of linear ONNX ops (Conv, BatchNormalization,
Gemm, MatMul, pooling, Flatten/Reshape, Mul/Add by constants) between two
activation gates into one :class:`LinearMap`; that map becomes one projection.
Shapes are per sample (no batch axis).

Compositions keep the compact forms where they can (scale∘conv stays a conv,
dense∘scale stays dense) and otherwise materialize a scipy sparse matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from .semantics import conv2d, conv_output_hw


@dataclass(frozen=True, eq=False)
class LinearMap:
    in_shape: tuple
    out_shape: tuple

    def apply(self, x: np.ndarray) -> np.ndarray:  # x (N, *in_shape)
        raise NotImplementedError

    def to_sparse(self) -> sp.csr_matrix:
        raise NotImplementedError

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum_j max(W_ij, 0), sum_j min(W_ij, 0)) for every output i, each shaped
        out_shape: the range analysis' bound for non-negative inputs."""
        m = self.to_sparse()
        pos, neg = m.maximum(0), m.minimum(0)
        return (np.asarray(pos.sum(axis=1)).reshape(self.out_shape),
                np.asarray(neg.sum(axis=1)).reshape(self.out_shape))

    def reshaped(self, out_shape) -> "LinearMap":
        g = _global(self)   # a global average (pool) flattened for a classifier head stays compact
        if g is not None:
            return g.reshaped(out_shape)
        return sparse_map(self.in_shape, tuple(out_shape), self.to_sparse())


#: Elements one block of rows of a large matrix may take in a temporary (32 MiB of float64).
BLOCK_ELEMENTS = 1 << 22


def row_blocks(rows: int, row_size: int):
    """Slices of ``rows`` rows of ``row_size`` elements each, BLOCK_ELEMENTS or fewer per
    slice (at least one row): work on a large matrix block by block without whole-matrix
    temporaries."""
    step = max(1, BLOCK_ELEMENTS // max(int(row_size), 1))
    return (slice(a, a + step) for a in range(0, rows, step))


def sparse_map(in_shape, out_shape, m: sp.csr_matrix) -> "LinearMap":
    """The map of matrix ``m``: a 1x1 :class:`Conv` when it only moves (and scales) whole
    channel planes of a (C, H, W) map (a channel shuffle, slice or gather), so that the
    convolutions around it compose with it; else :class:`Sparse`."""
    conv = _channel_conv(tuple(in_shape), tuple(out_shape), m)
    return conv if conv is not None else Sparse(tuple(in_shape), tuple(out_shape), m)


def _channel_conv(in_shape, out_shape, m) -> "Conv | None":
    if len(in_shape) != 3 or len(out_shape) != 3 or in_shape[1:] != out_shape[1:]:
        return None
    co, s = out_shape[0], in_shape[1] * in_shape[2]
    m = sp.csr_matrix(m)
    if m.nnz != m.shape[0] or not np.all(np.diff(m.indptr) == 1):   # one entry per output
        return None
    cols, vals = m.indices.reshape(co, s), m.data.reshape(co, s)
    base = cols[:, 0]
    if (np.any(base % s) or not np.array_equal(cols, base[:, None] + np.arange(s))
            or not np.all(vals == vals[:, :1])):
        return None
    w = np.zeros((co, in_shape[0], 1, 1))
    w[np.arange(co), base // s, 0, 0] = vals[:, 0]
    return Conv(in_shape, out_shape, w)


@dataclass(frozen=True, eq=False)
class Scale(LinearMap):
    """y[c, ...] = s[c] * x[c, ...] (channel axis 0); identity when s is all ones."""
    s: np.ndarray = field(default=None)

    def apply(self, x):
        return x * self.s.reshape((1, -1) + (1,) * (len(self.in_shape) - 1))

    def full(self):
        return np.broadcast_to(self.s.reshape((-1,) + (1,) * (len(self.in_shape) - 1)),
                               self.in_shape)

    def to_sparse(self):
        return sp.diags(self.full().ravel().astype(np.float64)).tocsr()

    def row_sums(self):
        f = self.full().astype(np.float64)
        return np.maximum(f, 0), np.minimum(f, 0)

    def reshaped(self, out_shape):
        if tuple(out_shape) == self.in_shape:
            return self
        return super().reshaped(out_shape)


def identity(shape) -> Scale:
    shape = tuple(shape)
    return Scale(shape, shape, np.ones(shape[0] if shape else 1))


@dataclass(frozen=True, eq=False)
class Conv(LinearMap):
    w: np.ndarray = None
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    groups: int = 1

    def apply(self, x):
        return conv2d(x, self.w, self.strides, self.pads, self.dilations, self.groups)

    def attrs(self):
        return dict(strides=tuple(self.strides), pads=tuple(self.pads),
                    dilations=tuple(self.dilations), groups=int(self.groups))

    def to_sparse(self):
        c, h, w = self.in_shape
        co, ho, wo = self.out_shape
        cig, kh, kw = self.w.shape[1:]
        (sh, sw), (pt, pl, _, _), (dh, dw) = self.strides, self.pads, self.dilations
        og = np.arange(co) // (co // self.groups)
        # only the kernel's nonzero taps (a conv made dense from a depthwise one is mostly zeros)
        o, ci, i, j = (v[:, None, None] for v in np.nonzero(self.w))
        yo, xo = np.arange(ho)[None, :, None], np.arange(wo)[None, None, :]
        yi = yo * sh - pt + i * dh
        xi = xo * sw - pl + j * dw
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        cin = og[o] * cig + ci
        rows = np.broadcast_to((o * ho + yo) * wo + xo, ok.shape)[ok]
        cols = np.broadcast_to((cin * h + yi) * w + xi, ok.shape)[ok]
        vals = np.broadcast_to(self.w[o, ci, i, j], ok.shape)[ok].astype(np.float64)
        m = sp.coo_matrix((vals, (rows, cols)), shape=(co * ho * wo, c * h * w)).tocsr()
        m.sum_duplicates()
        return m

    def row_sums(self):  # interior positions; border rows sum fewer terms
        w = self.w.reshape(self.w.shape[0], -1)
        return tuple(np.broadcast_to(s[:, None, None], self.out_shape).astype(np.float64)
                     for s in (np.maximum(w, 0).sum(1), np.minimum(w, 0).sum(1)))


@dataclass(frozen=True, eq=False)
class Dense(LinearMap):
    """y = W @ x.ravel(); W (prod(out_shape), prod(in_shape))."""
    w: np.ndarray = None

    def apply(self, x):
        return (x.reshape(x.shape[0], -1) @ self.w.T).reshape((x.shape[0], *self.out_shape))

    def to_sparse(self):
        return sp.csr_matrix(self.w)

    def row_sums(self):   # by blocks of rows: no copy of a large matrix
        pos, neg = np.empty(self.w.shape[0]), np.empty(self.w.shape[0])
        for r in row_blocks(*self.w.shape):
            pos[r] = np.maximum(self.w[r], 0).sum(1)
            neg[r] = np.minimum(self.w[r], 0).sum(1)
        return pos.reshape(self.out_shape), neg.reshape(self.out_shape)

    def reshaped(self, out_shape):
        return replace(self, out_shape=tuple(out_shape))


@dataclass(frozen=True, eq=False)
class Sparse(LinearMap):
    m: sp.csr_matrix = None

    def apply(self, x):
        return np.asarray(self.m @ x.reshape(x.shape[0], -1).T).T.reshape((x.shape[0], *self.out_shape))

    def to_sparse(self):
        return self.m

    def reshaped(self, out_shape):
        return sparse_map(self.in_shape, tuple(out_shape), self.m)


@dataclass(frozen=True, eq=False)
class ChannelTile(LinearMap):
    """out[c * reps + s, ...] = in[c, ...]: every channel repeated ``reps`` times
    (the input of a segmented activation: one copy per segment)."""
    reps: int = 1

    def apply(self, x):
        return np.repeat(x, self.reps, axis=1)

    def to_sparse(self):
        c = self.in_shape[0]
        rest = int(np.prod(self.in_shape[1:]))
        src = np.arange(c * rest).reshape(c, 1, rest)
        cols = np.broadcast_to(src, (c, self.reps, rest)).ravel()
        return sp.csr_matrix((np.ones(cols.size), (np.arange(cols.size), cols)),
                             shape=(cols.size, c * rest))


@dataclass(frozen=True, eq=False)
class ChannelSum(LinearMap):
    """out[c, ...] = sum_s f[c, s] * in[c * S + s, ...] (the output of a segmented
    activation: segments weighted by their slopes)."""
    f: np.ndarray = None  # (C, S)

    def apply(self, x):
        c, s = self.f.shape
        xr = x.reshape((x.shape[0], c, s) + tuple(self.in_shape[1:]))
        return np.einsum("ncs...,cs->nc...", xr, self.f)

    def to_sparse(self):
        c, s = self.f.shape
        rest = int(np.prod(self.in_shape[1:]))
        rows = np.broadcast_to(np.arange(c)[:, None, None] * rest + np.arange(rest)[None, None, :],
                               (c, s, rest)).ravel()
        cols = np.arange(c * s * rest)
        vals = np.broadcast_to(self.f[:, :, None], (c, s, rest)).ravel()
        return sp.csr_matrix((vals, (rows, cols)), shape=(c * rest, c * s * rest))


@dataclass(frozen=True, eq=False)
class GlobalDense(LinearMap):
    """out[o, p] = sum_c w[o, c] * sum_q in[c, q] at every output position p: a sum over
    all input positions, a channel matrix ``w`` (scipy CSR, (C_out, C_in)), and a
    broadcast over all output positions. Channel axis 0; the positions are the remaining
    axes (none, or 1x1, for a vector). GlobalAveragePool followed by a fully-connected
    layer (squeeze-excitation, classifier heads) is one with a (1, 1) output, and a
    per-channel value broadcast over a map (the excitation's gate times the features) one
    with a (1, 1) input; stored in O(nnz(w)), not O(C_out * C_in * H * W) as the
    equivalent whole-map convolution or sparse matrix would be."""
    w: sp.csr_matrix = None

    @property
    def positions(self) -> tuple[int, int]:
        """(input positions summed, output positions broadcast to)."""
        return int(np.prod(self.in_shape[1:])), int(np.prod(self.out_shape[1:]))

    def apply(self, x):
        n = x.shape[0]
        sums = x.reshape(n, self.in_shape[0], -1).sum(axis=2)
        y = np.asarray(self.w @ sums.T).T  # (N, C_out)
        return np.repeat(y, self.positions[1], axis=1).reshape((n, *self.out_shape))

    def to_sparse(self):
        pin, pout = self.positions
        return sp.kron(self.w, np.ones((pout, pin)), format="csr")

    def row_sums(self):
        pin, pout = self.positions
        pos, neg = (np.asarray(m.sum(axis=1), np.float64).ravel() * pin
                    for m in (self.w.maximum(0), self.w.minimum(0)))
        return tuple(np.repeat(r, pout).reshape(self.out_shape) for r in (pos, neg))

    def reshaped(self, out_shape):
        out_shape = tuple(out_shape)
        pout = self.positions[1]
        if out_shape[0] == self.out_shape[0]:   # the same channels, positions regrouped
            return replace(self, out_shape=out_shape)
        if len(out_shape) == 1:                 # flattened: every position its own channel
            rows = np.repeat(np.arange(self.w.shape[0]), pout)
            return replace(self, out_shape=out_shape, w=self.w[rows])
        return super().reshaped(out_shape)


@dataclass(frozen=True, eq=False)
class Embedded(LinearMap):
    """out[offset:offset + c] = inner(x) along the channel axis (axis 0), zero elsewhere:
    one part of a channel Concat. ``inner`` is any map with out_shape (c, *rest); the
    embedding costs nothing, so a DenseNet block's growing concatenations hold one
    reference to each layer's convolution instead of a sparse matrix per layer and
    concatenation. A map applied after it is sliced to the part's channels
    (:func:`_compose_embedded`): a convolution reading a concatenation becomes one
    convolution per part on that part's input channels."""
    inner: LinearMap = None
    offset: int = 0

    @property
    def part(self) -> slice:
        return slice(self.offset, self.offset + self.inner.out_shape[0])

    def apply(self, x):
        out = np.zeros((x.shape[0], *self.out_shape))
        out[:, self.part] = self.inner.apply(x)
        return out

    def to_sparse(self):
        rest = int(np.prod(self.out_shape[1:]))
        m = self.inner.to_sparse().tocsr()
        before = self.offset * rest
        indptr = np.concatenate([np.zeros(before, m.indptr.dtype), m.indptr,
                                 np.full(int(np.prod(self.out_shape)) - before - m.shape[0], m.indptr[-1],
                                         m.indptr.dtype)])
        return sp.csr_matrix((m.data, m.indices, indptr), shape=(int(np.prod(self.out_shape)), m.shape[1]))

    def row_sums(self):
        out = []
        for r in self.inner.row_sums():
            full = np.zeros(self.out_shape)
            full[self.part] = r
            out.append(full)
        return tuple(out)

    def materialized(self) -> LinearMap:
        """The same map in a kind the lowering knows: a convolution with zero output
        channels outside the part (for a conv inside), else a sparse matrix."""
        m = self.inner
        if isinstance(m, Conv):
            w = np.zeros((self.out_shape[0], *dense_channels(m).shape[1:]))
            w[self.part] = dense_channels(m)
            return replace(m, out_shape=tuple(self.out_shape), w=w, groups=1)
        return Sparse(self.in_shape, tuple(self.out_shape), self.to_sparse())


@dataclass(frozen=True, eq=False)
class PositionScaled(LinearMap):
    """y[c, i, j] = f[i, j] * conv(x)[c, i, j]: a convolution whose outputs are scaled by a
    positive factor per position, the same for every channel (an AveragePool with
    count_include_pad=0 divides its border windows by their own sizes). Compositions that
    keep the factor outside a convolution stay compact: a map before it composes into
    ``conv``, and a channel scale or a 1x1 conv after it commutes with the factor."""
    conv: Conv = None
    f: np.ndarray = None          # (H_out, W_out), > 0

    def apply(self, x):
        return self.conv.apply(x) * self.f[None, None]

    def to_sparse(self):
        rows = np.broadcast_to(self.f[None], self.out_shape).ravel()
        return (sp.diags(rows.astype(np.float64)).tocsr() @ self.conv.to_sparse()).tocsr()

    def row_sums(self):
        return tuple(r * self.f[None] for r in self.conv.row_sums())

    def materialized(self) -> "Sparse":
        return Sparse(self.in_shape, tuple(self.out_shape), self.to_sparse())


def _compose_position_scaled(outer: LinearMap, inner: LinearMap) -> "LinearMap | None":
    if isinstance(inner, PositionScaled) and len(outer.in_shape) == 3 and len(outer.out_shape) == 3:
        if isinstance(outer, Scale) and outer.in_shape == outer.out_shape:
            return replace(inner, conv=compose(outer, inner.conv))
        if isinstance(outer, Conv) and _pointwise(outer) and tuple(outer.strides) == (1, 1) and not any(outer.pads):
            return replace(inner, out_shape=tuple(outer.out_shape), conv=compose(outer, inner.conv))
    if isinstance(outer, PositionScaled):
        got = compose(outer.conv, inner)
        if isinstance(got, Conv):
            return replace(outer, in_shape=tuple(inner.in_shape), conv=got)
    return None


def embed(m: LinearMap, offset: int, channels: int) -> Embedded:
    """``m`` placed at channel ``offset`` of ``channels`` (nested embeddings flattened)."""
    if isinstance(m, Embedded):
        return embed(m.inner, offset + m.offset, channels)
    return Embedded(tuple(m.in_shape), (channels, *m.out_shape[1:]), m, offset)


def _slice_inputs(outer: LinearMap, part: slice, in_shape) -> "LinearMap | None":
    """``outer`` restricted to the input channels ``part`` (a map from ``in_shape``), or None."""
    in_shape = tuple(in_shape)
    if isinstance(outer, Conv):
        w = dense_channels(outer)[:, part]
        return replace(outer, in_shape=in_shape, w=w, groups=1)
    if isinstance(outer, Scale) and outer.in_shape == outer.out_shape:
        return None   # handled by the caller: a scale keeps the embedding
    rest = int(np.prod(in_shape[1:]))
    cols = slice(part.start * rest, part.stop * rest)
    if isinstance(outer, Dense):
        return Dense(in_shape, tuple(outer.out_shape), outer.w[:, cols])
    if isinstance(outer, Sparse):
        return Sparse(in_shape, tuple(outer.out_shape), outer.m.tocsc()[:, cols].tocsr())
    if isinstance(outer, GlobalDense):
        return GlobalDense(in_shape, tuple(outer.out_shape), outer.w[:, part])
    if isinstance(outer, PositionScaled):
        return replace(outer, in_shape=in_shape, conv=_slice_inputs(outer.conv, part, in_shape))
    return None


def _compose_embedded(outer: LinearMap, inner: LinearMap) -> "LinearMap | None":
    """outer∘inner when either is an :class:`Embedded`, kept compact; else None."""
    if isinstance(outer, Embedded):
        return embed(compose(outer.inner, inner), outer.offset, outer.out_shape[0])
    if not isinstance(inner, Embedded):
        return None
    if isinstance(outer, Scale) and outer.in_shape == outer.out_shape:
        s = np.asarray(outer.s)[inner.part]
        part_shape = tuple(inner.inner.out_shape)
        return embed(compose(Scale(part_shape, part_shape, s), inner.inner), inner.offset, outer.out_shape[0])
    if isinstance(outer, ChannelTile):   # the segments of a fitted unit over a concatenation
        c = inner.inner.out_shape[0]
        tile = ChannelTile(tuple(inner.inner.out_shape), (c * outer.reps, *outer.out_shape[1:]), outer.reps)
        return embed(compose(tile, inner.inner), inner.offset * outer.reps, outer.out_shape[0])
    sliced = _slice_inputs(outer, inner.part, inner.inner.out_shape)
    return None if sliced is None else compose(sliced, inner.inner)


def _global(m: LinearMap) -> "GlobalDense | None":
    """``m`` as a :class:`GlobalDense` when it is one: a convolution whose unpadded kernel
    covers its whole (C, H, W) input with weights constant over space (a global average
    pool, or any map composed with one), or a sparse map from a (C, 1, 1) input whose
    output channels are constant over space (a broadcast); else None."""
    if isinstance(m, GlobalDense):
        return m
    if isinstance(m, Conv):
        if tuple(m.out_shape[1:]) != (1, 1) or any(m.pads) or tuple(m.w.shape[2:]) != tuple(m.in_shape[1:]) \
                or m.w.shape[2] * m.w.shape[3] == 1 or not np.all(m.w == m.w[:, :, :1, :1]):
            return None
        co, cig = m.w.shape[:2]
        rows = np.repeat(np.arange(co), cig)
        cols = ((np.arange(co) // (co // m.groups))[:, None] * cig + np.arange(cig)[None, :]).ravel()
        w = sp.csr_matrix((m.w[:, :, 0, 0].ravel(), (rows, cols)), shape=(co, m.in_shape[0]))
        return GlobalDense(m.in_shape, m.out_shape, w)
    if isinstance(m, Sparse) and len(m.in_shape) == 3 and len(m.out_shape) == 3 \
            and tuple(m.in_shape[1:]) == (1, 1) and tuple(m.out_shape[1:]) != (1, 1):
        pout = int(np.prod(m.out_shape[1:]))
        w = m.m[::pout]
        if (m.m != w[np.repeat(np.arange(w.shape[0]), pout)]).nnz:
            return None
        return GlobalDense(m.in_shape, m.out_shape, sp.csr_matrix(w))
    return None


def _channel_matrix(m: LinearMap) -> "sp.csr_matrix | None":
    """The (C_out, C_in) channel matrix of a position-wise channel map (a 1x1 convolution
    on the same grid, a per-channel scale, a segment sum), or None."""
    if isinstance(m, Scale) and m.in_shape == m.out_shape:
        return sp.diags(np.asarray(m.s, np.float64)).tocsr()
    if isinstance(m, ChannelSum):
        c, s = m.f.shape
        return sp.csr_matrix((m.f.ravel(), np.arange(c * s), np.arange(0, c * s + 1, s)), shape=(c, c * s))
    if isinstance(m, ChannelTile):
        c = m.in_shape[0]
        return sp.csr_matrix((np.ones(c * m.reps), np.repeat(np.arange(c), m.reps),
                              np.arange(c * m.reps + 1)), shape=(c * m.reps, c))
    if _pointwise(m):
        return sp.csr_matrix(dense_channels(m)[:, :, 0, 0])
    return None


def _compose_global(outer: LinearMap, inner: LinearMap) -> "GlobalDense | None":
    """outer∘inner as a :class:`GlobalDense` when one of them is one (see :func:`_global`)
    and the other is a position-wise channel map, another global map, or (outside) a
    dense layer on its vector; else None (the caller falls back to other forms)."""
    go, gi = _global(outer), _global(inner)
    if go is None and gi is None:
        return None
    if go is not None and gi is not None:
        w = go.w @ (gi.w * gi.positions[1])
    elif go is not None:
        mat = _channel_matrix(inner)
        if mat is None:
            return None
        w = go.w @ mat
    elif isinstance(outer, Dense) and len(outer.out_shape) == 1:
        pout = gi.positions[1]
        mat = outer.w.reshape(outer.w.shape[0], gi.out_shape[0], pout).sum(axis=2)
        w = sp.csr_matrix(mat) @ gi.w
    else:
        mat = _channel_matrix(outer)
        if mat is None:
            return None
        w = mat @ gi.w
    return GlobalDense(tuple(inner.in_shape), tuple(outer.out_shape), sp.csr_matrix(w))


def per_channel(v, shape) -> np.ndarray:
    """A per-channel vector (C,) shaped to broadcast over a per-sample tensor of ``shape``."""
    return np.asarray(v, np.float64).reshape((-1,) + (1,) * (len(shape) - 1))


def accumulate(maps: dict, src: str, m: LinearMap) -> None:
    """maps[src] += m (a map from the same source adds; a new source is inserted)."""
    maps[src] = add_maps(maps[src], m) if src in maps else m


def conv_map(in_shape, w, strides, pads, dilations, groups) -> Conv:
    ho, wo = conv_output_hw(in_shape[1:], w.shape[2:], strides, pads, dilations)
    return Conv(tuple(in_shape), (w.shape[0], ho, wo), np.asarray(w, np.float64), tuple(strides),
                tuple(pads), tuple(dilations), int(groups))


def _pointwise(m: LinearMap) -> bool:
    """A 1x1 convolution that keeps the spatial grid (a per-position channel mix)."""
    return isinstance(m, Conv) and m.w.shape[2:] == (1, 1) and tuple(m.strides) == (1, 1) \
        and not any(m.pads) and tuple(m.in_shape[1:]) == tuple(m.out_shape[1:])


def dense_channels(c: Conv) -> np.ndarray:
    """The weight of ``c`` as an ungrouped convolution (co, ci, kh, kw), zeros across groups."""
    if c.groups == 1:
        return c.w
    co, cig = c.w.shape[:2]
    full = np.zeros((co, cig * c.groups, *c.w.shape[2:]))
    rows = np.arange(co)[:, None]
    cols = (rows // (co // c.groups)) * cig + np.arange(cig)[None, :]
    full[rows, cols] = c.w
    return full


def _end_pad(n_in, n_out, extent, stride, before):
    """The end padding that gives a convolution of receptive ``extent`` and ``stride`` on
    n_in inputs with ``before`` leading pads exactly n_out outputs, or None if none can."""
    after = max(0, (n_out - 1) * stride - before + extent - n_in)
    return after if (n_in + before + after - extent) // stride + 1 == n_out else None


def _composed_axis(n_in, n_mid, n_out, ki, si, pi, ko, so, po):
    """Kernel, stride and pads (before, after) along one axis of the convolution equal to
    an outer convolution (ko, so, pads po) of an inner one (ki, si, pads pi), or None.
    The outer's zero padding reads inner positions outside [0, n_mid); the composed
    convolution instead reads the input there, so every such position must see padding
    only. n_in, n_mid, n_out: the axis' input, intermediate and output sizes."""
    lo_mid = -po[0]
    hi_mid = (n_out - 1) * so - po[0] + ko - 1
    if lo_mid < 0 and -si - pi[0] + ki - 1 >= 0:
        return None
    if hi_mid >= n_mid and n_mid * si - pi[0] < n_in:
        return None
    k, s, before = (ko - 1) * si + ki, so * si, po[0] * si + pi[0]
    after = _end_pad(n_in, n_out, k, s, before)
    return None if after is None else (k, s, (before, after))


def conv_pair_goes_sparse(outer: LinearMap, inner: LinearMap) -> bool:
    """Whether :func:`compose` of two convolutions falls back to a sparse matrix (the outer's
    padding reads positions no single convolution of the input can), decided from shapes and
    attributes alone, before any weights are multiplied (:func:`_conv_of_convs`' rule)."""
    if not (isinstance(outer, Conv) and isinstance(inner, Conv)) or _pointwise(outer) or _pointwise(inner):
        return False
    if _global(outer) is not None or _global(inner) is not None:
        return False
    if tuple(outer.dilations) != (1, 1) or tuple(inner.dilations) != (1, 1):
        return True
    return any(_composed_axis(inner.in_shape[1 + a], inner.out_shape[1 + a], outer.out_shape[1 + a],
                              inner.w.shape[2 + a], inner.strides[a], inner.pads[a::2],
                              outer.w.shape[2 + a], outer.strides[a], outer.pads[a::2]) is None
               for a in (0, 1))


def _conv_of_convs(outer: "Conv", inner: "Conv") -> "Conv | None":
    """outer∘inner as one convolution (undilated), or None where padding forbids it: a
    selection before a convolution (a max-pool tap) stays a convolution of the source."""
    if tuple(outer.dilations) != (1, 1) or tuple(inner.dilations) != (1, 1):
        return None
    axes = [_composed_axis(inner.in_shape[1 + a], inner.out_shape[1 + a], outer.out_shape[1 + a],
                           inner.w.shape[2 + a], inner.strides[a], inner.pads[a::2],
                           outer.w.shape[2 + a], outer.strides[a], outer.pads[a::2])
            for a in (0, 1)]
    if None in axes:
        return None
    (kh, sh, (pt, pb)), (kw, sw, (pl, pr)) = axes
    if outer.groups == inner.groups:
        g, wo, wi = outer.groups, outer.w, inner.w
    else:
        g, wo, wi = 1, dense_channels(outer), dense_channels(inner)
    co, c1g, ku, kv = wo.shape
    c1, cig, kih, kiw = wi.shape
    wo = wo.reshape(g, co // g, c1g, ku, kv)
    wi = wi.reshape(g, c1 // g, cig, kih, kiw)
    w = np.zeros((g, co // g, cig, kh, kw))
    (si_h, si_w) = inner.strides
    for u in range(ku):
        for v in range(kv):
            w[:, :, :, u * si_h:u * si_h + kih, v * si_w:v * si_w + kiw] += \
                np.einsum("goc,gcikl->goikl", wo[:, :, :, u, v], wi)
    return _on_lattice(Conv(inner.in_shape, outer.out_shape, w.reshape(co, cig, kh, kw), (sh, sw),
                            (pt, pl, pb, pr), (1, 1), g))


def _on_lattice(c: "Conv") -> "Conv":
    """``c`` with its kernel cut to the taps that can be nonzero: leading and trailing zero
    rows/columns dropped (their padding with them) and taps on a lattice of step d made a
    dilation d (a convolution after a strided selection reads every d-th input)."""
    nz = np.abs(c.w).sum(axis=(0, 1))
    if not nz.any():
        return c
    kernel, dil, pads = [], [], [c.pads[0], c.pads[1], c.pads[2], c.pads[3]]
    for a in (0, 1):
        taps = np.nonzero(nz.any(axis=1 - a))[0]
        first, d = int(taps[0]), int(np.gcd.reduce(np.diff(taps))) if taps.size > 1 else 1
        if first > pads[a]:  # trimming would need negative padding (cropping)
            return c
        k = (int(taps[-1]) - first) // d + 1
        n_in, n_out = c.in_shape[1 + a], c.out_shape[1 + a]
        before = pads[a] - first
        after = _end_pad(n_in, n_out, (k - 1) * d + 1, c.strides[a], before)
        if after is None:
            return c
        kernel.append(slice(first, int(taps[-1]) + 1, d))
        dil.append(d)
        pads[a], pads[a + 2] = before, after
    return replace(c, w=np.ascontiguousarray(c.w[:, :, kernel[0], kernel[1]]), pads=tuple(pads),
                   dilations=tuple(dil))


def compose(outer: LinearMap, inner: LinearMap) -> LinearMap:
    """The map x -> outer(inner(x))."""
    if tuple(outer.in_shape) != tuple(inner.out_shape):
        raise ValueError(f"cannot compose: {outer.in_shape} != {inner.out_shape}")
    got = _compose_embedded(outer, inner)
    if got is not None:
        return got
    if isinstance(inner, Embedded):
        inner = inner.materialized()
    got = _compose_position_scaled(outer, inner)
    if got is not None:
        return got
    if isinstance(inner, PositionScaled):
        inner = inner.materialized()
    if isinstance(outer, PositionScaled):
        outer = outer.materialized()
    got = _compose_global(outer, inner)
    if got is not None:
        return got
    if isinstance(outer, Conv) and isinstance(inner, Conv) and (_pointwise(outer) or _pointwise(inner)):
        # a 1x1 channel mix before or after a convolution is one convolution (the linear
        # bottleneck of MobileNet/EfficientNet blocks meeting the next block's expansion)
        if _pointwise(outer):
            w = np.einsum("oc,cikl->oikl", dense_channels(outer)[:, :, 0, 0], dense_channels(inner))
            return replace(inner, out_shape=outer.out_shape, w=w, groups=1)
        w = np.einsum("ockl,ci->oikl", dense_channels(outer), dense_channels(inner)[:, :, 0, 0])
        return replace(outer, in_shape=inner.in_shape, w=w, groups=1)
    if isinstance(outer, Conv) and isinstance(inner, Conv):
        got = _conv_of_convs(outer, inner)
        if got is not None:
            return got
    if isinstance(outer, ChannelTile) and isinstance(inner, ChannelSum) and len(inner.in_shape) == 3:
        # segments of one activation read by the segments of another: a grouped 1x1 conv
        c, s = inner.f.shape
        w = np.repeat(inner.f, outer.reps, axis=0)[:, :, None, None]
        return Conv(inner.in_shape, outer.out_shape, w, groups=c)
    if isinstance(outer, ChannelTile):
        r = outer.reps
        if isinstance(inner, Conv):
            return replace(inner, out_shape=outer.out_shape, w=np.repeat(inner.w, r, axis=0))
        if isinstance(inner, Dense):
            c = inner.out_shape[0]
            w = np.repeat(inner.w.reshape(c, -1, inner.w.shape[1]), r, axis=0)
            return Dense(inner.in_shape, outer.out_shape, w.reshape(-1, inner.w.shape[1]))
    if isinstance(inner, ChannelSum):
        c, s = inner.f.shape
        if isinstance(outer, Scale) and outer.in_shape == outer.out_shape:
            return replace(inner, f=inner.f * outer.s[:, None])
        if isinstance(outer, Conv):
            co, cig = outer.w.shape[:2]
            cabs = (np.arange(co) // (co // outer.groups))[:, None] * cig + np.arange(cig)[None, :]
            w = outer.w[:, :, None] * inner.f[cabs][:, :, :, None, None]   # (co, cig, S, kh, kw)
            return replace(outer, in_shape=inner.in_shape, w=w.reshape(co, cig * s, *outer.w.shape[2:]))
    if isinstance(inner, Scale) and inner.in_shape == inner.out_shape:
        if isinstance(outer, Scale):
            return Scale(inner.in_shape, outer.out_shape, outer.s * inner.s)
        if isinstance(outer, Conv):
            cig = outer.w.shape[1]
            per_in = inner.s.reshape(outer.groups, cig)  # input channels by group
            co_g = outer.w.shape[0] // outer.groups
            factor = np.repeat(per_in, co_g, axis=0)[:, :, None, None]
            return replace(outer, in_shape=inner.in_shape, w=outer.w * factor)
        if isinstance(outer, Dense):
            return replace(outer, in_shape=inner.in_shape, w=outer.w * inner.full().ravel()[None, :])
    if isinstance(outer, Scale) and outer.in_shape == outer.out_shape:
        if isinstance(inner, Conv):
            return replace(inner, w=inner.w * outer.s[:, None, None, None], out_shape=outer.out_shape)
        if isinstance(inner, (Dense, Sparse)):
            rows = outer.full().ravel()
            if isinstance(inner, Dense):
                return replace(inner, w=inner.w * rows[:, None])
            return replace(inner, m=sp.diags(rows).tocsr() @ inner.m)
    if isinstance(outer, Dense):
        w = outer.w @ inner.w if isinstance(inner, Dense) else np.asarray(
            (inner.to_sparse().T @ outer.w.T).T)
        return Dense(inner.in_shape, outer.out_shape, np.asarray(w, np.float64))
    return sparse_map(inner.in_shape, outer.out_shape, (outer.to_sparse() @ inner.to_sparse()).tocsr())


def add_maps(a: LinearMap, b: LinearMap) -> LinearMap:
    """The map x -> a(x) + b(x) (both from the same source)."""
    if isinstance(a, Scale) and isinstance(b, Scale):
        return replace(a, s=a.s + b.s)
    if isinstance(a, Dense) and isinstance(b, Dense):
        return replace(a, w=a.w + b.w)
    if isinstance(a, ChannelSum) and isinstance(b, ChannelSum) and a.f.shape == b.f.shape:
        return replace(a, f=a.f + b.f)
    if isinstance(a, GlobalDense) and isinstance(b, GlobalDense):
        return replace(a, w=sp.csr_matrix(a.w + b.w))
    if isinstance(a, Embedded) and isinstance(b, Embedded) and a.offset == b.offset \
            and a.inner.out_shape == b.inner.out_shape:
        return embed(add_maps(a.inner, b.inner), a.offset, a.out_shape[0])
    a, b = (m.materialized() if isinstance(m, Embedded) else m for m in (a, b))
    if isinstance(a, Conv) and isinstance(b, Conv) and a.attrs() == b.attrs() \
            and a.w.shape == b.w.shape:
        return replace(a, w=a.w + b.w)
    if isinstance(a, Conv) and isinstance(b, Conv):
        got = _conv_sum(a, b)
        if got is not None:
            return got
    return Sparse(a.in_shape, a.out_shape, (a.to_sparse() + b.to_sparse()).tocsr())


def _undilated(c: "Conv") -> "Conv":
    """The same convolution with dilation 1 (zeros between the taps)."""
    dh, dw = c.dilations
    if (dh, dw) == (1, 1):
        return c
    co, ci, kh, kw = c.w.shape
    w = np.zeros((co, ci, (kh - 1) * dh + 1, (kw - 1) * dw + 1))
    w[:, :, ::dh, ::dw] = c.w
    return replace(c, w=w, dilations=(1, 1))


def _conv_sum(a: "Conv", b: "Conv") -> "Conv | None":
    """a + b as one convolution when both have the same strides and dilations (kernels of
    other sizes or pads, e.g. the branches of an Inception block reading one source, are
    placed in one kernel covering both windows; the extra taps read zero padding or carry
    zero weights), else None."""
    if tuple(a.strides) != tuple(b.strides):
        return None
    if tuple(a.dilations) != tuple(b.dilations):
        a, b = _undilated(a), _undilated(b)
    groups = a.groups if a.groups == b.groups else 1
    wa, wb = (c.w if c.groups == groups else dense_channels(c) for c in (a, b))
    starts, sizes, new_pads = [], [], [[0, 0], [0, 0]]
    for ax in (0, 1):
        d, s = a.dilations[ax], a.strides[ax]
        pa, pb_ = a.pads[ax], b.pads[ax]                     # top/left pads
        if (pa - pb_) % d:
            return None
        lo = min(-pa, -pb_)
        hi = max(-pa + (wa.shape[2 + ax] - 1) * d, -pb_ + (wb.shape[2 + ax] - 1) * d)
        k = (hi - lo) // d + 1
        n_in, n_out = a.in_shape[1 + ax], a.out_shape[1 + ax]
        end = (n_out - 1) * s + (k - 1) * d + 1 - n_in - (-lo)
        if end < 0:
            return None
        starts.append(((-pa - lo) // d, (-pb_ - lo) // d))
        sizes.append(k)
        new_pads[ax] = [-lo, end]
    w = np.zeros((wa.shape[0], wa.shape[1], *sizes))
    for wt, i in ((wa, 0), (wb, 1)):
        y0, x0 = starts[0][i], starts[1][i]
        w[:, :, y0:y0 + wt.shape[2], x0:x0 + wt.shape[3]] += wt
    pads = (new_pads[0][0], new_pads[1][0], new_pads[0][1], new_pads[1][1])
    return Conv(tuple(a.in_shape), tuple(a.out_shape), w, tuple(a.strides), pads, tuple(a.dilations), groups)
