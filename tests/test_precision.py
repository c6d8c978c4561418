"""Per-layer precision (--max-drop): measured sensitivity, a greedy choice within the budget,
the guarantee checked on the returned program, refusals."""

import numpy as np
import pytest
from click.testing import CliRunner

import amosc
from amosc.cli import main
from amosc.compiler.pipeline import compile_model
from amosc.compiler.precision import fit_budget, float_predictions, precision_groups, predictions
from amosc.compiler.quantize import Options
from amosc.errors import ModelError
from amosc.ir.nodes import GatePop
from amosc.compiler.cost import static_cost
from amosc.compiler.pipeline import import_graph
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save, small_cnn
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
    # then every gate's second (residue) mantissa set is dropped: 8-bit incoming weights
    gates = {p.name for p in prog.populations if isinstance(p, GatePop)}
    assert {pr.target for pr in uniform.projections if pr.name.endswith("#lo")} & gates
    assert not {pr.target for pr in prog.projections if pr.name.endswith("#lo")} & gates
    assert static_cost(prog).synapses < static_cost(uniform).synapses
    assert "8-bit incoming weights" in lines[-1]
    assert_levels_equal(prog, xv[:8])                      # mixed K runs spike for spike


def test_the_budget_holds_on_the_returned_program(case):
    d, model, calib, xv, _ = case
    uniform = compile_model(model, calib, bits=6)
    labels = predictions(uniform, xv)                       # uniform K is 100% accurate on these labels
    float_acc = float((float_predictions(model, xv) == labels).mean())
    for max_drop in (0.0,):   # the binding budget: no loss against the labels uniform K meets
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


def _wide_tanh_model(path):
    b = GraphBuilder((1, 12, 12), seed=21)
    h = b.node("Flatten", [b.relu(b.conv("x", 1, 32))])
    h = b.node("Tanh", [b.gemm(h, 32 * 144, 8)])
    h = b.node("Softmax", [b.gemm(h, 8, 5)], axis=1)
    return save(b.model(h, 5), path)


