"""Per-layer precision (--max-drop): measured sensitivity, a greedy choice within the budget,
the guarantee checked on the returned program, refusals."""

import numpy as np
import pytest
from click.testing import CliRunner

import amosc
from amosc.cli import main
from amosc.compiler.pipeline import compile_model
from amosc.compiler.precision import float_predictions, precision_groups, predictions
from amosc.errors import ModelError
from amosc.ir.nodes import GatePop
from amosc.compiler.cost import static_cost
from amosc.compiler.pipeline import import_graph
from conftest import structured_inputs
from onnx_builders import save, small_cnn
from test_semantics import assert_levels_equal


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    model = save(small_cnn(seed=4, pool="max", residual=True), d / "model.onnx")
    x = structured_inputs((1, 12, 12), 220, seed=3)
    return d, model, x[:100], x[100:], float_predictions(model, x[100:])


def gate_bits(program):
    return {p.name: p.code.bits for p in program.populations if isinstance(p, GatePop)}


def test_a_loose_budget_lowers_every_group_and_the_program_stays_exact(case):
    d, model, calib, xv, yv = case
    lines = []
    prog = compile_model(model, calib, bits=6, max_drop=100.0, validation=(xv, yv), log=lines.append)
    uniform = compile_model(model, calib, bits=6)
    groups = set(precision_groups(import_graph(model)).values())
    bits = gate_bits(prog)
    assert groups and all(bits[g] == 3 for g in groups)     # the lowest K tried: max(2, 6 // 2)
    assert static_cost(prog).neurons < static_cost(uniform).neurons
    assert prog.latency < uniform.latency
    assert lines[-1].startswith("per-layer precision") and all(f"{g}: K=3" in lines[-1] for g in groups)
    assert_levels_equal(prog, xv[:8])                      # mixed K runs spike for spike


def test_the_budget_holds_on_the_returned_program(case):
    d, model, calib, xv, _ = case
    uniform = compile_model(model, calib, bits=6)
    labels = predictions(uniform, xv)                       # uniform K is 100% accurate on these labels
    float_acc = float((float_predictions(model, xv) == labels).mean())
    for max_drop in (0.0, 5.0):
        prog = compile_model(model, calib, bits=6, max_drop=max_drop, validation=(xv, labels))
        acc = float((predictions(prog, xv) == labels).mean())
        assert 100 * (float_acc - acc) <= max_drop + 1e-9
        assert static_cost(prog).neurons <= static_cost(uniform).neurons


def test_an_impossible_budget_is_refused_before_writing(case, tmp_path):
    d, model, calib, xv, yv = case
    with pytest.raises(ModelError, match=r"--max-drop 0: at uniform K=1 .* drop of [0-9.]+ pt"):
        compile_model(model, calib, bits=1, max_drop=0.0, validation=(xv, yv))
    np.save(tmp_path / "c.npy", calib)
    np.save(tmp_path / "x.npy", xv)
    np.save(tmp_path / "y.npy", yv)
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    base = ("compile", model, "--calib", tmp_path / "c.npy", "-o", tmp_path / "m.amos")
    r = run(*base, "--bits", 1, "--max-drop", 0, "--val-input", tmp_path / "x.npy", "--labels", tmp_path / "y.npy")
    assert r.exit_code == 2 and "--max-drop" in r.output and not (tmp_path / "m.amos").exists()
    r = run(*base, "--max-drop", 1)
    assert r.exit_code == 2 and "--val-input and --labels" in r.output
    r = run(*base, "--labels", tmp_path / "y.npy")
    assert r.exit_code == 2 and "only with --max-drop" in r.output
    r = run(*base, "--bits", 5, "--max-drop", 50, "--val-input", tmp_path / "x.npy", "--labels",
            tmp_path / "y.npy", "--latency-budget", 12)
    assert r.exit_code == 0, r.output
    prog = amosc.load(tmp_path / "m.amos")
    assert prog.latency <= 12 and min(gate_bits(prog).values()) < 5
