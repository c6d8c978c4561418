"""NIR export (docs/nir.md): the written graph, read back with ``nir.read`` and stepped by a
small discrete-time NIR interpreter (forward Euler at dt = 1, written here, numpy only), fires
spike for spike like the reference simulator and reads the same readout integers."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view

import amosc
from amosc.backends.reference import simulate
from amosc.cli import main
from amosc.ir.nodes import GatePop
from conftest import EXAMPLE, structured_inputs
from onnx_builders import GraphBuilder, mlp, save, small_cnn

# nir is the optional extra amosc[nir]; scripts/setup.sh installs it, so CI runs these tests
nir = pytest.importorskip("nir", reason="the optional 'nir' package is not installed "
                                        "(pip install -e '.[nir]' or bash scripts/setup.sh)")
from amosc.backends.nir_export import export_nir, to_nir, write_nir  # noqa: E402


# ---------------------------------------------------------------------------------------------
# A discrete-time NIR interpreter: every node once per step in topological order, a node's
# input the sum of its incoming edges, forward Euler with dt = 1, batch axis first.
# ---------------------------------------------------------------------------------------------

def _conv2d(x, w, stride, padding, dilation, groups):
    """PyTorch/NIR Conv2d (cross-correlation, symmetric zero padding) of x (N, C, H, W)."""
    (sh, sw), (ph, pw), (dh, dw) = (tuple(int(v) for v in np.broadcast_to(a, 2)) for a in (stride, padding, dilation))
    groups = int(groups)
    n, c = x.shape[:2]
    co, cig, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    ho, wo = win.shape[2:4]
    win = win.reshape(n, groups, cig, ho, wo, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, w.reshape(groups, co // groups, cig, kh, kw), optimize=True)
    return out.reshape(n, co, ho, wo)


class Interpreter:
    """Steps a NIR graph (the node kinds amosc writes, and IF) on a batch of N inputs."""

    def __init__(self, graph):
        self.g = graph
        self.preds = {k: [] for k in graph.nodes}
        succ = {k: [] for k in graph.nodes}
        for a, b in graph.edges:
            self.preds[b].append(a)
            succ[a].append(b)
        indeg = {k: len(v) for k, v in self.preds.items()}
        ready = sorted(k for k, d in indeg.items() if d == 0)
        self.order = []
        while ready:
            k = ready.pop()
            self.order.append(k)
            for s in succ[k]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        assert len(self.order) == len(graph.nodes), "the graph has a cycle without a delay"

    def run(self, feeds: dict, steps: int, record=()):
        """feeds: {input node: (steps, N, *shape)}; returns {node: (steps, N, *shape)} for
        every node in ``record`` (and every Output node)."""
        nodes = self.g.nodes
        n = next(iter(feeds.values())).shape[1]
        state = {}
        hist = {k: [] for k, v in nodes.items() if isinstance(v, nir.Delay)}
        rec = {k: [] for k in set(record) | {k for k, v in nodes.items() if isinstance(v, nir.Output)}}
        for t in range(steps):
            out = {}
            for name in self.order:
                node = nodes[name]
                parts = [out[p] for p in self.preds[name] if out[p] is not None]
                x = sum(parts[1:], parts[0]) if parts else None
                out[name] = self._step(name, node, x, t, n, feeds, state, hist)
            for k in rec:
                o = out[k]
                shape = np.asarray(nodes[k].output_type["output"]).astype(int)
                rec[k].append(np.zeros((n, *shape)) if o is None else np.broadcast_to(o, (n, *shape)))
        return {k: np.stack(v) for k, v in rec.items()}

    @staticmethod
    def _step(name, node, x, t, n, feeds, state, hist):
        if isinstance(node, nir.Input):
            return feeds[name][t].astype(np.float64)
        if isinstance(node, nir.Output):
            return x
        if isinstance(node, nir.Delay):
            hist[name].append(x)
            taus = np.unique(node.delay)
            assert len(taus) == 1, "uniform delays only"
            tau = int(taus[0])
            return hist[name][t - tau] if t >= tau else None
        if isinstance(node, (nir.LIF, nir.IF, nir.LI)):
            shape = node.r.shape
            v = state.get(name, np.zeros((n, *shape)))
            i = 0.0 if x is None else x
            if isinstance(node, nir.IF):
                v = v + node.r * i
            else:  # tau dv/dt = (v_leak - v) + r I, one Euler step of dt = 1
                v = v + (node.v_leak - v + node.r * i) / node.tau
            if isinstance(node, nir.LI):
                state[name] = v
                return v
            z = v > node.v_threshold
            state[name] = np.where(z, node.v_reset, v)
            return z.astype(np.float64) if z.any() else None
        if x is None:  # the rest are maps without a constant term (asserted below)
            if isinstance(node, (nir.Affine, nir.Conv2d)):
                assert not np.any(node.bias)
            if isinstance(node, nir.Threshold):
                assert np.all(node.threshold >= 0)
            return None
        if isinstance(node, nir.Scale):
            return x * node.scale
        if isinstance(node, nir.Threshold):
            z = x > node.threshold
            return z.astype(np.float64) if z.any() else None
        if isinstance(node, (nir.Linear, nir.Affine)):
            y = x.reshape(x.shape[0], -1) @ node.weight.T.astype(np.float64)
            return y + node.bias if isinstance(node, nir.Affine) else y
        if isinstance(node, nir.Flatten):
            shape = tuple(x.shape[1:])
            start, end = int(node.start_dim), int(node.end_dim) % len(shape)
            return x.reshape(x.shape[0], *shape[:start], -1, *shape[end + 1:])
        if isinstance(node, nir.Conv2d):
            y = _conv2d(x, node.weight.astype(np.float64), node.stride, node.padding, node.dilation, node.groups)
            return y + node.bias.reshape(-1, 1, 1)
        raise AssertionError(f"node {name}: {type(node).__name__} not interpreted")


def run_nir(graph, x, interval=0):
    """Encode x as the graph's metadata says (no program needed), step the graph, and return
    the readout integers (N, classes) and the rasters {population: (N, K, *shape)} (as the
    reference's); every unit must be silent outside its evaluation step."""
    meta = graph.metadata
    inp = meta["input"]
    c = np.clip(np.round((x.astype(np.float64) - inp["zero_point"]) / inp["scale"]), 0, 2 ** int(inp["bits"]) - 1)
    n = x.shape[0]
    entries = [0] * n if interval == 0 else [i * interval for i in range(n)]
    read = int(meta["readout"]["read_step"])
    steps = max(entries) + read + 1
    # interval 0: every input its own batch lane, entering at step 0; else one lane, staggered
    lanes = n if interval == 0 else 1
    feed_x = np.zeros((steps, lanes, *c.shape[1:]))
    for i, t0 in enumerate(entries):
        feed_x[t0, i if interval == 0 else 0] = c[i]
    feeds = {"input": feed_x}
    if "clock" in meta:
        feed_clock = np.zeros((steps, lanes, *np.asarray(meta["clock"]["shape"]).astype(int)))
        for i, t0 in enumerate(entries):
            feed_clock[t0, i if interval == 0 else 0] = 1
        feeds["clock"] = feed_clock
    pops = json.loads(meta["populations"])
    units = [u for p in pops for u in p.get("units", [])]
    rec = Interpreter(graph).run(feeds, steps, record=units)
    out = rec["output"]
    y = np.stack([out[t0 + read, i if interval == 0 else 0] for i, t0 in enumerate(entries)])
    rasters = {}
    for p in pops:
        if "units" not in p:
            continue
        r = np.zeros((n, len(p["units"]), *p["shape"]), np.uint8)
        for k, u in enumerate(p["units"]):
            s = rec[u]  # (steps, lanes, *shape)
            fired = np.zeros(s.shape, bool)
            for i, t0 in enumerate(entries):
                lane = i if interval == 0 else 0
                r[i, k] = s[t0 + p["start"] + k, lane]
                fired[t0 + p["start"] + k, lane] = True
            assert not s[~fired].any(), f"{u} fired outside its evaluation steps"
        rasters[p["name"]] = r
    return y, rasters


def assert_spike_equal(program, graph, x, interval=0):
    ref = simulate(program, x, record=True, interval=interval)
    y, rasters = run_nir(graph, x, interval)
    assert set(rasters) == set(ref.rasters)
    total = 0
    for name, r in ref.rasters.items():
        np.testing.assert_array_equal(rasters[name], r, err_msg=name)
        total += int(r.sum())
    assert np.array_equal(y, ref.output.astype(np.float64)), (y, ref.output)
    assert total > 0
    return ref, total


def write_read(program, path, **kw):
    info = export_nir(program, path, **kw)
    assert os.path.getsize(path) == info["bytes"]
    return nir.read(path), info


def _same_value(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and sorted(a) == sorted(b) and all(_same_value(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b))


def assert_same_graph(a, b):
    """What nir.read gives back equals what was written: node names and kinds, every
    parameter (values and dtype), node and graph metadata, the edges in order."""
    assert _same_value(a.metadata, b.metadata)
    assert sorted(a.nodes) == sorted(b.nodes)
    assert list(map(tuple, a.edges)) == list(map(tuple, b.edges))
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other), name
        da, db = node.to_dict(), other.to_dict()
        assert sorted(da) == sorted(db), name
        for key, va in da.items():
            if key == "metadata":
                assert _same_value(va, db[key]), name
            elif key != "type":
                assert np.array_equal(np.asarray(va), np.asarray(db[key])), (name, key)
                if isinstance(va, np.ndarray):
                    assert va.dtype == np.asarray(db[key]).dtype, (name, key)


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

KINDS = {"Input", "Output", "LIF", "LI", "Delay", "Scale", "Linear", "Conv2d", "Flatten", "Threshold"}


def test_example_k4_spike_for_spike_and_round_trip(tmp_path):
    """The shipped example at K=4: nir.read gives back the graph that was written, and it
    fires every spike of the reference simulator (input, every gate) on test images, with
    the same readout integers."""
    program = amosc.compile(os.path.join(EXAMPLE, "model.onnx"), np.load(os.path.join(EXAMPLE, "calib.npy")),
                            bits=4)
    graph = to_nir(program)
    path = tmp_path / "m.nir"
    write_nir(graph, path)
    back = nir.read(path)
    assert_same_graph(graph, back)
    assert {type(v).__name__ for v in back.nodes.values()} <= KINDS
    meta = back.metadata
    assert meta["format"] == "amosc-nir" and meta["exact"] == 1 and meta["floor_corrections"] > 0
    assert meta["time"]["latency"] == program.latency and meta["input"]["bits"] == 4
    for node in back.nodes.values():  # every unit: the memoryless LIF of docs/nir.md
        if isinstance(node, nir.LIF):
            assert np.all(node.tau == 1) and np.all(node.r == 1) and not node.v_leak.any()
    x = np.load(os.path.join(EXAMPLE, "test_x.npy"))[:3]
    ref, spikes = assert_spike_equal(program, back, x)
    assert spikes > 10_000
    # the readout decodes with the metadata alone
    y, _ = run_nir(back, x)
    np.testing.assert_array_equal(y * np.asarray(meta["readout"]["scale"]), ref.logits)


def _maxpool_depthwise(tmp_path):
    """Conv, ReLU, MaxPool 3x3/2 pad 1 (tree: dilated convs with asymmetric pads), depthwise conv."""
    b = GraphBuilder((1, 9, 9), 3)
    h = b.relu(b.conv("x", 1, 3))
    h = b.node("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.relu(b.conv(h, 3, 3, groups=3))
    h = b.node("Flatten", [h], axis=1)
    return save(b.model(b.gemm(h, 3 * 5 * 5, 4), 4), tmp_path / "mp.onnx"), structured_inputs((1, 9, 9), 40, seed=3)


def _squeeze_excitation(tmp_path):
    """A sigmoid gate (fitted, segmented units) times a ReLU map: square units fed by sparse
    maps into spatial populations (a whole-source Conv2d, then one unflattening Conv2d)."""
    b = GraphBuilder((1, 8, 8), 11)
    h = b.relu(b.bn(b.conv("x", 1, 4), 4))
    s = b.relu(b.conv(b.node("GlobalAveragePool", [h]), 4, 2, k=1, pad=0))
    s = b.node("Sigmoid", [b.conv(s, 2, 4, k=1, pad=0)])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Mul", [h, s])])], axis=1)
    return save(b.model(b.gemm(h, 4, 3), 3), tmp_path / "se.onnx"), structured_inputs((1, 8, 8), 40, seed=4)


def _mlp(tmp_path):
    return save(mlp(), tmp_path / "mlp.onnx"), np.random.default_rng(0).normal(0, 1, (40, 20)).astype(np.float32)


def _cnn(tmp_path):
    return save(small_cnn(seed=4, pool="avg"), tmp_path / "cnn.onnx"), structured_inputs((1, 12, 12), 40, seed=1)


@pytest.mark.parametrize("build,interval", [(_mlp, 0), (_mlp, 1), (_cnn, 0), (_cnn, 1), (_maxpool_depthwise, 0),
                                            (_squeeze_excitation, 0)],
                         ids=["mlp", "mlp-pipelined", "cnn", "cnn-pipelined", "maxpool-depthwise",
                              "sigmoid-se"])
def test_small_programs_spike_for_spike(tmp_path, build, interval):
    """Dense and conv projections, residual delays, grouped and dilated asymmetric convs, tree
    max units, a fitted sigmoid, square units and sparse maps into spatial populations; and
    pipelined inputs (a new input every step, through the clock), spike for spike."""
    path, x = build(tmp_path)
    program = amosc.compile(path, x[:30], bits=4)
    graph = to_nir(program)
    write_nir(graph, tmp_path / "m.nir")
    back = nir.read(tmp_path / "m.nir")
    assert_same_graph(graph, back)
    assert_spike_equal(program, back, x[30:34], interval=interval)


def test_without_floor_corrections_it_is_a_plain_float_network(tmp_path):
    """floor_correction=False drops every Threshold node: smaller, but the planes' floors are
    gone, so the integers drift (docs/nir.md measures it on the example)."""
    path, x = _cnn(tmp_path)
    program = amosc.compile(path, x[:30], bits=4)
    full, plain = to_nir(program), to_nir(program, floor_correction=False)
    assert any(isinstance(v, nir.Threshold) for v in full.nodes.values())
    assert not any(isinstance(v, nir.Threshold) for v in plain.nodes.values())
    assert plain.metadata["exact"] == 0 and plain.metadata["floor_corrections"] == 0
    assert len(plain.nodes) < len(full.nodes)
    y, _ = run_nir(plain, x[30:34])
    ref = simulate(program, x[30:34])
    # a different network: close to the program, but not its integers
    assert not np.array_equal(y, ref.output)
    assert np.abs(y - ref.output).max() < 0.1 * np.abs(ref.output).max()


def test_cli_export_nir(tmp_path):
    path, x = _cnn(tmp_path)
    amosc.compile(path, x[:30], bits=4).save(tmp_path / "m.amos")
    out = tmp_path / "m.nir"
    for _ in range(2):  # the second replaces the first atomically
        r = CliRunner().invoke(main, ["export", str(tmp_path / "m.amos"), "--target", "nir", "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert "wrote" in r.output and "bit-exact" in r.output and "'clock'" in r.output
    assert isinstance(nir.read(out), nir.NIRGraph)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    r = CliRunner().invoke(main, ["export", str(tmp_path / "m.amos"), "--target", "nir", "--no-floor",
                                  "-o", str(tmp_path / "plain.nir")])
    assert r.exit_code == 0 and "not bit-exact" in r.output, r.output
    assert not any(isinstance(v, nir.Threshold) for v in nir.read(tmp_path / "plain.nir").nodes.values())
    for argv, needle in [(["-o", str(tmp_path / "nodir" / "m.nir")], "does not exist"),
                         (["-o", str(tmp_path / "m.amos")], "would overwrite the input"),
                         (["-o", str(tmp_path)], "names a directory")]:
        before = sorted(os.listdir(tmp_path))
        r = CliRunner().invoke(main, ["export", str(tmp_path / "m.amos"), "--target", "nir", *argv])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
            r.output
        assert sorted(os.listdir(tmp_path)) == before


def test_max_join_compartments_are_refused_by_name(tmp_path):
    """--maxpool lipool units join compartments by max: NIR sums a node's inputs, so the export
    refuses them, one error line naming the population and the reason."""
    b = GraphBuilder((2, 9, 9), 5)
    h = b.node("MaxPool", [b.relu(b.bn(b.conv("x", 2, 3), 3))], kernel_shape=[2, 2], strides=[2, 2])
    path = save(b.model(b.gemm(b.node("Flatten", [h], axis=1), 3 * 4 * 4, 4), 4), tmp_path / "lipool.onnx")
    program = amosc.compile(path, structured_inputs((2, 9, 9), 30, seed=7), bits=4, maxpool="lipool")
    pool = next(p for p in program.populations if isinstance(p, GatePop) and p.compartments > 1)
    program.save(tmp_path / "m.amos")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "m.amos"), "--target", "nir", "-o", str(tmp_path / "m.nir")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: population ") and pool.name in lines[0] and "compartments" in lines[0]
    assert "--maxpool tree" in lines[0]
    assert not os.path.exists(tmp_path / "m.nir")


def test_fitted_units_spike_for_spike(tmp_path):
    """A fitted AMOS unit (--fitted-units: fitted thresholds, signed resets and signed integer
    code weights) goes through NIR like any code, spike for spike."""
    path, x = _squeeze_excitation(tmp_path)
    program = amosc.compile(path, x[:30], bits=3, fitted_units=8)
    assert any((p.fit or {}).get("structure") == "unit" for p in program.populations if hasattr(p, "fit"))
    graph = to_nir(program)
    write_nir(graph, tmp_path / "m.nir")
    assert_spike_equal(program, nir.read(tmp_path / "m.nir"), x[30:34], interval=0)
