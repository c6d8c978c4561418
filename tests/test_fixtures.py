"""Issue 5: the fixture architectures (trained on Fashion-MNIST by scripts/make_fixtures.py)
compile, the spiking simulator equals the integer evaluation on them, and the SNN agrees
with onnxruntime on held-out real images.

Thresholds: benchmarks/architectures.py measures top-1 agreement at K=8 on the 500 shipped
test images (docs/architectures.md). Here 200 of them are used; the bound is the measured
agreement minus about three binomial standard deviations at n=200 (sqrt(0.01 * 0.99 / 200)
~ 0.7 pt), rounded down: 97% for every model. A regression that costs more than a few
images fails."""

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
MODELS = {
    "resnet": (os.path.join(EXAMPLE, "model.onnx"), {"relu"}),
    "mobilenet": (os.path.join(FIXTURES, "mobilenet.onnx"), {"relu6"}),
    "efficientnet": (os.path.join(FIXTURES, "efficientnet.onnx"), {"silu", "sigmoid", "square"}),
    "gelu_maxpool": (os.path.join(FIXTURES, "gelu_maxpool.onnx"), {"gelu", "max"}),
}
#: name: (test images, calibration images, minimum top-1 agreement at K=8, check levels).
#: resnet/mobilenet: measured 99.2% / 99.0% on 500 images, bound = measured minus ~3 binomial
#: sigmas at n=200. gelu_maxpool measured 98% (100 images) and efficientnet 86% (50 images):
#: their segmented units on full-resolution maps make compile and evaluation slow (about a
#: minute each here), so CI checks 20 images against a bound 3 sigmas below the measurement;
#: efficientnet's low agreement is a known open problem (errors compound through its SiLU
#: and squeeze-excitation square units; see docs/architectures.md).
RUNS = {"resnet": (200, 256, 0.97, True), "mobilenet": (200, 256, 0.97, True)}
# gelu_maxpool (0.85 on 20 images) and efficientnet (0.60) pass too but take ~5 min together:
# until compile/evaluation of segmented units is faster they are measured by
# benchmarks/architectures.py, not in CI.


@pytest.fixture(scope="module")
def data():
    return (np.load(os.path.join(EXAMPLE, "calib.npy")), np.load(os.path.join(EXAMPLE, "test_x.npy"))[:200],
            np.load(os.path.join(EXAMPLE, "test_y.npy"))[:200])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixture_compiles_and_agrees_with_onnxruntime(name, data):
    path, expected = MODELS[name]
    n, n_calib, min_agreement, levels = RUNS[name]
    calib, x, y = data
    x = x[:n]
    program = amosc.compile(path, calib[:n_calib], bits=8)
    acts = {p.activation for p in program.populations if isinstance(p, GatePop)}
    assert expected <= acts, acts
    model = normalize(load_model(path)[0], path)
    inp, _, fixed = graph_input(model, path)
    out = program.output_pop.tensor
    ref = OnnxRunner(model, inp, fixed, [out]).collect(x, [out])[out]
    logits = decode(program.output_pop, evaluate(program, x)[program.output])
    agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    print(name, "agreement", agreement)
    assert agreement >= min_agreement, agreement
    if levels:  # the spiking simulator equals the integer evaluation, spike for spike, on real images
        assert_levels_equal(program, x[:2])
