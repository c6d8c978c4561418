"""Lava backend (lava-nc 0.10.0 on this Python): both styles spike for spike equal to
the reference simulator, pipelined runs, export, clean failure, pluggable backends."""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import amosc
from amosc.backends.base import backend_names, get_backend
from amosc.backends.lava._compat import lava_problem
from amosc.backends.reference import simulate
from amosc.cli import main
from amosc.errors import BackendError, RangeError
from amosc.ir.nodes import Program
from amosc.validate import compare_spikes
from conftest import structured_inputs, uniform_inputs
from onnx_builders import GraphBuilder, mlp, save, small_cnn

pytestmark = pytest.mark.skipif(lava_problem() is not None, reason=f"lava unusable: {lava_problem()}")


def compiled(tmp_path, kind, bits):
    if kind == "mlp":
        path = save(mlp((6, 5, 4, 3), seed=3), tmp_path / "m.onnx")
        x = uniform_inputs((6,), 40, seed=2, lo=-1)
    elif kind == "relu6_mlp":
        b = GraphBuilder((5,), seed=9)
        h = b.node("Clip", [b.gemm("x", 5, 6), b.init(np.array(0, np.float32)), b.init(np.array(6, np.float32))])
        path = save(b.model(b.gemm(h, 6, 3), 3), tmp_path / "m.onnx")
        x = uniform_inputs((5,), 40, seed=2, lo=-2, hi=2)
    elif kind in ("gates_mlp", "units_mlp"):   # fitted units, exact leaky ADC pair and a product of activations
        b = GraphBuilder((5,), seed=9)
        t = b.node("Tanh", [b.gemm("x", 5, 6)])
        s_ = b.node("Sigmoid", [b.gemm(t, 6, 6)])
        h = b.node("Mul", [b.node("LeakyRelu", [b.gemm(t, 6, 6)], alpha=0.2), s_])
        path = save(b.model(b.gemm(h, 6, 3), 3), tmp_path / "m.onnx")
        x = uniform_inputs((5,), 40, seed=2, lo=-2, hi=2)
    elif kind in ("maxpool_cnn", "lipool_cnn", "pool_relu_lipool"):
        b = GraphBuilder((1, 6, 6), seed=4)
        if kind == "pool_relu_lipool":  # the pool reads a pre-activation: a max-join ReLU gate
            h = b.relu(b.node("MaxPool", [b.conv("x", 1, 2)], kernel_shape=[2, 2], strides=[2, 2]))
        else:
            h = b.node("MaxPool", [b.relu(b.conv("x", 1, 2))], kernel_shape=[2, 2], strides=[2, 2])
        h = b.node("Flatten", [h], axis=1)
        path = save(b.model(b.gemm(h, 18, 3), 3), tmp_path / "m.onnx")
        x = structured_inputs((1, 6, 6), 40, seed=1)
    else:
        residual, pool = {"cnn_res_avg": (True, "avg"), "cnn_res_gap": (True, "gap"),
                          "cnn_plain": (False, "gap")}[kind]
        path = save(small_cnn(seed=4, residual=residual, pool=pool), tmp_path / "m.onnx")
        x = structured_inputs((1, 12, 12), 40, seed=1)
    return amosc.compile(path, x[:30], bits=bits, maxpool="lipool" if "lipool" in kind else "tree",
                         fitted_units=8 if kind == "units_mlp" else 0), x[30:]


def assert_spike_equal(program, res, ref):
    rep = compare_spikes(program, res, ref, "lava")
    assert rep.equal, rep.render()
    assert rep.spikes_compared > 0 and res.extra["spurious_spikes"] == 0
    np.testing.assert_array_equal(res.output, ref.output)
    for name in ref.spikes:
        np.testing.assert_array_equal(res.spikes[name], ref.spikes[name], err_msg=name)


@pytest.mark.parametrize("kind,bits", [("mlp", 4), ("relu6_mlp", 3), ("cnn_res_avg", 4),
                                       ("cnn_res_gap", 6), ("cnn_plain", 8), ("gates_mlp", 5), ("units_mlp", 3),
                                       ("maxpool_cnn", 4), ("lipool_cnn", 5), ("pool_relu_lipool", 4)])
def test_fast_style_spike_for_spike(tmp_path, kind, bits):
    program, x = compiled(tmp_path, kind, bits)
    if kind == "units_mlp":   # the tanh and sigmoid gates are fitted AMOS units (non-binary codes)
        assert sum(1 for p in program.populations if (getattr(p, "fit", None) or {}).get("structure") == "unit") == 2
    res = get_backend("lava").run(program, x, record=True, interval=1)
    assert_spike_equal(program, res, simulate(program, x, record=True))


