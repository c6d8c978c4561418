"""Composition of the importer's float linear maps: every special case that keeps a
compact form (a conv instead of a sparse matrix) must equal applying the two maps."""

import numpy as np
import pytest

from amosc.compiler import linear as L

RNG = np.random.default_rng(0)


def conv(cin, cout, k, hw=5, stride=1, pad=0, groups=1):
    w = RNG.normal(size=(cout, cin // groups, k, k))
    return L.conv_map((cin, hw, hw), w, (stride, stride), (pad,) * 4, (1, 1), groups)


CASES = {
    "grouped 3x3 after pointwise": (conv(4, 8, 3, stride=2, pad=1, groups=2), conv(6, 4, 1)),
    "depthwise after pointwise": (conv(4, 4, 3, pad=1, groups=4), conv(6, 4, 1)),
    "grouped pointwise after 3x3": (conv(8, 6, 1, hw=3, groups=2), conv(4, 8, 3, stride=2, pad=1, groups=2)),
    "pointwise after pointwise": (conv(4, 3, 1), conv(6, 4, 1)),
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
    c = L.compose(outer, inner)  # no compact rule: a sparse matrix
    x = RNG.normal(size=(2, *inner.in_shape))
    np.testing.assert_allclose(c.apply(x), outer.apply(inner.apply(x)), atol=1e-12)
