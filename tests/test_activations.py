"""Issue 5: fitted activation units, max circuits, products of activations, re-indexing ops.

Each op is checked at three levels: the importer's float graph against onnxruntime
(exact up to float rounding), level 1 == level 2 integer for integer, and the compiled
program against onnxruntime within the unit's fit error."""

import math

import numpy as np
import pytest

import amosc
from amosc.compiler.activations import ScalarFn, fit, fit_layer
from amosc.compiler.calibrate import OnnxRunner
from amosc.compiler.importer import import_model
from amosc.compiler.pipeline import import_graph
from amosc.ir.tensor import float_eval
from amosc.ir.nodes import GatePop
from amosc.ir.semantics import decode, decode_activation, evaluate
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save
from test_semantics import assert_levels_equal

FNS = [("sigmoid", (), -8, 8), ("tanh", (), -3, 3), ("silu", (), -6, 8), ("gelu", (), -4, 5),
       ("softplus", (), -5, 5), ("elu", (1.0,), -4, 4), ("hardswish", (), -5, 5),
       ("square", (), -2, 3), ("erf", (), -3, 3)]


@pytest.mark.parametrize("name,params,lo,hi", FNS)
@pytest.mark.parametrize("bits", [4, 8])
def test_fit_error_is_within_the_chord_tolerance_plus_rounding(name, params, lo, hi, bits):
    fn = ScalarFn(name, params)
    f = fit(fn, lo, hi, bits)
    x = np.linspace(lo, hi, 20011)       # another grid than the fit's
    err = np.abs(f.evaluate(x) - fn(x))
    # chords within 0.1 step (the default tolerance), rounding within half a K-bit step
    assert err.max() <= 0.65 * f.step, (err.max(), f.step)
    assert abs(f.max_err - err.max()) <= 0.1 * f.step
    assert f.neurons == f.segments * f.bits and f.bits <= bits
    # exact at the ends of every segment up to rounding; continuous chords
    assert f.breaks[0] == pytest.approx(lo) and f.breaks[-1] == pytest.approx(hi)


def test_fit_is_deterministic_and_cached():
    a = fit(ScalarFn("sigmoid"), -7.9, 8.1, 6)
    b = fit(ScalarFn("sigmoid"), -7.9, 8.1, 6)
    assert a is b
    c = fit(ScalarFn("sigmoid"), -7.9, 8.1, 7)
    assert c.step < a.step


@pytest.mark.parametrize("name,lo,hi", [("silu", -6, 8), ("gelu", -4, 5), ("sigmoid", -8, 8)])
def test_chord_tolerance_trades_neurons_and_depth_for_error(name, lo, hi):
    fn = ScalarFn(name)
    tight, loose = fit(fn, lo, hi, 6, tolerance=0.1), fit(fn, lo, hi, 6, tolerance=0.5)
    assert tight.max_err < loose.max_err <= 1.05 * loose.step
    assert tight.neurons > loose.neurons and tight.bits <= loose.bits
    from amosc.errors import ModelError
    with pytest.raises(ModelError, match="tolerance"):
        fit(fn, lo, hi, 6, tolerance=0)


def test_more_bits_cost_more_neurons_and_less_error():
    fs = [fit(ScalarFn("gelu"), -4, 6, k) for k in (4, 6, 8)]
    assert [f.max_err for f in fs] == sorted([f.max_err for f in fs], reverse=True)
    assert [f.neurons for f in fs] == sorted(f.neurons for f in fs)


def test_layer_fit_gives_each_channel_its_own_range_with_one_shape():
    fn = ScalarFn("silu")
    los, his = [-8.0, -1.0, -3.0], [6.0, 0.5, 20.0]
    lf = fit_layer(fn, los, his, 8)
    assert lf.breaks.shape == (3, lf.segments + 1) and lf.slopes.shape == (3, lf.segments)
    for f, lo, hi in zip(lf.fits, los, his):
        assert f.bits == lf.bits and f.segments == lf.segments
        assert f.breaks[0] == pytest.approx(lo, abs=1e-2) and f.breaks[-1] == pytest.approx(hi, abs=1e-2)
        x = np.linspace(lo, hi, 9973)
        err = np.abs(f.evaluate(x) - fn(x))
        assert err.max() <= 0.65 * f.step  # split (padded) channels keep their bound
        # the narrow channel is far more precise than one layer-wide fit would be
    wide = fit(fn, min(los), max(his), 8)
    x = np.linspace(-1.0, 0.5, 999)
    assert np.abs(lf.fits[1].evaluate(x) - fn(x)).max() < 0.2 * np.abs(wide.evaluate(x) - fn(x)).max()
    d = lf.as_dict()
    assert d["channels"] == 3 and len(d["ranges"]) == 3 and d["max_err"] == max(f.max_err for f in lf.fits)


