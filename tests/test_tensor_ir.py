"""The tensor IR (amosc/ir/tensor.py): the verifier's rules, the text dump and the
tensor pass manager (amosc/compiler/tensor_passes.py)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from amosc.compiler.importer import import_model
from amosc.compiler.pipeline import PASS_NAMES, import_graph
from amosc.compiler.tensor_passes import drop_dead_gates, run_tensor_passes
from amosc.errors import IRError
from amosc.ir import linear as L
from amosc.ir.tensor import Expr, dumps, float_eval, verify_graph
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save, small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def graph(tmp_path):
    return import_graph(save(small_cnn(), tmp_path / "m.onnx"))


def test_imported_graphs_verify_and_dump():
    for name in ("fmnist_resnet/model.onnx", "fixtures/efficientnet.onnx", "fixtures/gelu_maxpool.onnx"):
        g = import_graph(os.path.join(ROOT, "examples", name))
        verify_graph(g)
        text = dumps(g)
        for gate in g.gates:  # one header line per gate, one line per source map
            assert f"  gate {gate.name} " in text
        n_maps = sum(len(gate.expr.maps) for gate in g.gates) + len(g.readout.maps)
        assert text.count("\n    + ") == n_maps


def _gate(g, i, **kw):
    gates = list(g.gates)
    gates[i] = replace(gates[i], **kw)
    return replace(g, gates=gates)


def test_verifier_rules(graph):
    verify_graph(graph)
    g0, g1 = graph.gates[0], graph.gates[1]
    src, m = next(iter(g1.expr.maps.items()))
    bad = {
        "reads 'nowhere'": _gate(graph, 1, expr=Expr(g1.expr.shape, {"nowhere": m}, g1.expr.bias)),
        "is not the input or an earlier gate": replace(graph, gates=[g1, g0, *graph.gates[2:]]),
        "bias shape": _gate(graph, 1, expr=Expr(g1.expr.shape, dict(g1.expr.maps), g1.expr.bias[:1])),
        "takes shape": _gate(graph, 1, expr=Expr(g1.expr.shape, {src: replace(m, in_shape=(9, 9, 9))},
                                                 g1.expr.bias)),
        "used twice": _gate(graph, 1, name=g0.name),
        "does not give gate shape": _gate(graph, 1, compartments=2),
        "partner": _gate(graph, 1, partner="nowhere"),
        "upper must be finite": _gate(graph, 0, upper=-1.0),
        "bits must be": _gate(graph, 0, bits=0),
        "units must be 1..255 neurons of a fitted gate": _gate(graph, 0, units=8),   # a ReLU gate
        "not (classes,)": replace(graph, readout=graph.gates[-1].expr),
    }
    for needle, g in bad.items():
        with pytest.raises(IRError, match="gate|readout") as exc:
            verify_graph(g)
        assert needle in str(exc.value), (needle, str(exc.value))


def test_drop_dead_gates_keeps_what_the_readout_reads(tmp_path):
    b = GraphBuilder((6,))
    h = b.relu(b.gemm("x", 6, 5))
    b.relu(b.gemm(h, 5, 3))          # read by nothing
    out = b.gemm(b.relu(b.gemm(h, 5, 4)), 4, 3)
    g = import_model(save(b.model(out, 3), tmp_path / "dead.onnx"))
    assert len(g.gates) == 3
    live = drop_dead_gates(g)
    assert [x.name for x in live.gates] == [g.gates[0].name, g.gates[2].name]
    assert len(g.gates) == 3  # passes return a new graph
    x = np.random.default_rng(0).normal(size=(16, 6))
    np.testing.assert_array_equal(float_eval(live, x)["output"], float_eval(g, x)["output"])


def test_the_pass_manager_names_the_pass_that_broke_the_graph(graph):
    def break_shapes(g):
        gate = g.gates[0]
        return _gate(g, 0, shape=(gate.shape[0] + 1, *gate.shape[1:]))
    with pytest.raises(IRError, match=r"tensor pass break_shapes \(after \['drop_dead_gates'\]\)"):
        run_tensor_passes(graph, [drop_dead_gates, break_shapes])


def test_dump_is_called_after_every_pass_of_both_levels(tmp_path):
    import amosc
    seen = []
    path = save(small_cnn(), tmp_path / "m.onnx")
    plain = amosc.compile(path, structured_inputs((1, 12, 12), 32), bits=3)
    amosc.compile(path, structured_inputs((1, 12, 12), 32), bits=3, latency_budget=plain.latency - 1,
                  dump=lambda name, ir: seen.append((name, type(ir).__name__)))
    assert [n for n, _ in seen] == [p for p in PASS_NAMES if p != "relay_input"]   # (conditional pass)
    kinds = dict(seen)
    assert kinds["expand_fitted"] == "TensorGraph" and kinds["lower"] == "Program"


def test_row_sum_bounds_hold_on_random_inputs(graph):
    """The interval analysis bounds every pre-activation the float graph computes."""
    from amosc.ir.tensor import value_bounds
    gates = {g.name: g for g in graph.gates}
    pre = {}
    float_eval(graph, structured_inputs((1, 12, 12), 64, seed=3) * 4 - 2, pre_values=pre)
    for g in graph.gates:
        lo, hi = value_bounds(g.expr, gates)
        assert np.all(pre[g.name] >= lo - 1e-9) and np.all(pre[g.name] <= hi + 1e-9), g.name
    assert isinstance(graph.gates[0].expr.maps["input"], L.Conv)
