"""Composition of the importer's float linear maps: every special case that keeps a
compact form (a conv instead of a sparse matrix) must equal applying the two maps."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from amosc.ir import linear as L

RNG = np.random.default_rng(0)


def conv(cin, cout, k, hw=5, stride=1, pad=0, groups=1):
    w = RNG.normal(size=(cout, cin // groups, k, k))
    return L.conv_map((cin, hw, hw), w, (stride, stride), (pad,) * 4, (1, 1), groups)


def pool_tap(c, hw, i, j):
    """Tap (i, j) of every 2x2 stride-2 window (how MaxPool reads its input)."""
    w = np.zeros((c, 1, 2, 2))
    w[:, 0, i, j] = 1.0
    return L.conv_map((c, hw, hw), w, (2, 2), (0, 0, 0, 0), (1, 1), c)


CASES = {
    "grouped 3x3 after pointwise": (conv(4, 8, 3, stride=2, pad=1, groups=2), conv(6, 4, 1)),
    "depthwise after pointwise": (conv(4, 4, 3, pad=1, groups=4), conv(6, 4, 1)),
    "grouped pointwise after 3x3": (conv(8, 6, 1, hw=3, groups=2), conv(4, 8, 3, stride=2, pad=1, groups=2)),
    "pointwise after pointwise": (conv(4, 3, 1), conv(6, 4, 1)),
    "3x3 after a max-pool tap (dilated)": (conv(4, 6, 3, hw=3, pad=1), pool_tap(4, 6, 1, 1)),
    "global average of a padded 3x3": (conv(4, 4, 5, hw=5, groups=4), conv(3, 4, 3, pad=1)),
    "segments read by segments": (L.ChannelTile((4, 5, 5), (8, 5, 5), 2),
                                  L.ChannelSum((12, 5, 5), (4, 5, 5), RNG.normal(size=(4, 3)))),
}


@pytest.mark.parametrize("name", CASES)
def test_compact_compositions_equal_the_two_maps(name):
    outer, inner = CASES[name]
    c = L.compose(outer, inner)
    assert isinstance(c, L.Conv), type(c)
    assert c.in_shape == inner.in_shape and c.out_shape == outer.out_shape
    x = RNG.normal(size=(3, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-12)
    # the sparse form (what the range analysis and projections use) is the same map
    np.testing.assert_allclose(c.to_sparse().toarray(), (outer.to_sparse() @ inner.to_sparse()).toarray(),
                               atol=1e-12)


def test_strided_conv_after_strided_conv_stays_exact():
    outer, inner = conv(4, 3, 3, hw=3, stride=2, pad=1), conv(2, 4, 3, stride=2, pad=1)
    c = L.compose(outer, inner)
    x = RNG.normal(size=(2, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-12)


def test_padding_that_would_read_the_input_is_not_folded_into_a_conv():
    # the outer's zero padding sits where the inner (3x3, pad 1) would read real pixels
    outer, inner = conv(4, 3, 3, pad=1), conv(2, 4, 3, pad=1)
    c = L.compose(outer, inner)
    assert not isinstance(c, L.Conv)
    x = RNG.normal(size=(2, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.integers(3, 9), st.sampled_from([1, 2]), st.sampled_from([1, 2, 3]), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 2), st.integers(0, 2), st.integers(1, 3), st.integers(1, 2),
       st.booleans(), st.data())
def test_conv_after_conv_equals_the_two_maps(hw, groups, ki, si, ko, pi, po, so, cin, sparse_w, data):
    """Any two undilated convolutions: the composition (a conv where the rule applies,
    else a sparse matrix) is the same map, borders included."""
    hm = (hw + 2 * pi - ki) // si + 1
    if hm < 1 or (hm + 2 * po - ko) // so + 1 < 1:
        return
    c0, c1, c2 = cin * groups, 2 * groups, data.draw(st.sampled_from([1, 2])) * groups
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    wi = rng.normal(size=(c1, c0 // groups, ki, ki))
    if sparse_w:  # one tap per channel: a pooling tap
        wi = wi * (rng.random(wi.shape) < 0.3)
    inner = L.conv_map((c0, hw, hw), wi, (si, si), (pi,) * 4, (1, 1), groups)
    outer_groups = data.draw(st.sampled_from([1, groups]))
    outer = L.conv_map(inner.out_shape, rng.normal(size=(c2, c1 // outer_groups, ko, ko)),
                       (so, so), (po,) * 4, (1, 1), outer_groups)
    c = L.compose(outer, inner)
    assert c.out_shape == outer.out_shape
    x = rng.normal(size=(2, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-9)
    np.testing.assert_allclose(c.to_sparse().toarray(), (outer.to_sparse() @ inner.to_sparse()).toarray(),
                               atol=1e-9)


def test_a_conv_after_a_pooling_tap_reads_every_other_pixel_through_a_dilation():
    outer, inner = conv(4, 6, 3, hw=3, pad=1), pool_tap(4, 6, 1, 0)
    c = L.compose(outer, inner)
    assert c.w.shape == (6, 4, 3, 3) and c.dilations == (2, 2) and c.strides == (2, 2)


# ----------------------------------------------------------------------------- global maps
def gap(c, hw):
    """GlobalAveragePool as the importer builds it: a depthwise kernel covering the map."""
    return L.conv_map((c, hw, hw), np.full((c, 1, hw, hw), 1.0 / hw ** 2), (1, 1), (0,) * 4, (1, 1), c)


def broadcast(c, hw):
    """A per-channel value (C, 1, 1) repeated over a (C, hw, hw) map (the excitation's gate
    meeting the features)."""
    rows = np.arange(c * hw * hw)
    import scipy.sparse as sp
    m = sp.csr_matrix((np.ones(rows.size), (rows, rows // (hw * hw))), shape=(rows.size, c))
    return L.Sparse((c, 1, 1), (c, hw, hw), m)


def _same_map(c, outer, inner):
    assert isinstance(c, L.GlobalDense), type(c)
    assert c.in_shape == tuple(inner.in_shape) and c.out_shape == tuple(outer.out_shape)
    x = RNG.normal(size=(3, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-12)
    dense = (outer.to_sparse() @ inner.to_sparse()).toarray()
    np.testing.assert_allclose(c.to_sparse().toarray(), dense, atol=1e-12)
    for got, want in zip(c.row_sums(), (np.maximum(dense, 0).sum(1), np.minimum(dense, 0).sum(1))):
        np.testing.assert_allclose(got.reshape(-1), want, atol=1e-12)


GLOBAL_CASES = {
    "squeeze: 1x1 conv after global average": lambda: (conv(6, 3, 1, hw=1), gap(6, 7)),
    "global average after a 1x1 conv": lambda: (gap(5, 6), conv(4, 5, 1, hw=6)),
    "global average of a per-channel scale": lambda: (gap(4, 5), L.Scale((4, 5, 5), (4, 5, 5), RNG.normal(size=4))),
    "broadcast after a 1x1 conv": lambda: (broadcast(4, 5), conv(3, 4, 1, hw=1)),
    "global average of a broadcast": lambda: (gap(4, 5), broadcast(4, 5)),
    "classifier head: dense after a flattened global average":
        lambda: (L.Dense((6,), (3,), RNG.normal(size=(3, 6))), gap(6, 4).reshaped((6,))),
}


@pytest.mark.parametrize("name", GLOBAL_CASES)
def test_global_compositions_stay_compact_and_equal_the_two_maps(name):
    outer, inner = GLOBAL_CASES[name]()
    c = L.compose(outer, inner)
    _same_map(c, outer, inner)
    # stored in O(channels^2), not O(channels^2 * positions) as the sparse form is
    assert c.w.nnz <= c.in_shape[0] * c.out_shape[0]


def test_global_maps_add_reshape_and_chain():
    a = L.compose(conv(6, 3, 1, hw=1), gap(6, 7))
    b = L.compose(conv(6, 3, 1, hw=1), gap(6, 7))
    s = L.add_maps(a, b)
    assert isinstance(s, L.GlobalDense)
    np.testing.assert_allclose(s.to_sparse().toarray(), a.to_sparse().toarray() + b.to_sparse().toarray())
    flat = a.reshaped((3,))
    x = RNG.normal(size=(2, 6, 7, 7))
    np.testing.assert_allclose(flat.apply(x), a.apply(x).reshape(2, 3))
    # squeeze, excite and broadcast back: still one global map over the whole chain
    excite = L.compose(conv(3, 4, 1, hw=1), a)
    chain = L.compose(broadcast(4, 7), excite)
    _same_map(chain, broadcast(4, 7), excite)
    assert chain.positions == (49, 49)


def test_a_spatially_varying_kernel_is_not_global():
    w = RNG.normal(size=(4, 1, 5, 5))   # a 5x5 depthwise conv over a 5x5 map, not an average
    m = L.conv_map((4, 5, 5), w, (1, 1), (0,) * 4, (1, 1), 4)
    assert L._global(m) is None
    assert not isinstance(L.compose(conv(4, 2, 1, hw=1), m), L.GlobalDense)


# ----------------------------------------------------------------------------- concatenation parts
def _embedded_case(outer_of):
    """Two parts concatenated along channels (3 + 5 of 8), then ``outer_of(8)``: a gate's
    output as it is (a scale) and a pre-activation (a 1x1 convolution, DenseNet's case)."""
    a, b = L.Scale((3, 6, 6), (3, 6, 6), RNG.normal(size=3)), conv(2, 5, 1, hw=6)
    ea, eb = L.embed(a, 0, 8), L.embed(b, 3, 8)
    return outer_of(8), (a, ea), (b, eb)


OUTERS = {
    "3x3 conv": lambda c: conv(c, 4, 3, hw=6, pad=1),
    "depthwise conv": lambda c: conv(c, c, 3, hw=6, pad=1, groups=c),
    "per-channel scale (BN)": lambda c: L.Scale((c, 6, 6), (c, 6, 6), RNG.normal(size=c)),
    "dense head": lambda c: L.Dense((c, 6, 6), (3,), RNG.normal(size=(3, c * 36))),
    "global average": lambda c: gap(c, 6),
    "segments of a fitted unit": lambda c: L.ChannelTile((c, 6, 6), (3 * c, 6, 6), 3),
}


@pytest.mark.parametrize("name", OUTERS)
def test_maps_after_a_concatenation_part_equal_the_two_maps(name):
    outer, *parts = _embedded_case(OUTERS[name])
    for inner, e in parts:
        assert isinstance(e, L.Embedded) and e.out_shape == (8, 6, 6)
        x = RNG.normal(size=(2, *inner.in_shape))
        np.testing.assert_allclose(e.apply(x)[:, e.part], inner.apply(x))
        np.testing.assert_allclose(e.to_sparse().toarray() @ x[0].ravel(), e.apply(x)[0].ravel(), atol=1e-12)
        c = L.compose(outer, e)
        np.testing.assert_allclose(c.apply(x), outer.apply(e.apply(x)), atol=1e-12)
        np.testing.assert_allclose(c.to_sparse().toarray(), (outer.to_sparse() @ e.to_sparse()).toarray(),
                                   atol=1e-12)
        assert not isinstance(c, L.Sparse)   # stays structured
        m = e.materialized()
        np.testing.assert_allclose(m.apply(x), e.apply(x), atol=1e-12)
        for got, want in zip(e.row_sums(), m.row_sums()):
            np.testing.assert_allclose(got, want, atol=1e-12)


def test_nested_and_added_parts():
    a = conv(4, 3, 1, hw=5)
    e = L.embed(L.embed(a, 2, 6), 4, 10)   # a concatenation inside a concatenation
    assert isinstance(e.inner, L.Conv) and e.part == slice(6, 9)
    x = RNG.normal(size=(2, 4, 5, 5))
    np.testing.assert_allclose(e.apply(x)[:, 6:9], a.apply(x))
    s = L.add_maps(L.embed(a, 0, 6), L.embed(a, 3, 6))   # concat(x, x): both parts from one source
    np.testing.assert_allclose(s.apply(x), np.concatenate([a.apply(x)] * 2, axis=1), atol=1e-12)


def test_position_scaled_maps_compose_compactly_and_exactly():
    """A per-position factor over a conv stays outside the convolutions around it: a map
    before it composes into its conv, a channel scale or a 1x1 conv after it commutes."""
    rng = np.random.default_rng(0)
    pool = L.conv_map((4, 6, 6), np.full((4, 1, 3, 3), 1 / 9), (1, 1), (1, 1, 1, 1), (1, 1), 4)
    f = rng.uniform(1, 2.25, (6, 6))
    ps = L.PositionScaled((4, 6, 6), (4, 6, 6), pool, f)
    before = L.conv_map((3, 6, 6), rng.normal(size=(4, 3, 1, 1)), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    after = L.conv_map((4, 6, 6), rng.normal(size=(5, 4, 1, 1)), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    scale = L.Scale((5, 6, 6), (5, 6, 6), rng.uniform(0.5, 2, 5))
    x = rng.normal(size=(2, 3, 6, 6))
    m = L.compose(scale, L.compose(after, L.compose(ps, before)))
    assert isinstance(m, L.PositionScaled) and isinstance(m.conv, L.Conv)
    want = scale.apply(after.apply(ps.apply(before.apply(x))))
    np.testing.assert_allclose(m.apply(x), want, atol=1e-12)
    np.testing.assert_allclose((m.to_sparse() @ x.reshape(2, -1).T).T.reshape(want.shape), want, atol=1e-12)
    np.testing.assert_allclose(m.materialized().apply(x), want, atol=1e-12)
    pos, neg = m.row_sums()
    dense = m.to_sparse().toarray()
    assert np.all(pos.ravel() >= np.maximum(dense, 0).sum(1) - 1e-12)   # a bound (borders sum fewer)


@pytest.mark.parametrize("ka,pa,da,kb,pb,db,stride,ga,gb", [
    (3, 1, 1, 1, 0, 1, 1, 1, 1),      # Inception branches: a 3x3 and a 1x1 reading one source
    (2, 0, 1, 5, 3, 2, 2, 1, 1),      # a strided tap and a dilated composed pool
    (3, 1, 1, 5, 2, 1, 1, 4, 1),      # depthwise + dense
])
def test_sum_of_convolutions_of_other_geometry_is_one_convolution(ka, pa, da, kb, pb, db, stride, ga, gb):
    rng = np.random.default_rng(ka * 10 + kb)
    c, h = 4, 9
    a = L.conv_map((c, h, h), rng.normal(size=(4, c // ga, ka, ka)), (stride,) * 2, (pa,) * 4, (da,) * 2, ga)
    b = L.conv_map((c, h, h), rng.normal(size=(4, c // gb, kb, kb)), (stride,) * 2, (pb,) * 4, (db,) * 2, gb)
    assert a.out_shape == b.out_shape
    s = L.add_maps(a, b)
    assert isinstance(s, L.Conv)
    x = rng.normal(size=(2, c, h, h))
    np.testing.assert_allclose(s.apply(x), a.apply(x) + b.apply(x), atol=1e-12)


def test_conv_pair_goes_sparse_predicts_compose_without_multiplying():
    """The importer decides to relay a padded conv or pool over a max-pool's taps before the
    product is built; the prediction must be compose's own outcome, pair for pair."""
    import itertools
    rng = np.random.default_rng(0)
    seen = set()
    for h, (ki, si, pi), (ko, so, po) in itertools.product(
            (5, 8), itertools.product((1, 2, 3), (1, 2), (0, 1)), itertools.product((1, 2, 3), (1, 2), (0, 1))):
        inner = L.conv_map((2, h, h), rng.normal(size=(3, 2, ki, ki)), (si, si), (pi,) * 4, (1, 1), 1)
        if min(inner.out_shape[1:]) + 2 * po < ko:
            continue
        outer = L.conv_map(inner.out_shape, rng.normal(size=(2, 3, ko, ko)), (so, so), (po,) * 4, (1, 1), 1)
        sparse = isinstance(L.compose(outer, inner), L.Sparse)
        assert sparse == L.conv_pair_goes_sparse(outer, inner), (h, ki, si, pi, ko, so, po)
        seen.add(sparse)
    assert seen == {True, False}