def _act_model(op, seed=0, **attrs):
    """(1, 8, 8) -> conv 4 -> op -> conv 4 -> relu -> GAP -> gemm 3."""
    b = GraphBuilder((1, 8, 8), seed, opset={"HardSwish": 14, "Gelu": 20}.get(op, 13))
    h = b.bn(b.conv("x", 1, 4), 4)
    if op == "PRelu":
        h = b.node("PRelu", [h, b.init(np.array([[[0.1]], [[0.3]], [[-0.2]], [[0.05]]], np.float32))])
    elif op == "Clip":
        lo = "" if attrs["lo"] is None else b.init(np.array(attrs["lo"], np.float32))
        h = b.node("Clip", [h, lo, b.init(np.array(attrs["hi"], np.float32))])
    elif op == "SiLU":
        h = b.node("Mul", [h, b.node("Sigmoid", [h])])
    elif op == "GELU":  # torch's exact-GELU export
        e = b.node("Erf", [b.node("Div", [h, b.init(np.array(math.sqrt(2), np.float32))])])
        h = b.node("Mul", [b.node("Mul", [h, b.node("Add", [e, b.init(np.array(1.0, np.float32))])]),
                           b.init(np.array(0.5, np.float32))])
    elif op == "HardSwishPattern":  # x * hardsigmoid(x): a product of two activations
        h = b.node("Mul", [h, b.node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])
    else:
        h = b.node(op, [h], **attrs)
    h = b.relu(b.conv(h, 4, 4))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    return b.model(b.gemm(h, 4, 3), 3)


