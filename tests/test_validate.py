"""validate: level 1 over every input, the spiking backend on a subset that must equal it."""

import pytest

import amosc
import amosc.api as api
from amosc.backends.reference import simulate
from conftest import structured_inputs
from onnx_builders import save, small_cnn


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save(small_cnn(seed=4, pool="avg"), tmp_path_factory.mktemp("v") / "m.onnx")
    x = structured_inputs((1, 12, 12), 200, seed=1)
    return path, amosc.compile(path, x[:100], bits=4), x[100:]


def test_level_one_covers_every_input_and_the_backend_a_subset(setup):
    path, prog, x = setup
    rep = prog.validate(path, x, spike_check=7)
    assert rep.n == 100 and rep.spike_checked == 7 and rep.spike_check_equal and rep.passed is (rep.agreement >= 0.99)
    assert "validated 100 inputs" in rep.render() and "7 of them also run on backend 'reference'" in rep.render()
    # the level-1 figures are the spiking simulator's on every input
    sim = simulate(prog, x)
    from amosc.compiler.calibrate import OnnxRunner
    import onnx
    t = prog.output_pop.tensor
    ref = OnnxRunner(onnx.load(path), "x", False, [t]).collect(x, [t], desc=None)[t]
    assert rep.agreement == float((sim.logits.argmax(1) == ref.argmax(1)).mean())
    per_input = sum(v.sum() for v in sim.spikes.values()) / len(x)
    assert rep.spikes_per_input == pytest.approx(per_input)


def test_a_backend_that_differs_from_level_one_fails(setup, monkeypatch):
    path, prog, x = setup
    real = api.run_program

    def off_by_one(program, xs, backend="reference", **kw):
        res = real(program, xs, backend=backend, **kw)
        res.output = res.output.copy()
        res.output[-1, 0] += 1
        return res

    monkeypatch.setattr("amosc.validate.run_program", off_by_one)
    rep = prog.validate(path, x, spike_check=5, min_agreement=0.0)
    assert not rep.spike_check_equal and not rep.passed
    assert "DIFFERENT from level 1" in rep.render() and "differs from the integer semantics" in rep.render()
