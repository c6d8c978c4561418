"""Cost model and core mapping (amosc/compiler/cost.py, hardware.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import amosc
from amosc.compiler import cost, hardware
from amosc.errors import ResourceError
from amosc.ir.nodes import GatePop, InputPop
from amosc.ir.semantics import evaluate
from amosc.ir.text import describe
from conftest import structured_inputs
from onnx_builders import mlp, save, small_cnn


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    path = save(small_cnn(), tmp_path_factory.mktemp("cost") / "m.onnx")
    return amosc.compile(path, structured_inputs((1, 12, 12), 64), bits=4)


def test_static_cost_agrees_with_the_dump(cnn):
    c = cost.static_cost(cnn)
    totals = describe(cnn)["totals"]
    assert c.neurons == totals["neurons"]
    assert c.synapses == totals["synapses"] and c.synapses_deployed == totals["synapses_deployed"]
    assert c.latency_steps == cnn.latency
    assert c.critical_path[0] == cnn.input and c.critical_path[-1] == cnn.output


@pytest.mark.parametrize("target", ["loihi1", "loihi2"])
def test_mapping_places_every_element_once_within_the_limits(cnn, target):
    hw = hardware.profile(target)
    if hw.input_axons_per_core is not None:  # the readout reads 4608 units: more than a Loihi 1 core
        hw = replace(hw, input_axons_per_core=8192)
    small = replace(hw, neurons_per_core=64, synapse_memory_bits=400_000)  # force many slices
    for prof in (hw, small):
        m = cost.map_cores(cnn, prof)
        by_pop: dict = {}
        for s in m.slices:
            by_pop.setdefault(s.population, []).append((s.start, s.stop))
            assert s.neurons <= prof.neurons_per_core
            assert s.memory_bits <= prof.synapse_memory_bits
            if prof.input_axons_per_core is not None:
                assert s.input_axons <= prof.input_axons_per_core
        for pop in cnn.populations:
            if isinstance(pop, InputPop):
                assert pop.name not in by_pop
                continue
            spans = by_pop[pop.name]
            assert spans[0][0] == 0 and spans[-1][1] == int(np.prod(pop.shape))
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert m.cores == len(m.slices) and m.chips == -(-m.cores // prof.cores_per_chip)
    assert cost.map_cores(cnn, small).cores > cost.map_cores(cnn, hw).cores


def test_a_layer_that_cannot_fit_a_core_is_named(cnn):
    tiny = replace(hardware.LOIHI1, synapse_memory_bits=1000)
    with pytest.raises(ResourceError, match=r"population 'g\d+_.*' does not fit a loihi1 core: 1 unit\(s\) of "
                                            r"one element needs \d+ bits of synapses"):
        cost.map_cores(cnn, tiny)
    with pytest.raises(ResourceError, match=r"population 'output' does not fit a loihi1 core: one element "
                                            r"needs 4608 input axons \(a core has 4096\)"):
        cost.map_cores(cnn, hardware.LOIHI1)
    with pytest.raises(Exception, match="unknown hardware target 'loihi3'"):
        hardware.profile("loihi3")


def test_an_element_too_large_for_a_core_has_its_units_split(cnn):
    """A core smaller than one element (here: 3 neurons, K = 4): every gate population's units
    are split into groups, and each group's slices cover all elements once."""
    gate = next(p for p in cnn.populations if isinstance(p, GatePop))
    assert gate.code.bits == 4
    hw = replace(hardware.LOIHI2, neurons_per_core=3)
    m = cost.map_cores(cnn, hw)
    split = [s for s in m.slices if s.population == gate.name]
    groups = sorted({s.units for s in split})
    assert len(groups) >= 2 and groups[0][0] == 0 and groups[-1][1] == gate.code.bits
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    for g in groups:
        spans = [(s.start, s.stop) for s in split if s.units == g]
        assert spans[0][0] == 0 and spans[-1][1] == int(np.prod(gate.shape))
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(s.memory_bits <= hw.synapse_memory_bits for s in m.slices)
    assert sum(s.neurons for s in split) == int(np.prod(gate.shape)) * gate.code.bits


def test_activity_counts_the_spikes_the_evaluator_sees(tmp_path):
    prog = amosc.compile(save(mlp((6, 5, 3)), tmp_path / "mlp.onnx"),
                         np.random.default_rng(0).uniform(0, 1, (64, 6)), bits=3)
    x = np.random.default_rng(1).uniform(0, 1, (10, 6))
    counts: dict = {}
    evaluate(prog, x, spike_counts=counts)
    act = cost.activity(prog, x, batch=4)
    assert act["spikes"] == pytest.approx(sum(c.sum() for c in counts.values()) / 10)
    assert act["synops_per_projection"]
    for pr in prog.projections:  # dense maps: every spike reaches its column's non-zero rows, per target unit
        src, tgt = prog.pop(pr.source), prog.pop(pr.target)
        fan_out = np.count_nonzero(pr.weight) / src.shape[0]
        kt = tgt.code.bits if isinstance(tgt, GatePop) else 1
        want = counts[pr.source].mean() * fan_out * kt
        assert act["synops_per_projection"][pr.name] == pytest.approx(want)


def test_report_fields_and_energy_parts(cnn):
    x = structured_inputs((1, 12, 12), 8, seed=5)
    r = cost.report(cnn, hardware.LOIHI2, x)
    for key in ("neurons", "synapses", "cores", "chips", "latency_steps", "spikes_per_input",
                "synops_per_input", "energy_pj_per_input"):
        assert key in r
    assert r["energy_pj_per_input"] == pytest.approx(sum(r["energy_parts_pj"].values()))
    assert all(v >= 0 for v in r["energy_parts_pj"].values())
    assert r["energy_parts_pj"]["synops"] == pytest.approx(r["synops_per_input"] * hardware.LOIHI2.e_synop)
