"""Fitted AMOS units (--fitted-units N): one N-neuron circuit per element with fitted
thresholds, resets and output weights (the FS-neuron code unrolled in space)."""

import numpy as np
import pytest

import amosc
from amosc.compiler.activations import ScalarFn
from amosc.compiler.quantize import Options
from amosc.compiler.unitfit import _fit, fit_unit
from amosc.errors import AmoscError, ModelError
from amosc.ir.nodes import Code, GatePop
from amosc.ir.semantics import decode_activation, evaluate, unit_spikes
from amosc.ir.tensor import float_eval
from amosc.compiler.importer import import_model
from conftest import structured_inputs
from onnx_builders import save
from test_activations import _act_model
from test_semantics import assert_levels_equal

FNS = {"silu": ScalarFn("silu"), "gelu": ScalarFn("gelu"), "sigmoid": ScalarFn("sigmoid"), "tanh": ScalarFn("tanh")}


def _sample(seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(m, s, 3000) for m, s in ((-0.5, 1.0), (0.3, 1.5), (1.0, 0.7))])


def _sar_error(fn, x, k):
    """The rms error of the fit's starting point: a K-bit SAR ADC on the sample's range with
    least-squares output weights (a linear function of the quantized input)."""
    lo, hi = x.min(), x.max()
    w = (hi - lo) * 2.0 ** -np.arange(1, k + 1)
    v, z = x.copy(), []
    for t, h in zip(lo + w, w):
        z.append(v >= t)
        v = v - h * z[-1]
    a = np.vstack([np.array(z, float), np.ones(x.size)]).T
    d, *_ = np.linalg.lstsq(a, fn(x), rcond=None)
    return float(np.sqrt(((a @ d - fn(x)) ** 2).mean()))


@pytest.mark.parametrize("name", ["silu", "sigmoid"])
def test_fit_beats_its_adc_start_and_improves_with_neurons(name):
    fn, s = FNS[name], _sample()
    errs = []
    for k in (3, 6):
        u = fit_unit(fn, s, k)
        assert u.bits == k and len(u.resets) == len(u.codes) == k and u.channels == 3
        e = u.evaluate(s) - fn(s)
        rms = float(np.sqrt((e**2).mean()))
        q = np.quantile(s.ravel(), np.linspace(0, 1, 1024))   # what the fit ran on
        assert abs(float((u.evaluate(q) - fn(q)).mean())) < 1e-9          # centred as rounded
        assert rms <= 0.8 * _sar_error(fn, s.ravel(), k), (rms, _sar_error(fn, s.ravel(), k))
        assert rms <= 1.5 * u.rms_err + 1e-3     # the quantiles stand for the whole sample
        errs.append(rms)
    assert errs[1] < 0.7 * errs[0], errs


def test_fit_is_deterministic():
    fn, s = FNS["silu"], _sample(1)
    a = fit_unit(fn, s, 5)
    _fit.cache_clear()
    b = fit_unit(fn, s, 5)
    assert a == b


def test_fit_refuses_bad_requests():
    with pytest.raises(ModelError, match="needs 1..24 neurons"):
        fit_unit(FNS["silu"], _sample(), 30)
    with pytest.raises(ModelError, match="empty or not finite"):
        fit_unit(FNS["silu"], np.array([0.0, np.nan]), 4)
    with pytest.raises(AmoscError, match="fitted_units must be 0"):
        Options(fitted_units=25)


def test_unit_float_model_is_the_amos_recurrence():
    """UnitFit.spikes is the IR's unit rule z_k = [y - sum_{j<k} h_j z_j >= T_k] (on a fine
    integer grid, thresholds and resets as integers)."""
    u = fit_unit(FNS["gelu"], _sample(2), 6)
    scale = 1e-3
    y = np.arange(-6000, 6000)
    shift = 1 - int(np.rint(min(u.thresholds) / scale))
    code = Code(tuple(int(np.rint(t / scale)) + shift for t in u.thresholds),
                tuple(int(np.rint(h / scale)) for h in u.resets), u.codes)
    want = unit_spikes(code, y + shift)
    got = u.spikes((y * scale))
    # the grid rounds each threshold and reset: allow the few inputs within 6 grid points of a switch
    assert (want != got).any(axis=0).sum() <= 6 * 2 * u.bits


@pytest.mark.parametrize("op", ["SiLU", "GELU", "Sigmoid"])
def test_fitted_units_compile_and_levels_agree(tmp_path, op):
    path = save(_act_model(op, seed=5), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 70, seed=6)
    p = amosc.compile(path, x[:40], bits=3, fitted_units=8)
    unit = next(q for q in p.populations if isinstance(q, GatePop) and q.fit)
    f = unit.fit
    assert f["structure"] == "unit" and unit.code.bits == 8 == f["bits"] and unit.shape == (4, 8, 8)
    assert f["rms_err"] <= f["segments_rms_err"]    # chosen: at least as accurate as 3-bit segments
    assert len(f["centred"]) == len(f["offset"]) == 4
    assert not unit.code.is_binary() and p.options["fitted_units"] == 8
    ev, _ = assert_levels_equal(p, x[40:])
    # the decoded unit follows the function about as well as the fit said
    pre = {}
    fg = import_model(path)
    float_eval(fg, x[40:], pre_values=pre)
    fn = next(g.fn for g in fg.gates if g.name == unit.name)   # the function as imported (GELU: up to a factor)
    assert fn.canonical() == op.lower()
    err = decode_activation(unit, ev[unit.name]) - fn(pre[unit.name])
    assert float(np.sqrt((err**2).mean())) <= 2 * f["rms_err"] + 0.01, (np.sqrt((err**2).mean()), f["rms_err"])
    if op == "SiLU":   # where the segments are more accurate (here at K = 8) they stay
        seg = amosc.compile(path, x[:40], bits=8, fitted_units=3)
        segpop = next(q for q in seg.populations if isinstance(q, GatePop) and q.fit)
        assert "structure" not in segpop.fit and segpop.code.is_binary()
    from amosc.ir.text import describe, render
    assert f"fitted AMOS unit of {f['fn']}: 8 neurons/element" in render(describe(p))
    p.save(tmp_path / "m.amos")
    again = amosc.load(tmp_path / "m.amos")
    assert again.pop(unit.name).fit == f and again.pop(unit.name).code == unit.code
    a = evaluate(again, x[40:])
    assert all(np.array_equal(a[k], ev[k]) for k in ev)
    from amosc.ir import asm
    assert asm.equal(asm.parses(asm.dumps(p)), p)


def test_a_unit_whose_worst_case_input_is_wide_warns_naming_the_layer():
    """The accumulator bounds the input unit: a worst-case input far wider than the calibrated
    range leaves few accumulator units over that range, and the compiler says so."""
    from amosc.compiler.quantize import _unit_population
    from amosc.errors import PrecisionWarning
    u = fit_unit(FNS["silu"], _sample(), 6)
    shape = (3, 2, 2)
    args = ("layer7", shape, u, np.zeros(shape), None, lambda unit: ([], 0), lambda pop, ps: None)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a modest worst case: no warning
        pop, _ = _unit_population(*args[:4], np.full(shape, 10.0), *args[5:])
    assert pop.code.bits == 6 and min(pop.code.thresholds) == 1
    with pytest.warns(PrecisionWarning, match=r"layer 'layer7': its fitted AMOS unit resolves its calibrated input range in only \d+ accumulator units"):
        coarse, _ = _unit_population(*args[:4], np.full(shape, 1e4), *args[5:])
    assert max(coarse.code.thresholds) < max(pop.code.thresholds)
