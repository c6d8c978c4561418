"""Level 1 (integer evaluation) == level 2 (spiking simulator), integer for integer;
level 3 (onnxruntime) within quantization error; AMOS spike discipline."""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import amosc
from amosc.backends.reference import simulate
from amosc.compiler.calibrate import OnnxRunner
from amosc.ir.nodes import Code
from amosc.ir.semantics import decode, evaluate, gate_code, unit_spikes
from conftest import structured_inputs, uniform_inputs
from onnx_builders import GraphBuilder, mlp, save, small_cnn


def codes_from_rasters(pop, raster):
    w = np.asarray(pop.code.weights, np.int64).reshape((1, -1) + (1,) * len(pop.shape))
    return (raster.astype(np.int64) * w).sum(1)


def assert_levels_equal(program, x):
    ev = evaluate(program, x)
    res = simulate(program, x, record=True)
    np.testing.assert_array_equal(res.output, ev[program.output])
    for pop in program.populations:
        if pop.name in res.rasters:
            np.testing.assert_array_equal(codes_from_rasters(pop, res.rasters[pop.name]), ev[pop.name],
                                          err_msg=pop.name)
            assert res.spikes[pop.name].tolist() == res.rasters[pop.name].reshape(len(x), -1).sum(1).tolist()
    assert res.extra["spurious_spikes"] == 0
    return ev, res


@given(t=st.integers(-3000, 3000), bits=st.integers(1, 10), theta=st.integers(1, 40),
       rnd=st.booleans())
