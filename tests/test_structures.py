"""Gate structures (radix / flash ADC codes) and the structure optimizer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from amosc.compiler.structures import Choice, Node, choices, optimize, stages
from amosc.errors import ModelError
from amosc.ir.nodes import Code


def stage_rule(code: Code, y: np.ndarray) -> np.ndarray:
    """The code of docs/ir.md's rule written out: unit k fires iff y minus the resets of the
    units that fired in earlier steps reaches T_k."""
    z = np.zeros((code.bits, *y.shape), np.int64)
    st = code.unit_steps
    for k in range(code.bits):
        inh = sum(code.resets[j] * z[j] for j in range(k) if st[j] < st[k])
        z[k] = (y - inh) >= code.thresholds[k]
    return np.tensordot(np.asarray(code.weights), z, axes=1)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_every_radix_gives_the_adc_code(bits):
    y = np.arange(-40, 2**bits * 7 + 40)
    for theta, offset in ((1, 0), (7, 3), (16, 8)):
        want = np.clip((y * theta // 7 + offset) // theta, 0, 2**bits - 1)
        yy = y * theta // 7
        for r in range(1, bits + 1):
            code = Code.radix(bits, r, theta, offset)
            assert code.depth == len(stages(bits, r))
            assert code.bits == sum(2**s - 1 for s in stages(bits, r))
            np.testing.assert_array_equal(stage_rule(code, yy), want, err_msg=f"K={bits} r={r}")
    assert Code.radix(8, 1) == Code.binary(8)
    assert Code.radix(8, 8).depth == 1 and Code.radix(8, 8).bits == 255


def test_code_steps_are_validated():
    with pytest.raises(Exception, match="start at 0"):
        Code((1, 2), (1, 1), (1, 1), (1, 1))
    with pytest.raises(Exception, match="rise by 0 or 1"):
        Code((1, 2, 3), (1, 1, 1), (1, 1, 1), (0, 0, 2))
    with pytest.raises(Exception, match="default"):
        Code((2, 1), (2, 1), (2, 1), (0, 1))


def test_choices_are_the_fewest_units_per_depth():
    got = {(c.depth, c.units) for c in choices(8)}
    assert got == {(8, 8), (4, 12), (3, 17), (2, 30), (1, 255)}
    assert [c.depth for c in choices(8, max_units=20)] == [3, 4, 8]


def _brute(nodes, edges):
    names = [n.name for n in nodes]
    preds = {n: [u for u, v in edges if v == n] for n in names}
    out = []
    for pick in itertools.product(*[n.options for n in nodes]):
        d = {n.name: c.depth for n, c in zip(nodes, pick)}
        start = {}
        for n in names:
            start[n] = max((start[u] + d[u] for u in preds[n]), default=0)
        lat = max(start[n] + d[n] for n in names)
        out.append((lat, sum(n.elements * c.units for n, c in zip(nodes, pick))))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_optimizer_is_exact_on_random_dags(seed):
    rng = np.random.default_rng(seed)
    n = 6
    nodes = [Node("in", 50, [Choice(0, 4, 4)])]
    for i in range(1, n - 1):
        k = int(rng.integers(2, 6))
        nodes.append(Node(f"g{i}", int(rng.integers(1, 100)), choices(k)))
    nodes.append(Node("out", 10, [Choice(0, 1, 1)]))
    names = [x.name for x in nodes]
    edges = {(names[i], names[i + 1]) for i in range(n - 1)}
    edges |= {(names[i], names[j]) for i in range(n) for j in range(i + 2, n) if rng.random() < 0.3}
    edges = sorted(edges)
    every = _brute(nodes, edges)
    lats = sorted({lat for lat, _ in every})
    for budget in lats:
        plan = optimize(nodes, edges, latency_budget=budget)
        assert plan.latency <= budget
        assert plan.neurons == min(u for lat, u in every if lat <= budget)
    for nb in sorted({u for _, u in every})[::7]:
        plan = optimize(nodes, edges, neuron_budget=nb)
        best = min(lat for lat, u in every if u <= nb)
        assert plan.neurons <= nb and plan.latency == best
        assert plan.neurons == min(u for lat, u in every if lat == best and u <= nb)
    with pytest.raises(ModelError, match=rf"--latency-budget {lats[0] - 1}: the lowest latency any "
                                         rf"structure choice reaches is {lats[0]} steps"):
        optimize(nodes, edges, latency_budget=lats[0] - 1)
    least = min(u for _, u in every)
    with pytest.raises(ModelError, match=rf"--neuron-budget {least - 1}: the fewest neurons any structure "
                                         rf"choice needs are {least}"):
        optimize(nodes, edges, neuron_budget=least - 1)


def test_structured_programs_run_spike_exact_within_their_budget(tmp_path):
    """A latency budget changes structures and timing, not the quantization: every gate's
    code of a given input is the SAR's (test above), only the synaptic floors of the
    planes differ (a radix unit's plane carries weight w_s where the SAR has binary
    planes), so the outputs stay close to the SAR program's; the reference simulator
    equals level 1 integer for integer with the scheduled latency; the budget is met."""
    import amosc
    from amosc.backends.reference import simulate
    from amosc.ir.semantics import decode, evaluate
    from conftest import structured_inputs
    from onnx_builders import save, small_cnn
    path = save(small_cnn(), tmp_path / "m.onnx")
    calib = structured_inputs((1, 12, 12), 48)
    x = structured_inputs((1, 12, 12), 12, seed=7)
    sar = amosc.compile(path, calib, bits=5)
    ref = decode(sar.output_pop, evaluate(sar, x)[sar.output])
    first = sar.populations[1].name
    lat = []
    for budget in (sar.latency - 1, sar.latency - 6, 9):
        p = amosc.compile(path, calib, bits=5, latency_budget=budget)
        assert p.latency <= budget
        assert any(pop.code.steps for pop in p.populations if hasattr(pop, "code") and pop.name != p.input)
        counts: dict = {}
        got = evaluate(p, x, spike_counts=counts)
        np.testing.assert_array_equal(got[first], evaluate(sar, x)[first])  # same input, same code
        out = decode(p.output_pop, got[p.output])
        assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()
        res = simulate(p, x, record=True)
        np.testing.assert_array_equal(res.output, got[p.output])
        for name, c in counts.items():  # every population's spikes, input by input
            np.testing.assert_array_equal(res.spikes[name], c, err_msg=name)
        assert res.latency == p.latency
        lat.append(p.latency)
    assert lat == sorted(lat, reverse=True)
    back = amosc.load(p.save(tmp_path / "p.amos") or tmp_path / "p.amos")  # steps survive the artifact
    assert [getattr(q, "code", None) for q in back.populations] == [getattr(q, "code", None) for q in p.populations]
    np.testing.assert_array_equal(evaluate(back, x)[p.output], got[p.output])
    with pytest.raises(ModelError, match="--latency-budget 3: the lowest latency"):
        amosc.compile(path, calib, bits=5, latency_budget=3)