OPS = [("Sigmoid", {}), ("Tanh", {}), ("Softplus", {}), ("Elu", {"alpha": 0.7}), ("HardSwish", {}),
       ("HardSigmoid", {}), ("LeakyRelu", {"alpha": 0.1}), ("PRelu", {}), ("Clip", {"lo": -0.5, "hi": 1.5}),
       ("Clip", {"lo": None, "hi": 0.8}), ("SiLU", {}), ("GELU", {}), ("Erf", {}),
       ("HardSwishPattern", {}), ("Selu", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"})]


def _ort(path, x):
    import onnx
    m = onnx.load(str(path))
    return OnnxRunner(m, "x", False).collect(x, [m.graph.output[0].name])[m.graph.output[0].name]


@pytest.mark.parametrize("op,attrs", OPS, ids=[f"{o}{i}" for i, (o, _) in enumerate(OPS)])
def test_activation_op_compiles_and_levels_agree(tmp_path, op, attrs):
    path = save(_act_model(op, **attrs), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 60, seed=3)
    ref = _ort(path, x)
    fg = import_model(path)
    np.testing.assert_allclose(float_eval(fg, x)["output"], ref, rtol=1e-4, atol=1e-4)
    program = amosc.compile(path, x[:40], bits=8)
    assert_levels_equal(program, x[40:])
    logits = program.run(x).logits
    span = ref.max() - ref.min()
    assert np.abs(logits - ref).max() <= 0.08 * span, (np.abs(logits - ref).max(), span)


def test_fused_patterns_are_one_unit(tmp_path):
    for op, label in (("SiLU", "silu"), ("GELU", "gelu")):
        fg = import_graph(save(_act_model(op), tmp_path / f"{op}.onnx"))
        acts = [g.activation for g in fg.gates]
        assert acts == [label, "relu"], acts      # the Sigmoid / Erf gate was fused away


def test_fitted_gate_inspect_reports_fit(tmp_path):
    path = save(_act_model("Sigmoid"), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 30, seed=1)
    program = amosc.compile(path, x, bits=6)
    pop = next(p for p in program.populations if isinstance(p, GatePop) and p.fit)
    f = pop.fit
    assert pop.shape[0] == 4 * f["segments"] and pop.code.bits == f["bits"] <= 6
    from amosc.ir.text import describe, render
    text = render(describe(program))
    assert "fitted sigmoid on [" in text and f"{f['segments']} segments x {f['bits']} bits" in text
    assert len(f["centred"]) == 4           # the mean-error correction is recorded and reported
    worst = max(abs(c) / s for c, s in zip(f["centred"], f["steps"]))
    assert f"centred: each channel's mean error on the calibration sample taken out of its offset (at most {worst:.3g} steps)" in text
    # the decoded activation follows the sigmoid within the reported error plus input quantization
    vals = evaluate(program, x)
    pre = {}
    float_eval(import_model(path), x, pre_values=pre)
    sig = 1 / (1 + np.exp(-pre[pop.name]))
    lo, hi = (np.asarray(v).reshape(1, -1, 1, 1) for v in zip(*f["ranges"]))
    assert lo.shape[1] == f["channels"] == 4
    inside = (pre[pop.name] >= lo) & (pre[pop.name] <= hi)
    err = np.abs(decode_activation(pop, vals[pop.name]) - sig)
    steps = np.broadcast_to(np.asarray(f["steps"]).reshape(1, -1, 1, 1), err.shape)
    assert np.all(err[inside] <= f["max_err"] + 0.5 * steps[inside] + 0.02)


def test_saved_fitted_program_round_trips(tmp_path):
    path = save(_act_model("Tanh"), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 30, seed=2)
    program = amosc.compile(path, x, bits=5)
    program.save(tmp_path / "m.amos")
    again = amosc.load(tmp_path / "m.amos")
    a, b = evaluate(program, x), evaluate(again, x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [p.fit for p in again.populations if isinstance(p, GatePop)] == \
        [p.fit for p in program.populations if isinstance(p, GatePop)]


def _pool_model(kernel=2, stride=2, pad=0, before_relu=False):
    b = GraphBuilder((2, 9, 9), 5)
    h = b.bn(b.conv("x", 2, 3), 3)
    if not before_relu:
        h = b.relu(h)
    h = b.node("MaxPool", [h], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
    if before_relu:
        h = b.relu(h)
    ho = (9 + 2 * pad - kernel) // stride + 1
    h = b.node("Flatten", [h], axis=1)
    return b.model(b.gemm(h, 3 * ho * ho, 4), 4)


@pytest.mark.parametrize("kernel,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_maxpool_units_are_exact_on_relu_codes(tmp_path, kernel, stride, pad):
    path = save(_pool_model(kernel, stride, pad), tmp_path / "m.onnx")
    x = structured_inputs((2, 9, 9), 50, seed=7)
    np.testing.assert_allclose(float_eval(import_model(path), x)["output"], _ort(path, x), rtol=1e-4, atol=1e-4)
    program = amosc.compile(path, x[:30], bits=6)
    ev, _ = assert_levels_equal(program, x[30:])
    src = next(p for p in program.populations if isinstance(p, GatePop) and p.activation == "relu")
    maxes = [p for p in program.populations if isinstance(p, GatePop) and p.activation == "max"]
    assert maxes and all(np.array_equal(m.scale, src.scale) for m in maxes)
    # first max unit: relu(window[0,0] - window[0,1]) on the source's codes, integer for integer
    c = np.pad(ev[src.name], ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (9 + 2 * pad - kernel) // stride + 1
    a = c[:, :, 0:stride * ho:stride, 0:stride * ho:stride][:, :, :ho, :ho]
    b_ = c[:, :, 0:stride * ho:stride, 1:1 + stride * ho:stride][:, :, :ho, :ho]
    np.testing.assert_array_equal(ev[maxes[0].name], np.maximum(a - b_, 0))


@pytest.mark.parametrize("kernel,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_lateral_inhibition_pooling_emits_the_code_of_the_max(tmp_path, kernel, stride, pad):
    """--maxpool lipool: one max-join unit per output; its code is the max of the window's
    source codes, integer for integer, one layer deep instead of the tree's log2(window)."""
    from numpy.lib.stride_tricks import sliding_window_view
    path = save(_pool_model(kernel, stride, pad), tmp_path / "m.onnx")
    x = structured_inputs((2, 9, 9), 50, seed=7)
    program = amosc.compile(path, x[:30], bits=6, maxpool="lipool")
    tree = amosc.compile(path, x[:30], bits=6)
    ev, _ = assert_levels_equal(program, x[30:])
    src = next(p for p in program.populations if isinstance(p, GatePop) and p.activation == "relu")
    (pool,) = [p for p in program.populations if isinstance(p, GatePop) and p.activation == "lipool"]
    assert pool.compartments == kernel * kernel and np.array_equal(pool.scale, src.scale)
    assert not any(p.activation == "max" for p in program.populations if isinstance(p, GatePop))
    c = np.pad(ev[src.name], ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(c, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    np.testing.assert_array_equal(ev[pool.name], windows.max(axis=(-1, -2)))
    assert program.latency < tree.latency
    # both circuits compute the same max: the float outputs agree up to weight rounding
    a, b = (decode(q.output_pop, evaluate(q, x[30:])[q.output]) for q in (program, tree))
    np.testing.assert_allclose(a, b, atol=0.02 * np.abs(b).max())
    # the compartment count survives the .amos file
    program.save(tmp_path / "m.amos")
    again = amosc.load(tmp_path / "m.amos")
    assert [p.compartments for p in again.populations if isinstance(p, GatePop)] == \
        [p.compartments for p in program.populations if isinstance(p, GatePop)]
    np.testing.assert_array_equal(evaluate(again, x[30:])["output"], ev["output"])


def _pool_then(act_op, pad=0, **attrs):
    """Conv -> BN -> MaxPool 3x3/2 -> act_op: the pool reads a pre-activation."""
    b = GraphBuilder((2, 9, 9), 5)
    h = b.node("MaxPool", [b.bn(b.conv("x", 2, 3), 3)], kernel_shape=[3, 3], strides=[2, 2], pads=[pad] * 4)
    h = b.node(act_op, [h], **attrs)
    ho = (9 + 2 * pad - 3) // 2 + 1
    return b.model(b.gemm(b.node("Flatten", [h], axis=1), 3 * ho * ho, 4), 4)


def test_lateral_inhibition_pool_of_a_pre_activation_becomes_its_relu_gate(tmp_path):
    """Conv -> MaxPool -> Relu with --maxpool lipool: relu(max_i y_i) = max_i relu(y_i), so the
    ReLU gate itself joins the window's compartments, at the pooled size, one layer deep."""
    path = save(_pool_then("Relu"), tmp_path / "m.onnx")
    x = structured_inputs((2, 9, 9), 80, seed=7)
    fg = import_model(path, maxpool="lipool")
    np.testing.assert_allclose(float_eval(fg, x)["output"], _ort(path, x), rtol=1e-4, atol=1e-4)
    program = amosc.compile(path, x[:40], bits=6, maxpool="lipool")
    tree = amosc.compile(path, x[:40], bits=6)
    assert_levels_equal(program, x[40:])
    gates = [p for p in program.populations if isinstance(p, GatePop)]
    assert [(g.activation, g.compartments, g.shape) for g in gates] == [("relu", 9, (3, 4, 4))]
    assert program.latency < tree.latency
    out = decode(program.output_pop, evaluate(program, x[40:])[program.output])
    ref = _ort(path, x[40:])
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("act_op,pad,needle", [("Sigmoid", 0, "must feed Relu"), ("Relu", 1, "padded")])
def test_lateral_inhibition_pool_of_a_pre_activation_needs_an_unpadded_relu(tmp_path, act_op, pad, needle):
    from amosc.errors import ModelError
    path = save(_pool_then(act_op, pad), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=rf"MaxPool|{act_op}"):
        import_model(path, maxpool="lipool")
    with pytest.raises(ModelError, match=needle):
        import_model(path, maxpool="lipool")
    if not pad:
        import_model(path)  # the tree takes it (padded, neither circuit can: padding reads 0)


def test_lateral_inhibition_pooling_of_a_fitted_activation_is_a_clear_error(tmp_path):
    from amosc.errors import ModelError
    b = GraphBuilder((2, 9, 9), 5)
    h = b.node("MaxPool", [b.node("Sigmoid", [b.conv("x", 2, 3)])], kernel_shape=[2, 2], strides=[2, 2])
    path = save(b.model(b.gemm(b.node("Flatten", [h], axis=1), 48, 4), 4), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"MaxPool.*lipool.*fitted.*--maxpool tree"):
        import_model(path, maxpool="lipool")


def test_maxpool_before_relu_is_supported_without_padding(tmp_path):
    path = save(_pool_model(before_relu=True), tmp_path / "m.onnx")
    x = structured_inputs((2, 9, 9), 40, seed=8)
    program = amosc.compile(path, x[:30], bits=6)
    assert_levels_equal(program, x[30:])


def test_padded_maxpool_on_signed_input_is_a_clear_error(tmp_path):
    from amosc.errors import ModelError
    path = save(_pool_model(3, 2, 1, before_relu=True), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"MaxPool.*non-negative"):
        import_model(path)


def test_squeeze_excitation_product_of_activations(tmp_path):
    from onnx_builders import se_cnn
    path = save(se_cnn(), tmp_path / "se.onnx")
    x = structured_inputs((1, 8, 8), 60, seed=4)
    ref = _ort(path, x)
    fg = import_model(path)
    np.testing.assert_allclose(float_eval(fg, x)["output"], ref, rtol=1e-4, atol=1e-4)
    assert [g.activation for g in fg.gates].count("square") == 2
    program = amosc.compile(path, x[:40], bits=8)
    assert_levels_equal(program, x[40:])
    assert np.abs(program.run(x).logits - ref).max() <= 0.08 * (ref.max() - ref.min())


@pytest.mark.parametrize("mode,nearest", [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                                          ("align_corners", "round_prefer_ceil")])
def test_resize_nearest_and_concat(tmp_path, mode, nearest):
    b = GraphBuilder((1, 6, 6), 2)
    h = b.relu(b.conv("x", 1, 2))
    up = b.node("Resize", [h, "", b.init(np.array([1, 1, 2, 1.5], np.float32))], mode="nearest",
                coordinate_transformation_mode=mode, nearest_mode=nearest)
    h = b.node("Flatten", [up], axis=1)
    path = save(b.model(b.gemm(h, 2 * 12 * 9, 3), 3), tmp_path / "r.onnx")
    x = structured_inputs((1, 6, 6), 40, seed=5)
    np.testing.assert_allclose(float_eval(import_model(path), x)["output"], _ort(path, x), rtol=1e-4, atol=1e-4)
    program = amosc.compile(path, x[:30], bits=6)
    assert_levels_equal(program, x[30:])


def test_balanced_square_pair_keeps_the_product_and_shrinks_its_error(tmp_path):
    from amosc.compiler.expand import expand_fitted
    from amosc.compiler.pipeline import balance_pair, calibrate
    from amosc.compiler.quantize import Options
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 20, (50, 3, 4)), rng.uniform(0, 0.5, (50, 3, 4))
    a, u, v = balance_pair((x + y) / 2, (x - y) / 2)
    np.testing.assert_allclose(u**2 - v**2, x * y, rtol=1e-9)
    np.testing.assert_allclose(a, np.sqrt(y.max(axis=(0, 2)) / x.max(axis=(0, 2))))
    # on a squeeze-excitation block (a ReLU map times 10 times a sigmoid gate), the
    # balanced pair's chord fits carry less product error than the unbalanced pair's
    b = GraphBuilder((1, 8, 8), 11)
    h = b.relu(b.bn(b.conv("x", 1, 4), 4))
    s = b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [h]), 4, 4, k=1, pad=0)])
    h = b.node("Mul", [b.node("Mul", [h, b.init(np.array(10.0, np.float32))]), s])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    path = save(b.model(b.gemm(h, 4, 3), 3), tmp_path / "se.onnx")
    xs = structured_inputs((1, 8, 8), 60, seed=4)
    ref = _ort(path, xs)
    errs = []
    for balanced in (False, True):
        fg = import_model(path)
        opts = Options(bits=4, calibration="max")
        _, ranges, balance, _ = calibrate(fg, xs, opts)
        assert len(balance) == 1
        # float_eval does not round: the units without their rounding-aware mean correction
        ranges = {k: (r.lo, r.hi) for k, r in ranges.items()}
        if not balanced:  # the plain pair's own ranges
            fg0 = import_model(path)
            pre = {}
            float_eval(fg0, xs, pre_values=pre)
            for g in fg0.gates:
                if g.activation == "square":
                    p = np.moveaxis(pre[g.name], 1, 0).reshape(g.shape[0], -1)
                    ranges[g.name] = (p.min(1), p.max(1))
        out = float_eval(expand_fitted(fg, ranges, opts.bits, balance if balanced else None), xs)
        errs.append(np.abs(out["output"] - ref).mean())
    assert errs[1] < 0.8 * errs[0], errs


def test_mse_input_range_of_a_fitted_unit_beats_the_full_range_at_small_k():
    from amosc.compiler.calibrate import mse_fn_range
    fn = ScalarFn("silu")
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0, 1.5, 50_000), rng.uniform(8, 20, 20)])  # rare outliers

    def unit_mse(lo, hi, bits):  # the fitted unit itself, saturating outside [lo, hi]
        f = fit(fn, lo, hi, bits)
        return float(np.mean((f.evaluate(np.clip(v, lo, hi)) - fn(v)) ** 2))

    lo4, hi4 = mse_fn_range(fn, v, 4)
    assert v.min() <= lo4 < hi4 < v.max()        # the outliers are clipped at K=4
    # 0.73x measured with the default 0.1-step chords (0.45x with 0.5-step chords, whose
    # full-range unit also carries the larger chord error)
    assert unit_mse(lo4, hi4, 4) < 0.8 * unit_mse(v.min(), v.max(), 4)
    lo8, hi8 = mse_fn_range(fn, v, 8)
    assert hi8 > hi4                             # a finer grid affords a wider range
    assert mse_fn_range(fn, v, 4) == (lo4, hi4)  # deterministic


def test_fit_on_a_non_finite_range_names_the_function():
    from amosc.errors import ModelError
    with pytest.raises(ModelError, match=r"cannot fit silu on a non-finite range"):
        fit_layer(ScalarFn("silu"), [-1.0, float("nan")], [1.0, 2.0], 4)


def test_lateral_inhibition_pool_of_a_padded_conv_of_a_shifted_input_is_a_clear_error(tmp_path):
    """The input's zero point through a padded conv reaches a window's taps differently at
    the borders; a max-join unit has one bias after the max, so the compile says so."""
    from amosc.errors import RangeError
    path = save(_pool_then("Relu"), tmp_path / "m.onnx")
    x = structured_inputs((2, 9, 9), 40, seed=7) - 0.5    # zero point -0.5
    with pytest.raises(RangeError, match=r"constant inputs.*--maxpool tree"):
        amosc.compile(path, x, bits=6, maxpool="lipool")
    amosc.compile(path, x, bits=6)


@pytest.mark.parametrize("hw,kernel,stride,pad", [(10, 3, 2, 0), (12, 3, 2, 1), (9, 2, 2, 1), (11, 3, 3, 1)])
@pytest.mark.parametrize("maxpool", ["tree", "lipool"])
def test_ceil_mode_maxpool_matches_onnxruntime(tmp_path, hw, kernel, stride, pad, maxpool):
    """ceil_mode=1 (as Caffe-converted and some PyTorch models have): the extra windows read
    zero padding, max-neutral on ReLU codes, and a window that would start in the end padding
    is dropped, as onnxruntime does. A global average after the pool makes any wrong window
    count change the output (the last two cases are the dropped-window rule)."""
    b = GraphBuilder((2, hw, hw), 5)
    h = b.node("MaxPool", [b.relu(b.conv("x", 2, 3))], kernel_shape=[kernel, kernel],
               strides=[stride, stride], pads=[pad] * 4, ceil_mode=1)
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    path = save(b.model(b.gemm(h, 3, 4), 4), tmp_path / "m.onnx")
    x = structured_inputs((2, hw, hw), 50, seed=7)
    fg = import_model(path, maxpool=maxpool)
    np.testing.assert_allclose(float_eval(fg, x)["output"], _ort(path, x), rtol=1e-4, atol=1e-4)
    program = amosc.compile(path, x[:30], bits=6, maxpool=maxpool)
    assert_levels_equal(program, x[30:])


@pytest.mark.parametrize("hw,kernel,stride,pad", [(10, 3, 2, 0), (12, 3, 2, 1), (9, 2, 2, 1), (11, 3, 3, 1),
                                                  (8, 3, 1, 1)])
@pytest.mark.parametrize("ceil", [0, 1])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_modes_match_onnxruntime(tmp_path, hw, kernel, stride, pad, ceil, include_pad):
    """AveragePool with pads, count_include_pad and ceil_mode: the divisor counts the window's
    elements inside the input (plus its pads with count_include_pad=1), never the ceil overhang."""
    b = GraphBuilder((2, hw, hw), 5)
    h = b.node("AveragePool", [b.conv("x", 2, 3)], kernel_shape=[kernel, kernel], strides=[stride, stride],
               pads=[pad] * 4, ceil_mode=ceil, count_include_pad=include_pad)
    h = b.node("Flatten", [b.node("GlobalAveragePool", [b.relu(h)])], axis=1)
    path = save(b.model(b.gemm(h, 3, 4), 4), tmp_path / "m.onnx")
    x = structured_inputs((2, hw, hw), 20, seed=7)
    np.testing.assert_allclose(float_eval(import_model(path), x)["output"], _ort(path, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,lo,hi", [("silu", -6, 8), ("square", -2, 3), ("sigmoid", -8, 8)])
def test_knot_values_are_unbiased_and_closer_than_chords(name, lo, hi):
    from amosc.compiler.activations import GRID, knot_values
    fn = ScalarFn(name)
    x = np.linspace(lo, hi, GRID)
    f = fn(x)
    idx = np.linspace(0, GRID - 1, 6).round().astype(int)           # 5 segments
    ls = np.interp(x, x[idx], knot_values(f, idx)) - f
    chord = np.interp(x, x[idx], fn(x[idx])) - f
    # least squares: the residual is orthogonal to the constant function (a hat basis sums
    # to one), so its mean is zero; the chords of a convex / curved f err to one side
    assert abs(ls.mean()) < 1e-9 * (1 + np.abs(f).max())
    assert (ls ** 2).sum() < (chord ** 2).sum()
    assert np.abs(ls).max() < np.abs(chord).max()
    if name == "square":       # convex: every chord lies above
        assert chord.min() >= -1e-12 and chord.mean() > 0


@pytest.mark.parametrize("name,params,slope", [("silu", (), 1.0), ("gelu", (), 1.0), ("softplus", (), 1.0),
                                               ("elu", (0.7,), 1.0), ("hardswish", (), 1.0),
                                               ("sigmoid", (), None), ("tanh", (), None), ("square", (), None),
                                               ("identity", (), None)])
def test_relu_slope_finds_relu_like_functions(name, params, slope):
    s = ScalarFn(name, params).relu_slope()
    assert s == (None if slope is None else pytest.approx(slope, abs=1e-6))
    gated = ScalarFn("gated", (2.0, 0.0, 0.0, 0.5, 1.0, 0.0), ScalarFn("sigmoid"))   # x * sigmoid(x)
    assert gated.relu_slope() == pytest.approx(1.0)


def test_relu_split_builds_a_relu_gate_and_a_smaller_residual(tmp_path):
    path = save(_act_model("SiLU", seed=6), tmp_path / "m.onnx")
    x = structured_inputs((1, 8, 8), 80, seed=4)
    split = amosc.compile(path, x[:40], bits=8, relu_split=True)
    plain = amosc.compile(path, x[:40], bits=8)
    unit = next(p for p in split.populations if isinstance(p, GatePop) and p.fit)
    relu = split.pop(unit.fit["relu"]["population"])
    assert relu.activation == "relu" and relu.code.bits == 8 and relu.shape == (4, 8, 8)
    slopes = np.asarray(unit.fit["relu"]["slope"])
    assert unit.fit["fn"].startswith("minus_relu[") and set(slopes) <= {0.0, 1.0} and slopes.max() == 1.0
    whole = next(p for p in plain.populations if isinstance(p, GatePop) and p.fit)
    assert "relu" not in whole.fit and not any(p.name.endswith("_relu") for p in plain.populations)
    from amosc.compiler.cost import static_cost
    assert static_cost(split).neurons < static_cost(plain).neurons
    assert unit.fit["neurons_per_element"] + 8 < whole.fit["neurons_per_element"]
    ev, _ = assert_levels_equal(split, x[40:])
    # the decoded unit (ReLU part + residual segments) follows SiLU like the plain unit does
    pre = {}
    float_eval(import_model(path), x[40:], pre_values=pre)
    silu = pre[unit.name] / (1 + np.exp(-pre[unit.name]))
    lo, hi = (np.asarray(v).reshape(1, -1, 1, 1) for v in zip(*unit.fit["ranges"]))
    inside = (pre[unit.name] >= lo) & (pre[unit.name] <= hi)
    steps = np.broadcast_to(np.asarray(unit.fit["steps"]).reshape(1, -1, 1, 1), silu.shape)
    err = np.abs(decode_activation(unit, ev[unit.name], split, ev) - silu)
    assert np.all(err[inside] <= 1.2 * steps[inside] + 0.02), (err[inside] / steps[inside]).max()
    from amosc.ir.text import describe, render
    assert f"ReLU split: the unit is these segments of f - s relu plus s x {relu.name}" in render(describe(split))
    with pytest.raises(Exception, match="ReLU split needs the codes"):
        decode_activation(unit, ev[unit.name])
    # the split and its ReLU part survive a save / load
    split.save(tmp_path / "m.amos")
    again = amosc.load(tmp_path / "m.amos")
    assert again.pop(unit.name).fit == unit.fit
    a = evaluate(again, x[40:])
    assert all(np.array_equal(a[k], ev[k]) for k in ev)
    from amosc.ir import asm
    assert asm.equal(asm.parses(asm.dumps(split)), split)     # and the IR text form


@pytest.mark.parametrize("op,split", [("SiLU", False), ("SiLU", True), ("GELU", False), ("GELU", True)])
def test_fitted_unit_is_centred_on_its_calibration_sample(tmp_path, op, split):
    """A fitted unit's error is a fixed function of its input (chords, rounding, saturation
    outside [lo, hi]); over the values a channel takes, its mean is not zero, and the next
    layer sums it into a bias. With a sample of each channel's input (FitRange.sample) the
    unit's offset is set so that its mean error on the sample is zero, the ReLU split's ADC
    part included; the correction is recorded in the fit (and so in the program)."""
    from amosc.compiler.calibrate import FitRange
    from amosc.compiler.expand import expand_fitted
    path = save(_act_model(op, seed=3), tmp_path / "m.onnx")
    fg = import_graph(path)
    gate = next(g for g in fg.gates if g.fn is not None)
    rng = np.random.default_rng(0)
    lo, hi = np.array([-1.0, -0.5, -2.0, -0.8]), np.array([3.0, 5.0, 2.5, 6.0])
    sample = rng.normal(0.4, 1.3, (4, 3000))        # a quarter or more below lo: saturated
    k, rounding = 4, "round"

    def unit(r):
        g = expand_fitted(fg, {gate.name: r}, k, tolerance=0.5, split=split, rounding=rounding)
        return next(gt.fit for gt in g.gates if gt.fit is not None), g

    (centred, graph), (plain, _) = unit(FitRange(lo, hi, sample)), unit((lo, hi))
    assert plain.centred is None and (centred.relu is not None) == split
    shift = np.asarray(centred.centred)
    np.testing.assert_allclose(centred.offsets, plain.offsets - shift, rtol=0, atol=1e-12)

    def mean_error(f):   # the unit's value on the sample (the K-bit ReLU ADC of a split too)
        v = np.stack([fc.evaluate(row, rounding) for fc, row in zip(f.fits, sample)])
        if f.relu is not None:
            relu = next(g for g in graph.gates if g.name == f.relu[0])
            step = np.asarray(relu.fixed_alpha)[:, None] / (2**k - 1)
            x0 = _kinks(relu, gate)
            v += np.asarray(f.relu[1])[:, None] * np.clip(np.floor(np.maximum(sample - x0, 0) / step + 0.5),
                                                          0, 2**k - 1) * step
        return (v - gate.fn(sample)).mean(1) / np.array([fc.step for fc in f.fits])

    assert np.abs(mean_error(plain)).max() > 0.1          # there was a mean error to take out
    np.testing.assert_allclose(mean_error(centred), 0.0, atol=1e-9)


def _kinks(relu_gate, gate):
    """Per-channel kink x0 (C, 1) of a ReLU split: the ReLU gate's expression is the
    gate's input minus x0 (its constant term per channel)."""
    return (np.asarray(gate.expr.bias, np.float64) - np.asarray(relu_gate.expr.bias, np.float64)
            ).reshape(gate.shape[0], -1)[:, :1]
