"""The rate-family conversion codes (rate, burst, ternary, augmented) on the imported graph,
and `amosc compare` (docs/codes.md)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from amosc import codes
from amosc.cli import main
from amosc.compiler.pipeline import import_graph
from amosc.errors import ModelError
from amosc.ir.tensor import float_eval
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save


def _relu_model(seed=0):
    """(1, 8, 8) -> conv 4 + BN + ReLU -> conv 4 stride 2 + ReLU -> GAP -> gemm 3."""
    b = GraphBuilder((1, 8, 8), seed)
    h = b.relu(b.bn(b.conv("x", 1, 4), 4))
    h = b.relu(b.conv(h, 4, 4, stride=2))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    return b.model(b.gemm(h, 4, 3), 3)


@pytest.fixture(scope="module")
def relu_net(tmp_path_factory):
    path = save(_relu_model(), tmp_path_factory.mktemp("codes") / "m.onnx")
    return path, import_graph(path), structured_inputs((1, 8, 8), 60, seed=5)


@pytest.mark.parametrize("name,cap", [("rate", 1), ("burst", 2), ("burst5", 5), ("augmented", None)])
def test_first_layer_count_is_the_rounded_rate_of_its_constant_current(relu_net, name, cap):
    # the first gate sees the analog input, a constant current I per step: starting at
    # lambda / 2 with reset by subtraction it has fired round(T I / lambda) times after T
    # steps, at most ``cap`` per step, never below 0 (spike for spike, per neuron)
    path, fg, x = relu_net
    lam = codes.thresholds(fg, x)
    g = fg.gates[0]
    pre = {}
    float_eval(fg, x, pre_values=pre)
    for t in (7, 32):
        got: dict = {}
        codes.simulate(fg, lam, x, codes.scheme(name), [t], record=got)
        want = np.floor(t * pre[g.name] / lam[g.name] + 0.5)
        want = np.maximum(want, 0) if cap is None else np.clip(want, 0, cap * t)
        near = np.abs(t * pre[g.name] / lam[g.name] + 0.5 - np.round(t * pre[g.name] / lam[g.name] + 0.5)) < 1e-9
        np.testing.assert_array_equal(got[g.name][~near], want[~near])


def test_signed_codes_take_back_only_what_was_sent(relu_net):
    path, fg, x = relu_net
    lam = codes.thresholds(fg, x)
    for name in ("ternary", "augmented"):
        got: dict = {}
        codes.simulate(fg, lam, x, codes.scheme(name), [64], record=got)
        for g in fg.gates:
            assert got[g.name].min() >= 0, (name, g.name)   # the net count stays a ReLU's


def test_longer_windows_agree_better_and_cost_more_spikes(relu_net):
    path, fg, x = relu_net
    lam = codes.thresholds(fg, x)
    logits = float_eval(fg, x)["output"]
    err, spikes = {}, {}
    for t in (4, 256):
        got: dict = {}
        preds, spk = codes.simulate(fg, lam, x, codes.scheme("rate"), [t], record=got)
        err[t], spikes[t] = np.abs(got["output"] - logits).mean(), spk[t]
        if t == 256:
            assert (preds[t] == logits.argmax(1)).mean() >= 0.9
    assert err[256] < 0.25 * err[4]
    assert np.all(spikes[256] > spikes[4])


def test_fitted_activations_are_refused_naming_the_gate(tmp_path):
    b = GraphBuilder((1, 8, 8), 0)
    h = b.bn(b.conv("x", 1, 4), 4)
    h = b.node("Sigmoid", [h])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    path = save(b.model(b.gemm(h, 4, 3), 3), tmp_path / "sig.onnx")
    x = structured_inputs((1, 8, 8), 8)
    with pytest.raises(ModelError, match=r"is sigmoid: the rate-family codes .* ReLU-family networks only"):
        codes.compare(path, x, x, bits=())


def test_unknown_code_names_the_codes():
    with pytest.raises(ModelError, match="rate, burst .* ternary, augmented"):
        codes.scheme("ttfs")
    assert codes.scheme("burst3").burst == 3 and codes.scheme("augmented").burst is None


def test_compare_cli_prints_amos_beside_the_codes(relu_net, tmp_path):
    path, fg, x = relu_net
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(len(x)) % 3)
    out = tmp_path / "rows.json"
    res = CliRunner().invoke(main, ["compare", str(path), "--calib", str(tmp_path / "x.npy"), "--input",
                                    str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                                    "--codes", "rate,ternary", "-T", "8,64", "-K", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [(r["code"], r["setting"]) for r in rows] == [("rate", "T=8"), ("rate", "T=64"), ("ternary", "T=8"),
                                                        ("ternary", "T=64"), ("amos", "K=4")]
    # a rate code's latency is its window plus the two gate layers' hops
    assert rows[0]["latency_steps"] == 8 + 2 and rows[1]["latency_steps"] == 64 + 2
    assert all(0 <= r["agreement"] <= 1 and r["accuracy"] is not None for r in rows)
    assert "| amos | K=4 |" in res.output
    bad = CliRunner().invoke(main, ["compare", str(path), "--calib", str(tmp_path / "x.npy"), "--input",
                                    str(tmp_path / "x.npy"), "--codes", "rate,ttfs"])
    assert bad.exit_code == 2 and "unknown code 'ttfs'" in bad.output
