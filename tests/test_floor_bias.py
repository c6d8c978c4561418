"""The correct_floor_bias pass: what the plane floors drop, measured and compensated in the biases."""

import numpy as np
import pytest

from amosc.compiler.floor_bias import _corrected, correct_floor_bias
from amosc.compiler.pipeline import compile_model
from amosc.compiler.pipeline import import_graph
from amosc.ir.tensor import float_eval
from amosc.errors import IRError
from amosc.ir.nodes import BIAS_LIMIT, GatePop, ReadoutPop
from amosc.ir.semantics import (_plane_values, decode, evaluate, integer_product, plane_is_exact,
                                spikes_input)
from conftest import structured_inputs
from onnx_builders import save, small_cnn
from test_semantics import assert_levels_equal


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("floor_bias")
    model = save(small_cnn(seed=4, pool="max", residual=True), d / "model.onnx")
    x = structured_inputs((1, 12, 12), 240, seed=3)
    plain = compile_model(model, x[:40], bits=6, bias_correction=0)
    corrected = compile_model(model, x[:40], bits=6)
    return model, x[:40], x[40:], plain, corrected


def _inexact(program):
    for pr in program.projections:
        src = program.pop(pr.source)
        if any(not plane_is_exact(pr.exp, d) for d in src.code.weights):
            yield pr, src.code


def test_the_dropped_fractions_are_what_the_floors_drop(case, rng):
    *_, plain, _ = case
    checked = 0
    for pr, code in _inexact(plain):
        z = (rng.random((code.bits, 3, *pr.in_shape)) < 0.4).astype(np.uint8)
        dropped: list = []
        got = spikes_input(pr, code, z, dropped)
        assert np.array_equal(got, spikes_input(pr, code, z))        # the integers are unchanged
        e = pr.exp.reshape((1, -1) + (1,) * (len(pr.out_shape) - 1)).astype(np.float64)
        real = sum(integer_product(pr, z[k], 1) * (d * np.exp2(e)) for k, d in enumerate(code.weights))
        assert len(dropped) == 1
        np.testing.assert_allclose(got + dropped[0], real, rtol=0, atol=1e-6)
        inexact = sum(not plane_is_exact(pr.exp, d) for d in code.weights)
        assert dropped[0].min() >= 0 and dropped[0].max() < inexact
        checked += 1
    assert checked >= 2


def test_weights_that_are_not_powers_of_two_drop_their_fractions_too(case, rng):
    *_, plain, _ = case
    pr, code = next(_inexact(plain))
    z = (rng.random((2, 2, *pr.in_shape)) < 0.5).astype(np.uint8)
    dropped: list = []
    got = _plane_values(pr, [3, 5], z, dropped)          # the int64 path
    e = pr.exp.reshape((1, -1) + (1,) * (len(pr.out_shape) - 1)).astype(np.float64)
    real = sum(integer_product(pr, z[i], 1) * (d * np.exp2(e)) for i, d in enumerate((3, 5)))
    np.testing.assert_allclose(got.sum(0) + dropped[0], real, rtol=0, atol=1e-6)


def test_only_biases_change_and_the_program_stays_exact(case):
    _, calib, xv, plain, corrected = case
    assert "bias_correction" not in plain.options and corrected.options["bias_correction"] == 32
    assert [p.name for p in plain.populations] == [p.name for p in corrected.populations]
    assert all(a.weight is b.weight or np.array_equal(a.weight, b.weight)
               for a, b in zip(plain.projections, corrected.projections))
    moved = [p.name for p, q in zip(plain.populations, corrected.populations)
             if isinstance(p, (GatePop, ReadoutPop)) and not np.array_equal(p.bias, q.bias)]
    assert moved and corrected.output in moved
    for p, q in zip(plain.populations, corrected.populations):
        if isinstance(p, (GatePop, ReadoutPop)):
            delta = q.bias.astype(np.int64) - p.bias
            assert delta.min() >= 0    # the floors only drop, so the correction only adds
            assert np.all(delta == delta.reshape(delta.shape[0], -1)[:, :1].reshape((-1,) + (1,) * (delta.ndim - 1)))
    assert_levels_equal(corrected, xv[:6])


def test_the_correction_removes_the_readouts_mean_error(case):
    model, calib, xv, plain, corrected = case
    ref = float_eval(import_graph(model), xv.astype(np.float64))["output"]   # the float logits

    def mean_error(prog):   # per class over the held-out inputs, in units of the class's step
        y = decode(prog.output_pop, evaluate(prog, xv)[prog.output])
        return np.abs((y - ref).mean(0) / prog.output_pop.scale)

    before, after = mean_error(plain), mean_error(corrected)
    assert after.mean() < 0.5 * before.mean(), (before, after)


def test_a_second_correction_is_refused(case):
    _, calib, *_, corrected = case
    with pytest.raises(IRError, match="corrected already"):
        correct_floor_bias(corrected, calib)


def test_a_correction_outside_the_bias_range_is_not_applied(case):
    *_, plain, _ = case
    i = next(j for j, p in enumerate(plain.populations) if isinstance(p, GatePop))
    pop = plain.populations[i]
    kept, why = _corrected(plain, list(plain.populations), i, np.full(pop.shape[0], 2.0 * BIAS_LIMIT))
    assert kept is pop and str(BIAS_LIMIT) in why
