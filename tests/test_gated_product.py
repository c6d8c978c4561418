"""The gated product circuit (--product gated): x * s with s one value per channel, as s's K
binary digits (1-bit gates) gating K ADCs of x."""

import numpy as np
import pytest

import amosc
from amosc.compiler.pipeline import calibrate, compile_model, import_graph
from amosc.compiler.quantize import Options
from amosc.errors import AmoscError
from amosc.ir.nodes import GatePop
from amosc.ir.semantics import decode, decode_activation, evaluate
from amosc.ir.tensor import dumps
from conftest import structured_inputs
from onnx_builders import save, se_cnn
from test_semantics import assert_levels_equal

K = 5


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("gated")
    path = save(se_cnn(), d / "se.onnx")
    x = structured_inputs((1, 8, 8), 100, seed=4)
    return path, x[:60], x[60:]


def _names(program, part):
    return sorted(p.name for p in program.populations if part in p.name)


def test_the_importer_records_the_per_channel_factor(case):
    path, *_ = case
    g = import_graph(path)
    (u,) = [gate for gate in g.gates if gate.factors is not None]
    x, s = u.factors
    assert u.partner and tuple(x.shape) == (4, 8, 8) and tuple(s.shape) == (4, 1, 1)
    assert "factor s 4x1x1" in dumps(g)


def test_the_circuit_replaces_the_squares_and_runs_spike_for_spike(case):
    path, calib, xv = case
    squares = compile_model(path, calib, bits=K)
    gated = compile_model(path, calib, bits=K, product="gated")
    assert any(p.activation == "square" for p in squares.populations if isinstance(p, GatePop))
    assert not any(p.activation == "square" for p in gated.populations if isinstance(p, GatePop))
    bits, ands = _names(gated, "_bit"), _names(gated, "_and")
    assert len(bits) == len(ands) == K
    assert all(gated.pop(b).code.bits == 1 and gated.pop(b).shape == (4, 1, 1) for b in bits)
    assert all(gated.pop(a).code.bits == K and gated.pop(a).shape == (4, 8, 8) for a in ands)
    assert gated.options["product"] == "gated"
    assert_levels_equal(gated, xv[:8])


def _factors(path, calib):
    """(x_lo, X, s_lo, S) per channel as the compiler calibrates them."""
    fg = import_graph(path)
    opts = Options(bits=K, product="gated")
    _, _, balance, _ = calibrate(fg, calib.astype(np.float32), opts)
    (pc,) = balance.values()
    (xlo, xhi), (slo, shi) = pc.x_range, pc.s_range
    return xlo, xhi - xlo, slo, shi - slo


def test_the_digits_are_s_rounded_to_k_bits_and_the_product_is_within_its_bound(case):
    path, calib, _ = case
    prog = compile_model(path, calib, bits=K, product="gated")
    codes = evaluate(prog, calib)
    xlo, big_x, slo, big_s = _factors(path, calib)
    sig = next(p for p in prog.populations if getattr(p, "activation", "") == "sigmoid")
    s = decode_activation(sig, codes[sig.name], prog, codes).reshape(len(calib), 4)
    relu = next(p for p in prog.populations if getattr(p, "activation", "") == "relu" and p.shape == (4, 8, 8))
    x = decode(relu, codes[relu.name])
    bits = _names(prog, "_bit")
    digits = np.stack([codes[b].reshape(len(calib), 4) for b in sorted(bits, key=lambda n: int(n.rsplit("bit", 1)[1]))])
    got = sum(d * 2 ** (K - 1 - j) for j, d in enumerate(digits))
    sp = (s - slo) / big_s
    want = np.clip(np.floor(sp * 2**K + 0.5), 0, 2**K - 1)
    near = np.abs(sp * 2**K + 0.5 - np.round(sp * 2**K + 0.5)) < 1e-3   # on a rounding boundary
    assert np.all((got == want) | near) and (got == want).mean() > 0.95
    # the product the readers get, against x * s of the program's own decoded factors
    ands = sorted(_names(prog, "_and"), key=lambda n: int(n.rsplit("and", 1)[1]))
    r = sum(decode(prog.pop(a), codes[a]) * 2.0 ** -(j + 1) for j, a in enumerate(ands))
    c = (-1, 1, 1)
    product = slo.reshape(c) * x + xlo.reshape(c) * (s - slo)[..., None, None] + big_s.reshape(c) * r
    exact = x * s[..., None, None]
    step = big_x / (2**K - 1)
    bound = big_s * step / 2 + big_x * big_s * 2.0 ** -(K + 1) + 1e-6
    assert np.all(np.abs(product - exact) <= bound.reshape(c))


def test_gated_products_agree_with_onnxruntime_as_the_squares_do(case):
    path, calib, xv = case
    ref = amosc.compile(path, calib, bits=8).validate(path, xv)
    got = amosc.compile(path, calib, bits=8, product="gated").validate(path, xv)
    assert got.logits_max_err < 0.05 and got.agreement >= ref.agreement - 0.05, (got.render(), ref.render())


def test_an_unknown_product_mode_is_refused():
    with pytest.raises(AmoscError, match="product must be 'squares' or 'gated'"):
        Options(product="dot")