@pytest.mark.parametrize("limit", [None, 1 << 12])
def test_a_fitted_unit_after_a_wide_layer_is_relayed_not_refused(tmp_path, monkeypatch, limit):
    """A fitted unit (Tanh) after a 4608-input Gemm: at K=10 its fine segment steps cannot
    hold the layer's worst-case input in the accumulator. The compiler relays its input through
    two ReLU gates (exact in float, one quantization) and, where that is not enough (here forced
    by a smaller accumulator limit), fits that layer alone at a lower K, with a PrecisionWarning
    naming the layer; the program stays spike-exact and accurate."""
    import warnings
    from amosc.compiler import quantize
    from amosc.errors import PrecisionWarning
    path = _wide_tanh_model(tmp_path / "wide.onnx")
    if limit:
        monkeypatch.setattr(quantize, "ACC_LIMIT", limit)
    x = structured_inputs((1, 12, 12), 160, seed=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prog = compile_model(path, x[:100], bits=10)
    notes = [str(w.message) for w in caught if w.category is PrecisionWarning]
    assert len(notes) == 1 and "Tanh" in notes[0] and "relayed" in notes[0], notes
    names = {p.name for p in prog.populations}
    tanh = next(p for p in prog.populations if isinstance(p, GatePop) and p.activation == "tanh")
    assert {tanh.name + "_relay_pos", tanh.name + "_relay_neg"} <= names
    if limit:
        assert "fitted at K=" in notes[0]
        assert int(notes[0].split("fitted at K=")[1].split()[0]) < 10
    else:
        assert "fitted at K" not in notes[0]
    assert_levels_equal(prog, x[100:106])
    agree = float((predictions(prog, x[100:]) == float_predictions(path, x[100:])).mean())
    assert agree >= 0.95, agree


def test_max_drop_keeps_the_relays_a_fitted_unit_needs(tmp_path):
    """--max-drop starts from the uniform program as compile builds it, relays included, so a
    model whose fitted unit needs an input relay is not refused by the precision search."""
    import warnings
    path = _wide_tanh_model(tmp_path / "wide.onnx")
    x = structured_inputs((1, 12, 12), 160, seed=8)
    labels = float_predictions(path, x[100:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the relay's PrecisionWarning (tested above)
        prog = compile_model(path, x[:100], bits=10, max_drop=100.0, validation=(x[100:], labels))
        uniform = compile_model(path, x[:100], bits=10)
    assert any(p.name.endswith("_relay_pos") for p in prog.populations)
    assert static_cost(prog).neurons < static_cost(uniform).neurons


def test_a_neuron_budget_with_validation_data_chooses_per_layer_k_within_it(case):
    d, model, calib, xv, _ = case
    lines = []
    sizes = {k: static_cost(compile_model(model, calib, bits=k)).neurons for k in (6, 5)}
    budget = (sizes[6] + sizes[5]) // 2       # uniform K=6 does not fit, K=5 does
    prog = compile_model(model, calib, bits=6, neuron_budget=budget, validation=(xv, None), log=lines.append)
    assert lines[-1].startswith(f"per-layer precision within --neuron-budget {budget}") and "(agreement)" in lines[-1]
    _, report = fit_budget(model, calib, xv, None, budget, Options(bits=6))
    assert lines[-1] == report.render()
    assert static_cost(prog).neurons == report.neurons <= budget
    assert report.base_bits == 5 and [u[0] for u in report.uniform] == [6, 5] and report.uniform[0][1] == sizes[6]
    bits = gate_bits(prog)
    groups = set(precision_groups(import_graph(model)).values())
    assert report.assignment and all(bits[g] == report.assignment.get(g, 5) for g in groups)   # some raised
    over = {ln.split()[2] for ln in lines if ln.endswith("over the budget alone")}
    assert {c.group for c in report.sensitivity} | over == groups and all(c.bits == 6 for c in report.sensitivity)
    assert all(report.uniform[-1][1] - c.saved <= budget for c in report.sensitivity)
    assert report.predicted >= report.base_score   # the additive model: the base plus the raises' gains
    # the score is measured on the returned program (after the floor-bias pass), at least the base's
    got = float((predictions(prog, xv) == float_predictions(model, xv)).mean())
    assert got == report.score >= report.base_score
    assert_levels_equal(prog, xv[:8])


def test_raises_over_the_budget_alone_are_not_measured(case):
    d, model, calib, xv, _ = case
    _, first = fit_budget(model, calib, xv, None, static_cost(compile_model(model, calib, bits=5)).neurons,
                          Options(bits=6))
    room = min(-c.saved for c in first.sensitivity) + 1    # the cheapest raise fits, not every one
    budget = first.uniform[-1][1] + room
    lines = []
    _, report = fit_budget(model, calib, xv, None, budget, Options(bits=6), log=lines.append)
    assert report.uniform == first.uniform
    over = [ln for ln in lines if ln.endswith("over the budget alone")]
    assert room > 0 and over
    for ln in over:   # "sensitivity i/G <group> K=k: +n neurons, over the budget alone"
        assert int(ln.split(": ")[1].split()[0]) > room
    measured = {(c.group, c.bits) for c in report.sensitivity}
    assert measured.isdisjoint((ln.split()[2], int(ln.split()[3][2:-1])) for ln in over)
    assert measured and all(-c.saved <= room for c in report.sensitivity)
    assert report.neurons <= budget


def test_a_neuron_budget_that_fits_keeps_the_uniform_program_and_an_impossible_one_is_refused(case, tmp_path):
    d, model, calib, xv, yv = case
    uniform = compile_model(model, calib, bits=5)
    n = static_cost(uniform).neurons
    prog = compile_model(model, calib, bits=5, neuron_budget=n, validation=(xv, yv))
    assert gate_bits(prog) == gate_bits(uniform) and static_cost(prog).neurons == n
    with pytest.raises(ModelError, match=r"^3 labels for 120 validation inputs"):
        compile_model(model, calib, bits=5, neuron_budget=n, validation=(xv, yv[:3]))
    with pytest.raises(ModelError, match=r"^3 labels for 120 validation inputs"):
        compile_model(model, calib, bits=5, max_drop=1.0, validation=(xv, yv[:3]))
    with pytest.raises(ModelError, match=r"--neuron-budget 10: the fewest neurons of a uniform program down to K=2"):
        compile_model(model, calib, bits=5, neuron_budget=10, validation=(xv, None))
    np.save(tmp_path / "c.npy", calib)
    np.save(tmp_path / "x.npy", xv)
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    base = ("compile", model, "--calib", tmp_path / "c.npy", "-o", tmp_path / "m.amos", "--bits", 5)
    r = run(*base, "--neuron-budget", 10, "--val-input", tmp_path / "x.npy")
    assert r.exit_code == 2 and "--neuron-budget 10" in r.output and not (tmp_path / "m.amos").exists()
    r = run(*base, "--val-input", tmp_path / "x.npy")
    assert r.exit_code == 2 and "--neuron-budget" in r.output
    budget = (n + static_cost(compile_model(model, calib, bits=4)).neurons) // 2
    r = run(*base, "--neuron-budget", budget, "--val-input", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert "per-layer precision within --neuron-budget" in r.output
    assert static_cost(amosc.load(tmp_path / "m.amos")).neurons <= budget


def test_the_budget_knapsack_is_exact_against_brute_force():
    import itertools
    from amosc.compiler.precision import _knapsack
    rng = np.random.default_rng(0)
    for _ in range(30):
        options = [(f"g{g}", k, float(rng.uniform(0, 1)), int(rng.integers(0, 60)))
                   for g in range(int(rng.integers(1, 5))) for k in range(5, 5 + int(rng.integers(1, 4)))]
        # settings with fewer neurons (a smaller fitted unit), at a loss: they may fund a gain elsewhere
        options += [(f"g{g}", (4, 6), -float(rng.uniform(0, 0.3)), -int(rng.integers(1, 60)))
                    for g in range(int(rng.integers(0, 3)))]
        room = int(rng.integers(0, 120))
        groups = sorted({o[0] for o in options})
        best = 0.0
        for pick in itertools.product(*[[None, *[o for o in options if o[0] == g]] for g in groups]):
            chosen = [o for o in pick if o is not None]
            if sum(o[3] for o in chosen) <= room:
                best = max(best, sum(o[2] for o in chosen))
        got = _knapsack(options, room)
        assert sum(o[3] for o in got) <= room and len({o[0] for o in got}) == len(got)
        assert abs(sum(o[2] for o in got) - best) < 1e-6


def test_a_neuron_budget_weighs_fitted_unit_sizes_per_layer(tmp_path):
    from test_activations import _act_model
    from amosc.compiler.precision import unit_sizes
    path = save(_act_model("SiLU", seed=5), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 120, seed=6)
    calib, xv = x[:60], x[60:]
    opts = Options(bits=4, fitted_units=8)
    sizes = {k: static_cost(compile_model(path, calib, bits=k, fitted_units=8)).neurons for k in (4, 3)}
    budget = sizes[3] + 4 * 64                  # K=4 is over: base K=3, room for a few more neurons
    lines = []
    prog, report = fit_budget(path, calib, xv, None, budget, opts, log=lines.append, sizes=unit_sizes(8))
    assert report.base_bits == 3 and unit_sizes(8) == [6, 10, 12]
    unit_choices = [c for c in report.sensitivity if c.units is not None]
    over = [ln for ln in lines if "units=" in ln and ln.endswith("over the budget alone")]
    # every size was tried on the SiLU layer (4 channels of 8 x 8): measured, or over the budget alone
    assert sorted([c.units for c in unit_choices] + [int(ln.split("units=")[1].split(":")[0]) for ln in over]) == [6, 10, 12]
    for c in unit_choices:   # larger units: exactly (N - 8) neurons per element more, the rest unchanged
        assert c.bits == 3 and (c.units < 8 or -c.saved == (c.units - 8) * 4 * 8 * 8)
    assert static_cost(prog).neurons == report.neurons <= budget
    for g, n in report.units.items():
        assert prog.pop(g).code.bits == n
    _, plain = fit_budget(path, calib, xv, None, budget, opts)   # by default: K raises only
    assert all(c.units is None for c in plain.sensitivity) and not plain.units
    # a program with a chosen unit size is exact across levels like any other
    from amosc.compiler.precision import _Search
    from amosc.compiler.resources import Limits
    search = _Search(path, calib, xv, None, opts, Limits(), "", None, [3], lambda m: None)
    (g,) = search.unit_groups()
    p12 = search.program({h: 3 for h in search.groups}, units={g: 12})
    assert p12.pop(g).code.bits == 12
    assert_levels_equal(p12, xv[:8])
