"""The amosc CLI through click's runner and as a subprocess; every bad input exits non-zero
with one line naming the problem and leaves no output file behind."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from amosc.cli import main
from conftest import structured_inputs, uniform_inputs
from onnx_builders import GraphBuilder, mlp, save, small_cnn


@pytest.fixture
def files(tmp_path):
    model = save(small_cnn(seed=4, pool="avg"), tmp_path / "model.onnx")
    x = structured_inputs((1, 12, 12), 160, seed=1)
    np.save(tmp_path / "calib.npy", x[:100])
    np.save(tmp_path / "x.npy", x[100:])
    np.save(tmp_path / "y.npy", np.arange(60) % 5)
    return tmp_path, model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_compile_inspect_run_validate(files):
    d, model = files
    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 6)
    assert r.exit_code == 0, r.output
    assert "latency" in r.output and (d / "m.amos").exists()

    r = invoke("inspect", d / "m.amos")
    assert r.exit_code == 0 and "totals" in r.output and "code K=6" in r.output
    j = json.loads(invoke("inspect", d / "m.amos", "--format", "json").output)
    assert j["totals"]["latency_steps"] == 6 * 4 + 1
    assert [p["kind"] for p in j["populations"]] == ["input", "gate", "gate", "gate", "readout"]

    r = invoke("run", d / "m.amos", "--input", d / "x.npy", "-o", d / "logits.npy")
    assert r.exit_code == 0, r.output
    logits = np.load(d / "logits.npy")
    assert logits.shape == (60, 5) and logits.dtype == np.float32

    r = invoke("run", d / "m.amos", "--input", d / "x.npy", "-o", d / "p.npy", "--probabilities")
    np.testing.assert_allclose(np.load(d / "p.npy").sum(1), 1, rtol=1e-5)

    r = invoke("validate", d / "m.amos", "--onnx", model, "--input", d / "x.npy",
               "--labels", d / "y.npy", "--json", d / "rep.json", "--min-agreement", 0.9)
    assert r.exit_code == 0, r.output
    assert "top-1 agreement" in r.output and "accuracy  snn" in r.output and "PASS" in r.output
    rep = json.loads((d / "rep.json").read_text())
    assert rep["passed"] and len(rep["onnx"]["layers"]) == 4 and rep["onnx"]["n"] == 60


def test_pipelined_run_matches_batch_run(files):
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 4)
    invoke("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "a.npy")
    r = invoke("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "b.npy", "--interval", 1)
    assert r.exit_code == 0
    assert np.array_equal(np.load(d / "a.npy"), np.load(d / "b.npy"))


def test_validate_fails_below_min_agreement(files):
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 1)
    r = invoke("validate", d / "m.amos", "--onnx", model, "-i", d / "x.npy", "--min-agreement", 1.0)
    assert r.exit_code == 1 and "FAIL" in r.output


def test_console_script_subprocess(files):
    d, model = files
    exe = os.path.join(os.path.dirname(sys.executable), "amosc")
    out = subprocess.run([exe, "compile", model, "--calib", d / "calib.npy", "-o", d / "s.amos"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([exe, "inspect", d / "s.amos"], capture_output=True, text=True)
    assert out.returncode == 0 and "totals" in out.stdout
    out = subprocess.run([exe, "compile", d / "missing.onnx", "--calib", d / "calib.npy"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error:") and "missing.onnx" in out.stderr


def _bad_model(d, kind):
    p = d / "bad.onnx"
    if kind == "missing":
        return p
    if kind == "not_onnx":
        p.write_text("hello")
    elif kind == "truncated":
        save(small_cnn(), p)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "nan":
        m = small_cnn()
        arr = numpy_helper.to_array(m.graph.initializer[0]).copy()
        arr.flat[0] = np.inf
        m.graph.initializer[0].CopyFrom(numpy_helper.from_array(arr, m.graph.initializer[0].name))
        onnx.save(m, str(p))
    elif kind == "dynamic":
        m = small_cnn()
        m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
        onnx.save(m, str(p))
    elif kind == "unsupported":
        b = GraphBuilder((1, 12, 12))
        h = b.node("LRN", [b.relu(b.conv("x", 1, 2))], size=3)
        h = b.node("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
        h = b.node("Flatten", [h], axis=1)
        save(b.model(b.gemm(h, 72, 5), 5), p)
    return p


@pytest.mark.parametrize("kind,needle", [
    ("missing", "no such file"), ("not_onnx", "not a readable ONNX model"),
    ("truncated", "bad.onnx"), ("nan", "NaN or Inf"), ("dynamic", "dimension 2 is dynamic"),
    ("unsupported", "unsupported op type 'LRN'")])
def test_bad_models(files, kind, needle):
    d, _ = files
    p = _bad_model(d, kind)
    r = CliRunner().invoke(main, ["compile", str(p), "--calib", str(d / "calib.npy"), "-o", str(d / "o.amos")])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "bad.onnx" in r.output and "Traceback" not in r.output
    assert not (d / "o.amos").exists()


@pytest.mark.parametrize("calib,needle", [
    (np.zeros((10, 12, 12), np.float32), "(N, 1, 12, 12)"),
    (np.zeros((1, 12, 12), np.float32), "add a leading batch axis"),
    (np.array(["a", "b"]), "dtype"),
    (np.full((4, 1, 12, 12), np.nan, np.float32), "NaN"),
    (np.zeros((0, 1, 12, 12), np.float32), "empty")])
def test_bad_calibration_data(files, calib, needle):
    d, model = files
    np.save(d / "bad.npy", calib)
    r = CliRunner().invoke(main, ["compile", model, "--calib", str(d / "bad.npy"), "-o", str(d / "o.amos")])
    assert r.exit_code == 2 and needle in r.output and "bad.npy" in r.output, r.output
    assert not (d / "o.amos").exists()


def test_calibration_file_that_is_not_npy(files):
    d, model = files
    (d / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    r = CliRunner().invoke(main, ["compile", model, "--calib", str(d / "bad.npy")])
    assert r.exit_code == 2 and "not a readable .npy" in r.output


def test_run_rejects_wrong_input_and_leaves_no_output(files):
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos")
    np.save(d / "wrong.npy", np.zeros((3, 1, 10, 10), np.float32))
    r = CliRunner().invoke(main, ["run", str(d / "m.amos"), "-i", str(d / "wrong.npy"), "-o", str(d / "l.npy")])
    assert r.exit_code == 2 and "(N, 1, 12, 12)" in r.output
    assert not (d / "l.npy").exists()


def test_unknown_backend_lists_available(files):
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos")
    r = CliRunner().invoke(main, ["run", str(d / "m.amos"), "-i", str(d / "x.npy"), "-o", str(d / "l.npy"),
                                  "--backend", "nope"])
    assert r.exit_code == 2 and "unknown backend 'nope'" in r.output and "reference" in r.output


def test_backends_listing():
    r = invoke("backends")
    assert r.exit_code == 0 and "reference" in r.output


def test_mlp_fixed_batch_model(tmp_path):
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    p = save(m, tmp_path / "fixed.onnx")
    x = uniform_inputs((20,), 50, lo=-1)
    np.save(tmp_path / "x.npy", x)
    assert invoke("compile", p, "--calib", tmp_path / "x.npy", "-o", tmp_path / "f.amos").exit_code == 0
    r = invoke("validate", tmp_path / "f.amos", "--onnx", p, "-i", tmp_path / "x.npy", "--min-agreement", 0.95)
    assert r.exit_code == 0, r.output


def test_limit_uses_the_first_inputs(files):
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 4)
    invoke("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "all.npy")
    r = invoke("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "some.npy", "--limit", 7)
    assert r.exit_code == 0
    assert np.array_equal(np.load(d / "some.npy"), np.load(d / "all.npy")[:7])
    r = invoke("validate", d / "m.amos", "--onnx", model, "-i", d / "x.npy", "--labels", d / "y.npy",
               "--limit", 7, "--min-agreement", 0)
    assert r.exit_code == 0 and "validated 7 inputs" in r.output


def test_validate_needs_something_to_compare(files):
    """Without --onnx, validate checks the independent Lava implementation against the reference
    spike for spike (or fails naming why it cannot); the reference alone has nothing to compare."""
    from amosc.backends.lava._compat import lava_problem
    d, model = files
    invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos")
    r = CliRunner().invoke(main, ["validate", str(d / "m.amos"), "-i", str(d / "x.npy"), "--limit", "3"])
    if lava_problem() is None:
        assert r.exit_code == 0 and "backend 'lava' vs reference" in r.output and "EQUAL" in r.output, r.output
    else:
        assert r.exit_code == 2 and "'lava' is not usable" in r.output, r.output
    r = CliRunner().invoke(main, ["validate", str(d / "m.amos"), "-i", str(d / "x.npy"), "--backend", "reference"])
    assert r.exit_code == 2 and "nothing to validate" in r.output


def test_maxpool_lipool_compiles_inspects_validates_and_refuses_fitted_inputs(tmp_path):
    def pool_model(act):
        b = GraphBuilder((1, 8, 8), 3)
        h = b.node(act, [b.conv("x", 1, 3)])
        h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
        return save(b.model(b.gemm(b.node("Flatten", [h], axis=1), 48, 4), 4), tmp_path / f"{act}.onnx")

    x = structured_inputs((1, 8, 8), 80, seed=3)
    np.save(tmp_path / "x.npy", x)
    relu = pool_model("Relu")
    r = invoke("compile", relu, "--calib", tmp_path / "x.npy", "-o", tmp_path / "m.amos", "--maxpool", "lipool")
    assert r.exit_code == 0, r.output
    r = invoke("inspect", tmp_path / "m.amos")
    assert "lipool" in r.output and "max of 4 input compartments" in r.output
    r = invoke("validate", tmp_path / "m.amos", "--onnx", relu, "-i", tmp_path / "x.npy", "--min-agreement", 0.95)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["compile", str(pool_model("Sigmoid")), "--calib", str(tmp_path / "x.npy"),
                                  "-o", str(tmp_path / "s.amos"), "--maxpool", "lipool"])
    assert r.exit_code != 0 and "--maxpool tree" in r.output and not (tmp_path / "s.amos").exists()


def test_budgets_and_report(files):
    """--latency-budget / --neuron-budget are met or refused before anything is written;
    `report` prints the cost and, as JSON, the documented field names."""
    d, model = files
    base = ("compile", model, "--calib", d / "calib.npy", "--bits", 6)
    r = invoke(*base, "-o", d / "sar.amos")
    sar = json.loads(invoke("inspect", d / "sar.amos", "--format", "json").output)["totals"]
    assert sar["latency_steps"] == 25

    r = invoke(*base, "-o", d / "fast.amos", "--latency-budget", 13)
    assert r.exit_code == 0, r.output
    fast = json.loads(invoke("inspect", d / "fast.amos", "--format", "json").output)["totals"]
    assert fast["latency_steps"] <= 13 and fast["neurons"] > sar["neurons"]

    r = invoke(*base, "-o", d / "small.amos", "--neuron-budget", fast["neurons"] - 1)
    assert r.exit_code == 0, r.output
    small = json.loads(invoke("inspect", d / "small.amos", "--format", "json").output)["totals"]
    assert small["neurons"] < fast["neurons"] and 13 < small["latency_steps"] <= sar["latency_steps"]

    for opt, value, needle in (("--latency-budget", 3, "latency"), ("--neuron-budget", 10, "neuron")):
        r = invoke(*base, "-o", d / "no.amos", opt, value)
        assert r.exit_code == 2 and needle in r.output and re.search(r"(lowest|fewest).* \d+", r.output), r.output
        assert not (d / "no.amos").exists()

    r = invoke("report", d / "fast.amos", "--input", d / "x.npy", "--limit", 8)
    assert r.exit_code == 0, r.output
    assert "target loihi2" in r.output and "energy per input" in r.output and "estimate" in r.output
    rep = json.loads(invoke("report", d / "fast.amos", "--format", "json", "--target", "loihi2").output)
    assert rep["neurons"] == fast["neurons"] and rep["latency_steps"] == fast["latency_steps"]
    assert rep["cores"] >= 1 and rep["chips"] == 1 and "spikes_per_input" not in rep
    rep = json.loads(invoke("report", d / "fast.amos", "--format", "json", "-i", d / "x.npy").output)
    assert rep["spikes_per_input"] > 0 and rep["energy_pj_per_input"] > 0 and rep["energy_is_estimate"]


def test_relu_split_flag_compiles_inspects_and_validates(tmp_path):
    from test_activations import _act_model
    model = save(_act_model("SiLU", seed=6), tmp_path / "silu.onnx")
    x = structured_inputs((1, 8, 8), 60, seed=4)
    np.save(tmp_path / "x.npy", x)
    r = invoke("compile", model, "--calib", tmp_path / "x.npy", "-o", tmp_path / "m.amos", "--bits", 8, "--relu-split")
    assert r.exit_code == 0, r.output
    r = invoke("inspect", tmp_path / "m.amos")
    assert "ReLU split: the unit is these segments of f - s relu plus s x " in r.output
    # validate decodes the split unit (its ReLU part included) against onnxruntime's tensor
    r = invoke("validate", tmp_path / "m.amos", "--onnx", model, "-i", tmp_path / "x.npy", "--min-agreement", 0.9)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if " silu " in line)
    assert float(row.split()[-1]) < 0.02, row        # the unit's relative error (about 1 without the ReLU part)


def test_fitted_units_flag_compiles_inspects_and_validates(tmp_path):
    from test_activations import _act_model
    model = save(_act_model("SiLU", seed=6), tmp_path / "silu.onnx")
    x = structured_inputs((1, 8, 8), 60, seed=4)
    np.save(tmp_path / "x.npy", x)
    r = invoke("compile", model, "--calib", tmp_path / "x.npy", "-o", tmp_path / "m.amos", "--bits", 3,
               "--fitted-units", 8)
    assert r.exit_code == 0, r.output
    r = invoke("inspect", tmp_path / "m.amos")
    assert "fitted AMOS unit of " in r.output and ": 8 neurons/element" in r.output
    r = invoke("validate", tmp_path / "m.amos", "--onnx", model, "-i", tmp_path / "x.npy", "--min-agreement", 0.8)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if " silu " in line)
    assert float(row.split()[-1]) < 0.1, row        # the unit's relative error
    r = CliRunner().invoke(main, ["compile", str(model), "--calib", str(tmp_path / "x.npy"), "--fitted-units", "30"])
    assert r.exit_code != 0 and "--fitted-units" in r.output
