"""Issue 5: the fixture architectures (trained on Fashion-MNIST by scripts/make_fixtures.py)
compile, the spiking simulator equals the integer evaluation on them, and the SNN agrees
with onnxruntime on held-out real images.

Thresholds: benchmarks/architectures.py measures top-1 agreement at K=8 on the 500 shipped
test images (resnet 99.2%, mobilenet 99.0%). Here 200 of them are used; the bound is the
measured agreement minus about three binomial standard deviations at n=200
(sqrt(0.01 * 0.99 / 200) ~ 0.7 pt), rounded down: 97%. A regression that costs more than a
few images fails."""

import os

import numpy as np
import pytest

import amosc
from amosc.compiler.calibrate import OnnxRunner
from amosc.compiler.importer import graph_input, load_model, normalize
from amosc.ir.nodes import GatePop
from amosc.ir.semantics import decode, evaluate
from conftest import EXAMPLE, ROOT
from test_semantics import assert_levels_equal

FIXTURES = os.path.join(ROOT, "examples", "fixtures")
#: name: (model, activations its program must contain). gelu_maxpool and efficientnet also
#: compile and pass a looser bound (0.85 / 0.60 agreement on 20 images), but their segmented
#: units on full-resolution maps take ~5 min together here, so until compile and evaluation
#: of those units are faster they are measured by benchmarks/architectures.py, not in CI.
MODELS = {
    "resnet": (os.path.join(EXAMPLE, "model.onnx"), {"relu"}),
    "mobilenet": (os.path.join(FIXTURES, "mobilenet.onnx"), {"relu6"}),
}
N_TEST, N_CALIB = 200, 256
MIN_AGREEMENT = 0.97


@pytest.fixture(scope="module")
def data():
    return (np.load(os.path.join(EXAMPLE, "calib.npy")), np.load(os.path.join(EXAMPLE, "test_x.npy"))[:200],
            np.load(os.path.join(EXAMPLE, "test_y.npy"))[:200])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fixture_compiles_and_agrees_with_onnxruntime(name, data):
    path, expected = MODELS[name]
    calib, x, y = data
    x = x[:N_TEST]
    program = amosc.compile(path, calib[:N_CALIB], bits=8)
    acts = {p.activation for p in program.populations if isinstance(p, GatePop)}
    assert expected <= acts, acts
    model = normalize(load_model(path)[0], path)
    inp, _, fixed = graph_input(model, path)
    out = program.output_pop.tensor
    ref = OnnxRunner(model, inp, fixed, [out]).collect(x, [out])[out]
    logits = decode(program.output_pop, evaluate(program, x)[program.output])
    agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= MIN_AGREEMENT, agreement
    # the spiking simulator equals the integer evaluation, spike for spike, on real images
    assert_levels_equal(program, x[:2])