def test_fast_style_models_do_not_import_amosc():
    """The fast style is an independent implementation of docs/ir.md: its process models share
    the programs' data with amosc, not code (no reference simulator, no semantics helpers)."""
    import ast
    import amosc.backends.lava.procs as procs
    folder = os.path.dirname(procs.__file__)
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, fn)).read())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [m for m in names if m.startswith(("amosc", "."))], (fn, names)


@pytest.mark.parametrize("seed", range(40))
def test_fast_style_conv_matrix_is_the_onnx_cross_correlation(seed):
    """The fast style builds each conv's integer matrix itself (strides, asymmetric pads,
    dilations, groups); on integer inputs it equals the ONNX Conv (semantics.conv2d)."""
    from amosc.backends.lava.procs.amos import conv_matrix
    from amosc.ir.semantics import conv2d, conv_output_hw
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 2, 3]))
    ci, co = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    ho = wo = 0
    while min(ho, wo) < 1:
        h, w = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        k, st, dl = rng.integers(1, 4, 2), rng.integers(1, 3, 2), rng.integers(1, 3, 2)
        pads = tuple(int(p) for p in rng.integers(0, 3, 4))
        ho, wo = conv_output_hw((h, w), k, st, pads, dl)
    wt = (rng.integers(-128, 128, (co, ci // g, *k)) * (rng.random((co, ci // g, *k)) < 0.7)).astype(np.int8)
    attrs = {"strides": tuple(st), "pads": pads, "dilations": tuple(dl), "groups": g}
    m = conv_matrix(wt, (ci, h, w), (co, ho, wo), attrs)
    x = rng.integers(-3, 4, (ci, h, w))
    want = conv2d(x[None], wt, tuple(st), pads, tuple(dl), g)[0]
    np.testing.assert_array_equal((m @ x.reshape(-1)).reshape(co, ho, wo), np.rint(want).astype(np.int64))


@pytest.mark.parametrize("kind,bits,n", [("mlp", 3, 10), ("relu6_mlp", 2, 6), ("cnn_res_avg", 2, 3),
                                         ("gates_mlp", 3, 4), ("maxpool_cnn", 2, 3)])
def test_loihi_style_spike_for_spike(tmp_path, kind, bits, n):
    program, x = compiled(tmp_path, kind, bits)
    res = get_backend("lava-loihi").run(program, x[:n], record=True, interval=1)
    assert_spike_equal(program, res, simulate(program, x[:n], record=True))


def test_loihi_style_names_a_fitted_unit_it_cannot_build(tmp_path):
    program, x = compiled(tmp_path, "units_mlp", 3)
    unit = next(p for p in program.populations if (getattr(p, "fit", None) or {}).get("structure") == "unit")
    with pytest.raises(BackendError, match=re.escape(f"population '{unit.name}' is a fitted AMOS unit")):
        get_backend("lava-loihi").run(program, x[:2])


def test_loihi_style_names_a_max_join_population_it_cannot_build(tmp_path):
    program, x = compiled(tmp_path, "lipool_cnn", 3)
    with pytest.raises(BackendError, match=r"compartments.*--maxpool tree"):
        get_backend("lava-loihi").run(program, x[:2], record=True, interval=1)


@pytest.mark.parametrize("interval", [1, 3])
def test_pipelined_multi_input_run(tmp_path, interval):
    """Inputs enter every `interval` steps in one lane; every unit is memoryless, so
    the stream equals the batch, and the run takes (N-1)*interval + latency steps."""
    program, x = compiled(tmp_path, "cnn_res_avg", 3)
    res = get_backend("lava").run(program, x, record=True, interval=interval)
    assert res.steps == (len(x) - 1) * interval + program.latency
    assert_spike_equal(program, res, simulate(program, x, record=True))


def test_validate_backend_lava_cli_reports_equality(tmp_path):
    program, x = compiled(tmp_path, "mlp", 3)
    program.save(tmp_path / "p.amos")
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(main, ["validate", str(tmp_path / "p.amos"), "--backend", "lava",
                                  "-i", str(tmp_path / "x.npy")])
    assert r.exit_code == 0, r.output
    assert "EQUAL" in r.output


def test_mismatch_names_population_neuron_step_and_values(tmp_path):
    program, x = compiled(tmp_path, "mlp", 3)
    ref = simulate(program, x, record=True, interval=1, lanes=1)
    bad = simulate(program, x, record=True, interval=1, lanes=1)
    pop = program.populations[1]
    bad.rasters[pop.name][2, 1, 3] ^= 1
    rep = compare_spikes(program, bad, ref, "lava")
    assert not rep.equal
    m = rep.first_mismatch
    assert (m["population"], m["neuron"], m["unit"], m["input"]) == (pop.name, 3, 1, 2)
    assert m["step"] == 2 + pop.start + 1 and m["reference"] != m["backend"]
    assert "neuron 3" in rep.render() and "time step" in rep.render()


def test_loihi_style_relays_delays_beyond_63_steps(tmp_path):
    """A readout scheduled 70 steps late needs a 70-step delay from its sources: graded relay
    neurons every 64 steps instead of an error, spike for spike and integer for integer."""
    program, x = compiled(tmp_path, "mlp", 3)
    out = program.output_pop
    pops = [replace(p, start=p.start + 70) if p is out else p for p in program.populations]
    late = Program(pops, program.projections, program.input, program.output)
    from amosc.backends.lava.loihi import MAX_DELAY, plan
    p = plan(late)
    delays = [int(s["delays"].max()) for s in p["processes"] if s.get("delays") is not None]
    assert max(delays) <= MAX_DELAY
    assert any(s["name"].endswith("#relay0") for s in p["processes"])
    assert p["latency"] >= late.latency
    res = get_backend("lava-loihi").run(late, x[:3], record=True, interval=1)
    assert_spike_equal(late, res, simulate(late, x[:3], record=True))


def test_weights_split_into_fewest_exponent_groups():
    from amosc.backends.lava.loihi import exponent_groups
    w = np.array([0, -8192, 4096, 64, 2, 127 * 4, -1, 200])
    groups = exponent_groups(w, "here")
    covered = np.zeros(w.size, bool)
    for x, mask in groups:
        m = w[mask] // 2**x
        assert np.all(m * 2**x == w[mask]) and m.min() >= -128 and m.max() <= 127
        assert not (covered & mask).any()
        covered |= mask
    assert np.array_equal(covered, w != 0)
    assert [x for x, _ in groups] == [0, 2, 8]  # {-1, 2, 64}, {508, 200}, {4096, -8192}
    with pytest.raises(RangeError, match=r"here: weight 381 is not an 8-bit mantissa"):
        exponent_groups(np.array([127 * 3]), "here")


def test_plan_conv_matrix_is_the_onnx_cross_correlation():
    from amosc.backends.lava.network import conv_matrix
    from amosc.ir.linear import Conv
    from amosc.ir.semantics import conv_output_hw
    rng = np.random.default_rng(0)
    for groups, k, strides, pads, dil in [(1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
                                         (2, (3, 2), (2, 1), (1, 0, 2, 1), (2, 1)),
                                         (4, (1, 1), (1, 2), (0, 0, 0, 0), (1, 1))]:
        w = rng.integers(-3, 4, (4, 4 // groups, *k))
        hw = conv_output_hw((7, 6), k, strides, pads, dil)
        a = Conv((4, 7, 6), (4, *hw), w.astype(float), strides=strides, pads=pads, dilations=dil,
                 groups=groups).to_sparse()
        b = conv_matrix(w, (4, 7, 6), (4, *hw), strides, pads, dil, groups)
        assert a.shape == b.shape and abs(a - b).max() == 0


@pytest.fixture(scope="module")
def example_k4():
    root = os.path.join(os.path.dirname(__file__), "..", "examples", "fmnist_resnet")
    calib = np.load(os.path.join(root, "calib.npy"))[:128]
    program = amosc.compile(os.path.join(root, "model.onnx"), calib, bits=4)
    return program, np.load(os.path.join(root, "test_x.npy"))[:2]


def test_loihi_process_count_grows_with_populations_and_projections(example_k4):
    """The example's plan: at most 14 processes per population (the recorded unit LIFReset,
    its graded accumulator and chain, realignment, enable/inhibition groups, sinks) plus, per
    projection, one Sparse per plane shift (K_source + distinct exponents - 1); no K^2 term."""
    from amosc.backends.lava.loihi import plan, process_count
    program, _ = example_k4
    p = plan(program)
    per_proj = 0
    for proj in program.projections:
        live = np.any(np.asarray(proj.weight).reshape(proj.out_shape[0], -1) != 0, axis=1)
        if live.any():
            per_proj += program.pop(proj.source).code.bits + len(np.unique(proj.exp[live])) - 1
    n_proc = process_count(p)["total"]
    assert n_proc <= 14 * len(program.populations) + per_proj
    assert n_proc < 150  # the unit-per-process lowering needed thousands


def test_plan_synapse_count_is_what_lava_gets(tmp_path):
    from amosc.backends.lava import network
    from amosc.backends.lava.loihi import plan, synapse_count
    program, _ = compiled(tmp_path, "cnn_res_avg", 3)
    p = plan(program)
    n = 0
    for s in p["processes"]:
        if "matrix" in s:
            n += network.plane_weights(s, network.matrix(p["matrices"][s["matrix"]])).nnz
        elif s["type"] == "synapses":
            n += len(s["data"])
    assert synapse_count(p) == n > 0


def test_loihi_style_runs_the_example_spike_for_spike(example_k4):
    program, x = example_k4
    res = get_backend("lava-loihi").run(program, x, record=True, interval=1)
    assert_spike_equal(program, res, simulate(program, x, record=True))


def test_export_runs_under_plain_lava_and_matches(tmp_path):
    program, x = compiled(tmp_path, "mlp", 3)
    program.save(tmp_path / "p.amos")
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(main, ["export", str(tmp_path / "p.amos"), "--target", "lava", "-o",
                                  str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "deploy")) == ["README.md", "lava_compat.py", "network.py", "params.npz"]
    # run it as a plain script, without amosc importable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "deploy" / "network.py"), "--input",
                          str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    ref = simulate(program, x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), ref.logits.astype(np.float32))
    r = CliRunner().invoke(main, ["export", str(tmp_path / "p.amos"), "-o", str(tmp_path / "deploy")])
    assert r.exit_code == 2 and "not empty" in r.output


def test_broken_process_model_does_not_hang(tmp_path):
    """A model that raises mid-run: run() fails with the model's error and every Lava
    process is stopped; the child interpreter exits on its own."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from amosc.backends.lava import run_guarded
        from amosc.backends.lava._compat import install
        from amosc.errors import BackendError
        install()
        from lava_broken.broken import Broken
        p = Broken()
        try:
            run_guarded(p, 10)
        except BackendError as exc:
            print("BackendError:", exc)
            sys.exit(3)
        sys.exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 3, out.stdout + out.stderr[-2000:]
    assert "Lava run failed" in out.stdout


def test_lava_imports_even_when_start_method_was_fixed():
    script = ("import multiprocessing as mp; mp.set_start_method('spawn');"
              "from amosc.backends.lava._compat import lava_problem; import warnings;"
              "warnings.simplefilter('ignore'); p = lava_problem(); print(p);"
              "assert p is None and mp.get_start_method() == 'fork'")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_third_party_backend_registers_through_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "toy_backend-1.0.dist-info").mkdir(parents=True)
    (pkg / "toy_backend-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n")
    (pkg / "toy_backend-1.0.dist-info" / "entry_points.txt").write_text(
        "[amosc.backends]\ntoy = toy_backend:ToyBackend\n")
    (pkg / "toy_backend.py").write_text(textwrap.dedent("""
        from amosc.backends.base import Backend
        from amosc.backends.reference import simulate

        class ToyBackend(Backend):
            name = "toy"
            description = "a toy backend from outside the package"

            def run(self, program, x, **kw):
                res = simulate(program, x, **kw)
                res.extra["toy"] = True
                return res
    """))
    monkeypatch.syspath_prepend(str(pkg))
    assert "toy" in backend_names()
    r = CliRunner().invoke(main, ["backends"])
    assert "toy" in r.output and "a toy backend from outside the package" in r.output
    program, x = compiled(tmp_path, "mlp", 3)
    res = program.run(x, backend="toy")
    assert res.extra["toy"] and np.array_equal(res.output, simulate(program, x).output)


def test_sixteen_bit_weights_on_both_styles(tmp_path):
    path = save(mlp((6, 5, 4, 3), seed=3), tmp_path / "m.onnx")
    x = uniform_inputs((6,), 36, seed=2, lo=-1)
    program = amosc.compile(path, x[:30], bits=3, weight_bits=16)
    ref = simulate(program, x[30:], record=True)
    for name in ("lava", "lava-loihi"):
        assert_spike_equal(program, get_backend(name).run(program, x[30:], record=True, interval=1), ref)
