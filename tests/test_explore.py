"""amosc explore: the front over gate structures (amosc/compiler/explore.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import amosc
from amosc.cli import main
from amosc.compiler import explore as ex
from amosc.compiler.calibrate import OnnxRunner
from amosc.compiler.importer import graph_input, load_model, normalize
from amosc.ir.semantics import decode, evaluate
from conftest import structured_inputs
from onnx_builders import save, small_cnn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("explore")
    model = save(small_cnn(seed=4), d / "model.onnx")
    x = structured_inputs((1, 12, 12), 140, seed=2)
    np.save(d / "calib.npy", x[:100])
    np.save(d / "x.npy", x[100:])
    np.save(d / "y.npy", np.arange(40) % 5)
    return d, model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_explore_front_table_json_and_plot(files):
    d, model = files
    r = invoke("explore", model, "--calib", d / "calib.npy", "--val-input", d / "x.npy", "--labels", d / "y.npy",
               "--bits", 4, "--max-points", 6, "-o", d / "front.png", "--json", d / "front.json")
    assert r.exit_code == 0, r.output
    assert "on the Pareto front" in r.stdout and "(default)" in r.stdout
    pts = json.loads((d / "front.json").read_text())
    for p in pts:
        assert set(ex.FIELDS) <= set(p)
    assert (d / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the default point is the plain compile, measured as validate would
    sar = amosc.compile(model, np.load(d / "calib.npy"), bits=4)
    default = [p for p in pts if p["default"]]
    assert len(default) == 1 and default[0]["structures"].startswith("sar")
    assert default[0]["latency_steps"] == sar.latency
    x = np.load(d / "x.npy")
    m = normalize(load_model(model)[0], str(model))
    name, _, fixed = graph_input(m, str(model))
    ref = OnnxRunner(m, name, fixed).collect(x, [m.graph.output[0].name], desc=None)[m.graph.output[0].name]
    pred = decode(sar.output_pop, evaluate(sar, x)[sar.output]).argmax(1)
    assert default[0]["agreement"] == pytest.approx((pred == ref.argmax(1)).mean())

    # at least four distinct trade-offs, each faster and larger than the last
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["latency_steps"])
    lat_neurons = sorted({(p["latency_steps"], p["neurons"]) for p in pts})
    assert len(lat_neurons) >= 4
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in zip(lat_neurons, lat_neurons[1:]))
    # the flags are the definition of Pareto optimality
    def dominates(q, p):
        better_eq = (q["latency_steps"] <= p["latency_steps"] and q["neurons"] <= p["neurons"]
                     and q["agreement"] >= p["agreement"])
        return better_eq and (q["latency_steps"], q["neurons"], q["agreement"]) != \
            (p["latency_steps"], p["neurons"], p["agreement"])
    for p in pts:
        assert p["pareto"] == (not any(dominates(q, p) for q in pts))
    assert front


def test_explore_refuses_bad_bits_and_leaves_nothing(files):
    d, model = files
    r = invoke("explore", model, "--calib", d / "calib.npy", "--val-input", d / "x.npy", "--bits", "4,x",
               "--json", d / "no.json")
    assert r.exit_code == 2 and "--bits" in r.output and not (d / "no.json").exists()


def test_structure_names():
    from amosc.ir.nodes import Code
    assert ex.structure_of(Code.binary(6, 3, 1)) == "sar"
    assert ex.structure_of(Code.radix(6, 2, 3, 1)) == "radix2"
    assert ex.structure_of(Code.radix(7, 3, 3, 1)) == "radix3"
    assert ex.structure_of(Code.radix(5, 5, 3, 1)) == "flash"


def test_explore_compiles_fitted_unit_variants_as_more_points(tmp_path):
    from test_activations import _act_model
    model = save(_act_model("SiLU", seed=6), tmp_path / "silu.onnx")
    x = structured_inputs((1, 8, 8), 70, seed=4)
    np.save(tmp_path / "c.npy", x[:40])
    np.save(tmp_path / "x.npy", x[40:])
    r = invoke("explore", model, "--calib", tmp_path / "c.npy", "--val-input", tmp_path / "x.npy", "--bits", 6,
               "--max-points", 2, "--fit-tolerance", "0.1,0.5", "--relu-split", "both", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    pts = json.loads((tmp_path / "f.json").read_text())
    labels = {p["options"] for p in pts}
    assert labels == {"--fit-tolerance 0.1", "--fit-tolerance 0.1 --relu-split", "--fit-tolerance 0.5",
                      "--fit-tolerance 0.5 --relu-split"}
    sar = {p["options"]: p["neurons"] for p in pts if p["structures"].startswith("sar") and "radix" not in
           p["structures"] and "flash" not in p["structures"]}
    assert sar["--fit-tolerance 0.5"] < sar["--fit-tolerance 0.1"]    # looser fits, fewer segments
    assert [p["options"] for p in pts if p["default"]] == ["--fit-tolerance 0.1"]
    assert "[--fit-tolerance 0.5]" in r.stdout
    bad = invoke("explore", model, "--calib", tmp_path / "c.npy", "--val-input", tmp_path / "x.npy",
                 "--fit-tolerance", "0.1,2")
    assert bad.exit_code == 2 and "each tolerance must be in (0, 1]" in bad.output


def test_explore_compiles_products_both_ways(tmp_path):
    from onnx_builders import se_cnn
    model = save(se_cnn(), tmp_path / "se.onnx")
    x = structured_inputs((1, 8, 8), 70, seed=4)
    np.save(tmp_path / "c.npy", x[:40])
    np.save(tmp_path / "x.npy", x[40:])
    r = invoke("explore", model, "--calib", tmp_path / "c.npy", "--val-input", tmp_path / "x.npy", "--bits", 5,
               "--max-points", 2, "--product", "both", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    pts = json.loads((tmp_path / "f.json").read_text())
    assert {p["options"] for p in pts} == {"", "--product gated"}
    gated = [p for p in pts if p["options"] == "--product gated"]
    plain = [p for p in pts if p["options"] == ""]
    # the digit chain adds K steps on the gate's path
    assert min(p["latency_steps"] for p in gated) > min(p["latency_steps"] for p in plain)