def test_binary_code_closed_form_equals_unit_recurrence(t, bits, theta, rnd):
    code = Code.binary(bits, theta, theta // 2 if rnd else 0)
    y = np.array([t])
    z = unit_spikes(code, y)
    assert int((z[:, 0] * np.array(code.weights)).sum()) == int(gate_code(code, y)[0])
    assert int(gate_code(code, y)[0]) == min(max((t + (theta // 2 if rnd else 0)) // theta, 0), 2**bits - 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4), bits=st.integers(2, 8),
       seed=st.integers(0, 10_000), rounding=st.sampled_from(["round", "floor"]))
# dead channels next to live ones at K=2 with 16-bit weights: the finest steps' incoming
# weights overflowed their mantissa shifts at theta = 1 (once a RangeError)
@example(sizes=[1, 3, 3, 1], bits=2, seed=153, rounding="round")
def test_random_mlp_levels_agree(tmp_path, sizes, bits, seed, rounding):
    model = mlp((5, *sizes), seed=seed)
    path = save(model, tmp_path / "mlp.onnx")
    x = uniform_inputs((5,), 40, seed=seed, lo=-1)
    program = amosc.compile(path, x[:30], bits=bits, rounding=rounding)
    assert_levels_equal(program, x[30:])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), residual=st.booleans(),
       pool=st.sampled_from(["gap", "avg"]))
def test_random_cnn_levels_agree(tmp_path, seed, bits, residual, pool):
    path = save(small_cnn(seed=seed, residual=residual, pool=pool), tmp_path / "cnn.onnx")
    x = uniform_inputs((1, 12, 12), 24, seed=seed)
    program = amosc.compile(path, x[:16], bits=bits)
    assert_levels_equal(program, x[16:])


def test_every_unit_fires_at_most_once_per_input(tmp_path):
    path = save(small_cnn(seed=5), tmp_path / "cnn.onnx")
    x = uniform_inputs((1, 12, 12), 20)
    program = amosc.compile(path, x, bits=6)
    _, res = assert_levels_equal(program, x)
    for name, r in res.rasters.items():
        assert r.max() <= 1 and r.dtype == np.uint8, name   # (N, K, *shape): unit k, input n
    assert sum(int(r.sum()) for r in res.rasters.values()) > 0


def test_evaluate_keeps_only_the_populations_asked_for(tmp_path, monkeypatch):
    path = save(small_cnn(seed=6, residual=True), tmp_path / "cnn.onnx")
    x = uniform_inputs((1, 12, 12), 20, seed=2)
    program = amosc.compile(path, x[:12], bits=5)
    full_counts, kept_counts = {}, {}
    full = evaluate(program, x, spike_counts=full_counts)
    monkeypatch.setattr("amosc.ir.semantics.eval_chunk", lambda prog: 3)   # several pieces, as a large program's
    kept = evaluate(program, x, spike_counts=kept_counts, keep=[program.output])
    assert list(kept) == [program.output] and np.array_equal(kept[program.output], full[program.output])
    assert kept_counts.keys() == full_counts.keys()
    assert all(np.array_equal(kept_counts[k], full_counts[k]) for k in full_counts)
    assert evaluate(program, x, keep=()) == {}


def test_an_evaluated_program_is_freed_with_its_weight_caches(tmp_path):
    import gc
    import weakref
    path = save(small_cnn(seed=7, residual=True), tmp_path / "cnn.onnx")
    x = uniform_inputs((1, 12, 12), 12, seed=4)
    program = amosc.compile(path, x, bits=4)
    evaluate(program, x)                      # fills the per-projection caches (float weights, conv sessions)
    refs = [weakref.ref(pr) for pr in program.projections]
    del program
    gc.collect()
    assert refs and all(r() is None for r in refs)   # searches evaluate hundreds of programs


@pytest.mark.parametrize("interval,lanes", [(1, 1), (2, 3), (5, 2)])
def test_pipelined_stream_equals_batch(tmp_path, interval, lanes):
    path = save(small_cnn(seed=2), tmp_path / "cnn.onnx")
    x = uniform_inputs((1, 12, 12), 13)
    program = amosc.compile(path, x, bits=5)
    batch = simulate(program, x, record=True)
    stream = simulate(program, x, interval=interval, lanes=lanes, record=True)
    np.testing.assert_array_equal(stream.output, batch.output)
    for name in batch.rasters:
        np.testing.assert_array_equal(stream.rasters[name], batch.rasters[name])
    slots = -(-13 // lanes)
    assert stream.steps == (slots - 1) * interval + program.latency
    assert stream.extra["spurious_spikes"] == 0


def test_spike_times_follow_the_schedule(tmp_path):
    """Unit k of population P fires at start(P) + k; one spike = one bit of the code."""
    b = GraphBuilder((3,))
    path = save(b.model(b.gemm(b.relu(b.gemm("x", 3, 2)), 2, 2), 2), tmp_path / "m.onnx")
    x = uniform_inputs((3,), 8)
    program = amosc.compile(path, x, bits=4)
    gate = program.populations[1]
    assert (program.input_pop.start, gate.start, program.output_pop.start) == (0, 4, 8)
    assert program.latency == 9
    # pipelined with interval 1 and one lane: input n's unit k of `gate` fires at n + 4 + k
    res = simulate(program, x, interval=1, lanes=1, record=True)
    ev = evaluate(program, x)
    bits = ((ev[gate.name][:, None, :] >> (3 - np.arange(4))[None, :, None]) & 1)
    np.testing.assert_array_equal(res.rasters[gate.name], bits)


@pytest.mark.parametrize("bits,max_err,min_agree", [(8, 0.04, 0.97), (4, 0.12, 0.85)])
@pytest.mark.parametrize("seed,pool", [(4, "avg"), (4, "gap"), (11, "avg")])
def test_close_to_onnxruntime(tmp_path, bits, max_err, min_agree, seed, pool):
    """Max logit error relative to the logit range: a K-bit code has relative resolution
    2^-K per layer, and the 18-bit accumulator limits the readout weights (docs/ir.md#ranges);
    four quantized layers at K=8 stay inside 4%."""
    model = small_cnn(seed=seed, pool=pool)
    path = save(model, tmp_path / "cnn.onnx")
    x = structured_inputs((1, 12, 12), 300, seed=3)
    program = amosc.compile(path, x[:200], bits=bits)
    y = decode(program.output_pop, evaluate(program, x[200:])[program.output])
    t = program.output_pop.tensor
    ref = OnnxRunner(model, "x", False, [t]).collect(x[200:], [t])[t]
    err = np.abs(y - ref).max() / (ref.max() - ref.min())
    assert err < max_err
    assert (y.argmax(1) == ref.argmax(1)).mean() >= min_agree


def test_sixteen_bit_weights_are_a_second_projection_and_more_precise(tmp_path):
    model = small_cnn(seed=4, pool="avg")
    path = save(model, tmp_path / "cnn.onnx")
    x = structured_inputs((1, 12, 12), 200, seed=3)
    p8 = amosc.compile(path, x[:100], bits=8, weight_bits=8)
    p16 = amosc.compile(path, x[:100], bits=8, weight_bits=16)
    assert len(p16.projections) == 2 * len(p8.projections)
    assert {pr.name for pr in p16.projections} >= {pr.name + "#lo" for pr in p8.projections}
    assert_levels_equal(p16, x[100:130])
    t = p8.output_pop.tensor
    ref = OnnxRunner(model, "x", False, [t]).collect(x[100:], [t])[t]

    def err(p):
        return np.abs(decode(p.output_pop, evaluate(p, x[100:])[p.output]) - ref).mean()

    assert err(p16) < err(p8)


def test_mse_calibration_compiles_and_levels_agree(tmp_path):
    path = save(small_cnn(seed=4, pool="avg"), tmp_path / "cnn.onnx")
    x = structured_inputs((1, 12, 12), 60, seed=3)
    p = amosc.compile(path, x[:40], bits=4, calibration="mse")
    assert p.options["calibration"] == "mse"
    assert_levels_equal(p, x[40:])


def _code_mse(v, alpha, bits):
    step = alpha / (2**bits - 1)
    return float(np.mean((np.minimum(np.round(v / step), 2**bits - 1) * step - v) ** 2))


@pytest.mark.parametrize("bits", [3, 8])
def test_mse_range_on_many_samples_is_near_the_exhaustive_optimum(bits):
    from amosc.compiler.calibrate import MSE_SAMPLES, mse_range
    rng = np.random.default_rng(bits)
    v = np.concatenate([rng.exponential(1.0, 200_000), -rng.exponential(1.0, 50_000)])
    assert v[v > 0].size > 4 * MSE_SAMPLES  # the subsampled path
    pos = v[v > 0]
    got = mse_range(v, bits)
    grid = pos.max() * np.linspace(1 / 256, 1, 256)
    best = min(_code_mse(pos, a, bits) for a in grid)
    assert 0 < got < pos.max()  # clips the exponential tail
    assert _code_mse(pos, got, bits) <= 1.02 * best


def test_sixteen_bit_weights_keep_per_channel_ranges_at_k8(tmp_path):
    """With a second mantissa set, a channel with a 50x smaller range keeps its own step
    at K=8 (one 8-bit set would force the layer's range onto it)."""
    from amosc.ir.nodes import GatePop
    model = small_cnn(seed=4, pool="avg")
    path = save(model, tmp_path / "cnn.onnx")
    x = structured_inputs((1, 12, 12), 100, seed=3)
    for wbits, spread in ((16, True), (8, False)):
        p = amosc.compile(path, x, bits=8, weight_bits=wbits, calibration="max")
        g = next(q for q in p.populations if isinstance(q, GatePop))
        assert (g.scale.max() / g.scale.min() > 1.5) == spread


@pytest.mark.parametrize("groups,stride,pad,dil,k", [(1, 1, 1, 1, 3), (4, 2, 0, 1, 3), (8, 1, 2, 2, 3), (1, 3, 1, 1, 5)])
def test_conv_products_and_floored_planes_are_exact_integers(groups, stride, pad, dil, k):
    """Level 1 runs convs through onnxruntime in float32 and floors binary planes in float:
    both must equal int64 arithmetic, here with sums close to the 2^24 float32 bound."""
    from amosc.ir.nodes import Projection
    from amosc.ir.semantics import FLOAT32_EXACT, floor_shift, integer_product, plane_inputs
    rng = np.random.default_rng(groups * 7 + k)
    cin, cout, hw = 8, 8, 11
    w = rng.choice([-128, 127, -127, 126], size=(cout, cin // groups, k, k)).astype(np.int8)
    attrs = dict(strides=(stride, stride), pads=(pad,) * 4, dilations=(dil, dil), groups=groups)
    ho = (hw + 2 * pad - dil * (k - 1) - 1) // stride + 1
    exp = rng.integers(-9, 2, cout)
    proj = Projection("a->b", "a", "b", "conv", w, exp, (cin, hw, hw), (cout, ho, ho), attrs)
    vmax = (FLOAT32_EXACT - 1) // int(np.abs(w.astype(np.int64)).reshape(cout, -1).sum(1).max())
    v = rng.integers(-vmax, vmax + 1, size=(3, cin, hw, hw))
    want = np.zeros((3, cout, ho, ho), np.int64)   # the int64 sum, tap by tap
    vp = np.pad(v, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    g_in, g_out = cin // groups, cout // groups
    for o in range(cout):
        g = o // g_out
        for i in range(k):
            for j in range(k):
                patch = vp[:, g * g_in:(g + 1) * g_in, i * dil:i * dil + stride * (ho - 1) + 1:stride,
                           j * dil:j * dil + stride * (ho - 1) + 1:stride]
                want[:, o] += np.tensordot(patch, w[o, :, i, j].astype(np.int64), axes=([1], [0]))
    np.testing.assert_array_equal(integer_product(proj, v, vmax), want)
    z = (rng.uniform(size=(4, 5, cin, hw, hw)) < 0.6).astype(np.uint8)   # binary planes, weights 8..1
    got = plane_inputs(proj, [8, 4, 2, 1], z)
    for p, d in enumerate([8, 4, 2, 1]):
        s = integer_product(proj, z[p].astype(np.int64), 1)
        np.testing.assert_array_equal(got[p], floor_shift(s * d, exp.reshape(1, -1, 1, 1)))


@pytest.mark.parametrize("groups", [1, 6])
def test_global_and_broadcast_projections_take_exact_shortcuts(groups):
    """A whole-map conv repeating one weight per channel pair (GAP then FC) is evaluated as a
    spatial sum then a matrix, and a sparse broadcast (a gate repeated over a map) as a matrix
    then a repeat: the same integers as the projection applied as written."""
    import scipy.sparse as sp
    from amosc.ir.nodes import Projection
    from amosc.ir.semantics import _weights, integer_product, linear
    rng = np.random.default_rng(groups)
    c, co, hw = 6, 12, 5
    q = rng.integers(-128, 128, (co, c // groups)).astype(np.int8)
    w = np.ascontiguousarray(np.broadcast_to(q[:, :, None, None], (co, c // groups, hw, hw)))
    attrs = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=groups)
    conv = Projection("a->b", "a", "b", "conv", w, np.zeros(co, np.int64), (c, hw, hw), (co, 1, 1), attrs)
    mat = sp.kron(sp.csr_matrix(q if groups == 1 else rng.integers(-9, 9, (co, c)).astype(np.int8)),
                  np.ones((hw * hw, 1), np.int8), format="csr").astype(np.int8)
    bcast = Projection("a->c", "a", "c", "sparse", mat, np.zeros(co, np.int64), (c, 1, 1), (co, hw, hw))
    for proj, shape in ((conv, (4, c, hw, hw)), (bcast, (4, c, 1, 1))):
        assert _weights(proj).fast is not None
        v = rng.integers(0, 256, shape)
        want = linear(proj.kind, proj.weight, proj.attrs, v, proj.out_shape)   # float64, exact here
        np.testing.assert_array_equal(integer_product(proj, v, 255), want.astype(np.int64))
    w2 = w.copy()
    w2[0, 0, 1, 2] += 1                      # no longer one weight per channel pair: no shortcut
    conv2 = Projection("a->b", "a", "b", "conv", w2, np.zeros(co, np.int64), (c, hw, hw), (co, 1, 1), attrs)
    assert _weights(conv2).fast is None
