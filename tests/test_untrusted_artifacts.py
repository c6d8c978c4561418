"""Untrusted .amos files (issue 13): a file either loads into a program whose reference
run equals its level-1 evaluation integer for integer, or is refused with one
ArtifactError line naming the file and the member, population, projection or field.
Nothing in a file reaches scipy or a numpy kernel unchecked (docs/ir.md#loading-untrusted-files).
"""

import io
import json
import math
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amosc
from amosc.api import run_program
from amosc.backends.lava import loihi
from amosc.errors import AmoscError, ArtifactError, RangeError
from amosc.ir import serialize
from amosc.ir.nodes import (ACC_LIMIT, MAX_START_STEP, RESET_LIMIT, Code, GatePop, InputPop, Program,
                            Projection, ReadoutPop)
from amosc.ir.semantics import bit_planes, enable_weights, encode_input, evaluate, spikes_input, unit_spikes
from amosc.ir.text import describe, render, to_json
from amosc.ir.verify import range_bounds, verify
from conftest import ROOT, uniform_inputs
from onnx_builders import GraphBuilder, save, small_cnn

# ---------------------------------------------------------------------------
# programs (built once) and file surgery
# ---------------------------------------------------------------------------


def _sparse_model(path):
    b = GraphBuilder((2, 4, 4))
    h = b.relu(b.conv("x", 2, 2))
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])   # a permutation -> sparse projection
    h = b.relu(b.node("Reshape", [h, b.init(np.array([-1, 32], np.int64))]))
    return save(b.model(b.gemm(h, 32, 3), 3), path)


def _fitted_model(path):
    b = GraphBuilder((1, 6, 6), 0)
    h = b.node("Sigmoid", [b.conv("x", 1, 3)])       # a fitted (segmented) gate
    h = b.relu(b.conv(h, 3, 3))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    return save(b.model(b.gemm(h, 3, 3), 3), path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path of a saved program}: a small CNN, one with a sparse projection, one with a
    fitted gate; plus 'dir', a scratch directory."""
    d = tmp_path_factory.mktemp("untrusted")
    out = {"dir": d}
    progs = {
        "cnn": (save(small_cnn(seed=4), d / "cnn.onnx"), (1, 12, 12), 6),
        "sparse": (_sparse_model(d / "sparse.onnx"), (2, 4, 4), 4),
        "fitted": (_fitted_model(d / "fitted.onnx"), (1, 6, 6), 5),
    }
    for name, (onnx_path, shape, bits) in progs.items():
        p = amosc.compile(onnx_path, uniform_inputs(shape, 24, seed=3), bits=bits)
        p.save(d / f"{name}.amos")
        out[name] = d / f"{name}.amos"
    assert any(pr.kind == "sparse" for pr in amosc.load(out["sparse"]).projections)
    assert any(getattr(p, "fit", None) for p in amosc.load(out["fitted"]).populations)
    return out


def read_parts(path):
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    return json.loads(parts["manifest.json"]), parts


def write_parts(path, manifest, parts, method=zipfile.ZIP_DEFLATED):
    parts = dict(parts)
    if manifest is not None:
        parts["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", method) as z:
        for n, data in parts.items():
            z.writestr(n, data)
    return path


def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def unnpy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def edited(src, dst, edit):
    """Copy program file ``src`` to ``dst`` with ``edit(manifest, parts)`` applied (an edit
    may also replace the manifest member's bytes outright)."""
    m, parts = read_parts(src)
    raw = parts["manifest.json"]
    edit(m, parts)
    return write_parts(dst, m if parts["manifest.json"] is raw else None, parts)


def refused(path, *needles) -> str:
    """amosc.load(path) raises one clean ArtifactError line naming the file and the needles."""
    with pytest.raises(ArtifactError) as info:
        amosc.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def pop_of(m, kind, n=0):
    return [p for p in m["populations"] if p["kind"] == kind][n]


def proj_of(m, kind, n=0):
    return [p for p in m["projections"] if p["kind"] == kind][n]


def array_edit(which, fn):
    """An edit replacing the .npy member that ``which(manifest)`` names by fn(array)."""
    def edit(m, parts):
        key = which(m)
        parts[key] = npy(fn(unnpy(parts[key])))
    return edit


def assert_sound(p, seed=0):
    """What a loaded program must satisfy: inspect and the Lava plan work (or refuse with an
    AmoscError), and the reference run equals the level-1 evaluation integer for integer."""
    render(describe(p))
    to_json(describe(p))
    try:
        loihi.plan(p)
    except AmoscError:
        pass
    shape = p.input_pop.shape
    if math.prod(shape) > 10**5:
        return
    x = np.concatenate([uniform_inputs(shape, 2, seed=seed, lo=-0.5, hi=1.5),
                        np.zeros((1, *shape), np.float32), np.ones((1, *shape), np.float32)])
    res = run_program(p, x, backend="reference")
    assert np.array_equal(res.output, evaluate(p, x)[p.output])
    assert res.extra["spurious_spikes"] == 0


# ---------------------------------------------------------------------------
# 1. sparse projections: CSR structure and index bounds
# ---------------------------------------------------------------------------

def _sparse_key(part):
    return lambda m: proj_of(m, "sparse")["weight"]["sparse"] + part + ".npy"


def _set(i, v):
    def fn(a):
        a = a.astype(np.int64)
        a[i] = v
        return a.astype(np.int32)
    return fn


CSR_DAMAGE = {
    "index past the columns": ("indices", _set(0, 10**6), "column index 1000000 outside [0, 32)"),
    "negative index": ("indices", _set(0, -1), "column index -1 outside [0, 32)"),
    "indptr past nnz": ("indptr", lambda a: np.append(a[:-1], a[-1] + 10**6).astype(a.dtype),
                        "indptr must run from 0 to nnz"),
    "indptr jumps ahead": ("indptr", _set(1, 10**7), "indptr decreases at row 1"),
    "indptr not from 0": ("indptr", _set(0, 1), "indptr must run from 0"),
    "indptr short": ("indptr", lambda a: a[:-1], "rows need"),
    "float indices": ("indices", lambda a: a.astype(np.float32), "not an integer type"),
    "2-D indices": ("indices", lambda a: a.reshape(1, -1), "sparse indices must be 1-D"),
    "int16 data": ("data", lambda a: a.astype(np.int16), "sparse data must be int8"),
    "extra index": ("indices", lambda a: np.append(a, 0).astype(a.dtype), "entries, data has"),
    "uint64 beyond int64": ("indices", lambda a: np.full(a.shape, 2**64 - 1, np.uint64), "beyond int64"),
}


@pytest.mark.parametrize("damage", sorted(CSR_DAMAGE))
def test_damaged_csr_is_refused_naming_the_projection(files, tmp_path, damage):
    part, fn, needle = CSR_DAMAGE[damage]
    path = edited(files["sparse"], tmp_path / "p.amos", array_edit(_sparse_key(part), fn))
    m, _ = read_parts(path)
    refused(path, f"'{proj_of(m, 'sparse')['name']}'", needle)


@pytest.mark.parametrize("command,damage", [("inspect", "indptr jumps ahead"), ("run", "index past the columns")])
def test_damaged_csr_is_one_error_line_from_the_cli_not_a_segfault(files, tmp_path, command, damage):
    # before: `amosc inspect` / `amosc run` died in scipy with SIGSEGV (exit -11)
    part, fn, needle = CSR_DAMAGE[damage]
    path = edited(files["sparse"], tmp_path / "p.amos", array_edit(_sparse_key(part), fn))
    args = [sys.executable, "-m", "amosc.cli", command, str(path)]
    if command == "run":
        np.save(tmp_path / "x.npy", uniform_inputs((2, 4, 4), 2))
        args += ["-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    env = {**os.environ, "AMOSC_PROGRESS": "0"}
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------------------
# 2. semantic validation of loaded values
# ---------------------------------------------------------------------------

def _field(kind, key, value, index=None):
    def edit(m, parts):
        p = pop_of(m, kind)
        if index is None:
            p[key] = value
        else:
            p[key][index] = value
    return edit


def _version(v):
    def edit(m, parts):
        m["format_version"] = v
    return edit


SEMANTIC = {
    "input scale 0": (_field("input", "scale", 0.0), "input scale must be a finite number > 0"),
    "input scale negative": (_field("input", "scale", -0.5), "input scale must be a finite number > 0"),
    "input scale nan": (_field("input", "scale", math.nan), "input scale must be a finite number > 0"),
    "input scale inf": (_field("input", "scale", math.inf), "input scale must be a finite number > 0"),
    "input scale string": (_field("input", "scale", "0.1"), "field 'scale' must be a number"),
    "input scale beyond float": (_field("input", "scale", 10**400), "field 'scale' must be a number"),
    "zero point nan": (_field("input", "zero_point", math.nan), "zero point must be a finite number"),
    "zero point -inf": (_field("input", "zero_point", -math.inf), "zero point must be a finite number"),
    "input bits 0": (_field("input", "bits", 0), "field 'bits' must be an integer in [1, 16]"),
    "input bits 17": (_field("input", "bits", 17), "field 'bits' must be an integer in [1, 16]"),
    "input bits true": (_field("input", "bits", True), "field 'bits' must be an integer in [1, 16], got true"),
    "readout scale inf": (_field("readout", "scale", math.inf, 0), "scale must be finite"),
    "gate scale inf": (_field("gate", "scale", math.inf, 0), "scale must be finite"),
    "gate scale 1e300": (_field("gate", "scale", 1e300, 0), "at most 2^100"),
    "gate scale negative": (_field("gate", "scale", -1.0, 0), "scale must be finite, > 0"),
    "negative start": (_field("readout", "start", -991), "field 'start' must be an integer in [0, 65536]"),
    "huge start": (_field("readout", "start", 10**9), "field 'start' must be an integer in [0, 65536]"),
    "start past MAX_START_STEP": (_field("readout", "start", MAX_START_STEP + 1), "field 'start'"),
    "boolean start": (_field("gate", "start", True), "field 'start' must be an integer"),
    "float start": (_field("gate", "start", 6.0), "field 'start' must be an integer"),
    "version 0": (_version(0), "format version 0 is not valid"),
    "version -1": (_version(-1), "format version -1 is not valid"),
    "version true": (_version(True), "format version true is not an integer"),
    "version 1.0": (_version(1.0), "format version 1.0 is not an integer"),
    "version string": (_version("1"), "is not an integer"),
    "version missing": (lambda m, parts: m.pop("format_version"), "format version null"),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC))
def test_semantically_invalid_values_are_refused(files, tmp_path, case):
    edit, needle = SEMANTIC[case]
    refused(edited(files["cnn"], tmp_path / "p.amos", edit), needle)


def test_the_start_bound_is_what_the_docs_say():
    assert MAX_START_STEP == 2**16
    with open(os.path.join(ROOT, "docs", "ir.md")) as f:
        doc = f.read()
    assert "MAX_START_STEP" in doc and "2^16" in doc and "MAX_ARTIFACT_BYTES" in doc


def test_largest_start_step_loads_and_runs_in_bounded_time(files, tmp_path):
    path = edited(files["cnn"], tmp_path / "p.amos", _field("readout", "start", MAX_START_STEP))
    p = amosc.load(path)
    assert p.latency == MAX_START_STEP + 1
    x = uniform_inputs(p.input_pop.shape, 1)
    assert np.array_equal(p.run(x).output, evaluate(p, x)[p.output])


def test_node_invariants_hold_for_the_compiler_too():
    """The checks live in the nodes, so a program built in memory gets them as well."""
    with pytest.raises(AmoscError, match="input scale"):
        InputPop("in", (4,), 4, math.nan, 0.0)
    with pytest.raises(AmoscError, match="start step"):
        InputPop("in", (4,), 4, 0.1, 0.0, start=-1)
    with pytest.raises(AmoscError, match="bits"):
        InputPop("in", (4,), True, 0.1, 0.0)
    with pytest.raises(AmoscError, match="scale must be finite"):
        ReadoutPop("r", (2,), np.zeros(2, np.int32), np.array([1.0, math.inf]))
    with pytest.raises(AmoscError, match="code thresholds must be integers"):
        Code((1.5,), (1,), (1,))
    with pytest.raises(AmoscError, match="code resets must be integers"):
        Code((1,), (True,), (1,))
    with pytest.raises(AmoscError, match="reset"):
        Code((1,), (RESET_LIMIT + 1,), (1,))
    with pytest.raises(AmoscError, match="conv attribute 'strides'"):
        Projection("p", "a", "b", "conv", np.zeros((1, 1, 1, 1), np.int8), np.zeros(1, np.int64), (1, 2, 2),
                   (1, 2, 2), {"pads": (0, 0, 0, 0), "dilations": (1, 1), "groups": 1})


# ---------------------------------------------------------------------------
# 3. the range proof holds for every sign of resets and code weights
# ---------------------------------------------------------------------------

def tiny_program(code, bias, w1, w2, e1=0, e2=0):
    """input (8,) K=4 -> dense -> gate (6,) with ``code`` -> dense -> readout (3,)."""
    k = code.bits
    inp = InputPop("in", (8,), 4, 1 / 15, 0.0, 0)
    g = GatePop("g", (6,), code, np.asarray(bias, np.int32), np.full(6, 0.1), start=4)
    r = ReadoutPop("out", (3,), np.zeros(3, np.int32), np.full(3, 0.01), start=4 + k)
    p1 = Projection("in->g", "in", "g", "dense", np.asarray(w1, np.int8), np.full(6, e1, np.int64), (8,), (6,))
    p2 = Projection("g->out", "g", "out", "dense", np.asarray(w2, np.int8), np.full(3, e2, np.int64), (6,), (3,))
    return Program([inp, g, r], [p1, p2], "in", "out")


def membranes(program, x):
    """Every value the gate's current holds: membranes v_k = y - sum_{j<k} h_j z_j and
    per-step inputs v_k - b + E, as the reference simulator computes them; and the readout's y."""
    inp, g = program.pop("in"), program.pop("g")
    y = g.bias.astype(np.int64) + spikes_input(program.projections[0], inp.code,
                                               bit_planes(encode_input(inp, x), inp.bits))
    z = unit_spikes(g.code, y).astype(np.int64)
    e = enable_weights(g.bias)
    vals, inh = [], 0
    for k in range(g.code.bits):
        v = y - inh
        vals += [v, v - g.bias + e]
        inh = inh + g.code.resets[k] * z[k]
    out = spikes_input(program.projections[1], g.code, z)
    return np.concatenate([a.ravel() for a in vals]), out


def test_negative_resets_cannot_hide_an_overflow():
    # z_0 = 1 for any y >= 1, then unit 1 sees y + 120000: outside the 18-bit range. The old
    # proof used sum(resets) = -119999 as the *largest* inhibition and accepted this.
    code = Code((1, 1), (-120000, 1), (1, 1))
    p = tiny_program(code, np.zeros(6), np.full((6, 8), 127), np.ones((3, 6)))
    v, _ = membranes(p, np.ones((1, 8), np.float32))
    assert v.max() > ACC_LIMIT                      # the real membrane leaves the range
    with pytest.raises(RangeError, match="'g'"):
        verify(p)
    lo, hi = range_bounds(p, "g")
    assert lo <= v.min() and v.max() <= hi


def test_negative_resets_in_a_file_are_refused(files, tmp_path):
    def edit(m, parts):
        pop_of(m, "gate")["code"]["resets"][0] = -RESET_LIMIT
    refused(edited(files["cnn"], tmp_path / "p.amos", edit), "synaptic input can reach")


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 4), data=st.data())
def test_range_bounds_contain_every_membrane_for_any_signs(k, data):
    ints = lambda lo, hi, n: data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))  # noqa: E731
    big = data.draw(st.sampled_from([300, 3000, 40000]))
    resets = ints(-big, big, k - 1) + ints(1, 64, 1)   # a large last reset: see the xfail below
    code = Code(tuple(ints(1, big, k)), tuple(resets), tuple(ints(-8, 8, k)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    p = tiny_program(code, rng.integers(-400, 400, 6), rng.integers(-128, 128, (6, 8)),
                     rng.integers(-128, 128, (3, 6)), data.draw(st.integers(-3, 0)), data.draw(st.integers(-4, 0)))
    x = np.concatenate([rng.uniform(-0.2, 1.2, (16, 8)), np.zeros((1, 8)), np.ones((1, 8)),
                        (rng.uniform(size=(8, 8)) > 0.5)]).astype(np.float32)
    v, out = membranes(p, x)
    lo, hi = range_bounds(p, "g")
    assert lo <= v.min() and v.max() <= hi
    rlo, rhi = range_bounds(p, "out")
    assert rlo <= out.min() and out.max() <= rhi
    try:
        verify(p)
    except RangeError:
        return
    assert np.array_equal(run_program(p, x).output, evaluate(p, x)["out"])


def test_a_large_last_reset_evaluates():
    # h_{K-1} inhibits no later unit, so this code is valid and verify accepts it
    code = Code((1, 1, 1, 1), (0, 0, 0, 20000), (1, 1, 1, 1))
    p = tiny_program(code, np.zeros(6), np.ones((6, 8)), np.ones((3, 6)))
    verify(p)
    x = uniform_inputs((8,), 4)
    assert np.array_equal(run_program(p, x).output, evaluate(p, x)["out"])


# ---------------------------------------------------------------------------
# 4. wrong structure or JSON types anywhere: ArtifactError naming the field
# ---------------------------------------------------------------------------

def _conv(key, value):
    def edit(m, parts):
        a = proj_of(m, "conv")["attrs"]
        if value is _DELETE:
            del a[key]
        else:
            a[key] = value
    return edit


_DELETE = object()


def _fit(key, value):
    def edit(m, parts):
        f = next(p for p in m["populations"] if p.get("fit"))["fit"]
        if value is _DELETE:
            del f[key]
        else:
            f[key] = value
    return edit


def _top(key, value):
    def edit(m, parts):
        m[key] = value
    return edit


def _whole(value):
    def edit(m, parts):
        m.clear()
        parts["manifest.json"] = json.dumps(value).encode()
    return edit


STRUCTURE = {
    "conv strides missing": ("cnn", _conv("strides", _DELETE), ["conv attribute 'strides' is missing"]),
    "conv pads missing": ("cnn", _conv("pads", _DELETE), ["conv attribute 'pads' is missing"]),
    "conv groups missing": ("cnn", _conv("groups", _DELETE), ["conv attribute 'groups' is missing"]),
    "stride 0": ("cnn", _conv("strides", [0, 0]), ["conv attribute 'strides' must be 2 integers"]),
    "stride negative": ("cnn", _conv("strides", [-1, 1]), ["'strides'"]),
    "stride float": ("cnn", _conv("strides", [1.0, 1]), ["'strides'"]),
    "stride string": ("cnn", _conv("strides", ["1", 1]), ["'strides'"]),
    "stride bool": ("cnn", _conv("strides", [True, True]), ["'strides'"]),
    "one stride": ("cnn", _conv("strides", [1]), ["'strides'"]),
    "strides a number": ("cnn", _conv("strides", 1), ["'strides'"]),
    "pads negative": ("cnn", _conv("pads", [-1, 0, 0, 0]), ["conv attribute 'pads' must be 4 integers in [0"]),
    "three pads": ("cnn", _conv("pads", [1, 1, 1]), ["'pads'"]),
    "huge pads": ("cnn", _conv("pads", [10**6, 10**6, 10**6, 10**6]), ["pads (1000000, 1000000"]),
    "pads blow up the input": ("cnn", _conv("pads", [600, 600, 600, 600]), ["more than 16 times its size"]),
    "dilation 0": ("cnn", _conv("dilations", [0, 1]), ["'dilations'"]),
    "groups 0": ("cnn", _conv("groups", 0), ["conv attribute 'groups' must be an integer"]),
    "groups true": ("cnn", _conv("groups", True), ["'groups'"]),
    "groups 3": ("cnn", _conv("groups", 3), ["groups=3 does not map"]),
    "fit segments 0": ("fitted", _fit("segments", 0), ["field 'fit'", "field 'segments'"]),
    "fit segments 5": ("fitted", _fit("segments", 5), ["not a multiple of its 5 segments"]),
    "fit slopes missing": ("fitted", _fit("slopes", _DELETE), ["field 'slopes' is missing"]),
    "fit slopes shape": ("fitted", _fit("slopes", [[1.0, 2.0]]), ["fit slopes must be finite numbers"]),
    "fit slopes nan": ("fitted", _fit("slopes", [math.nan]), ["fit slopes"]),
    "fit range string": ("fitted", _fit("range", "0..1"), ["field 'range'"]),
    "fit fn missing": ("fitted", _fit("fn", _DELETE), ["field 'fn' is missing"]),
    "fit a list": ("fitted", lambda m, p: next(q for q in m["populations"] if q.get("fit")).update(fit=[1]),
                   ["field 'fit' must be a JSON object"]),
    "manifest a list": ("cnn", _whole([1, 2]), ["manifest.json is [1, 2], not a JSON object"]),
    "manifest a string": ("cnn", _whole("amosc-program"), ["not a JSON object"]),
    "manifest not JSON": ("cnn", lambda m, p: (m.clear(), p.update({"manifest.json": b"{\"format"})),
                          ["manifest.json is not valid JSON"]),
    "manifest deeply nested": ("cnn", lambda m, p: m.update(options=json.loads("[" * 100 + "]" * 100)),
                               ["nested more than 32 levels"]),
    "control characters": ("cnn", lambda m, p: m["provenance"].update(source="x\x1b[2Jy"),
                           ["control characters"]),
    "populations a dict": ("cnn", _top("populations", {}), ["manifest: field 'populations' must be a list"]),
    "populations missing": ("cnn", lambda m, p: m.pop("populations"), ["field 'populations' is missing"]),
    "a population a string": ("cnn", lambda m, p: m["populations"].__setitem__(1, "gate"),
                              ["population 1 must be a JSON object"]),
    "shape a string": ("cnn", lambda m, p: pop_of(m, "gate").update(shape="4x12x12"), ["field 'shape'"]),
    "shape with 0": ("cnn", lambda m, p: pop_of(m, "gate").update(shape=[0, 12, 12]), ["field 'shape'"]),
    "shape huge": ("cnn", lambda m, p: pop_of(m, "input").update(shape=[2**31, 2**31]), ["field 'shape'"]),
    "kind unknown": ("cnn", lambda m, p: pop_of(m, "gate").update(kind="lif"), ["field 'kind'"]),
    "name a number": ("cnn", lambda m, p: pop_of(m, "gate").update(name=3), ["field 'name' must be a string"]),
    "exp with a string": ("cnn", lambda m, p: proj_of(m, "conv")["exp"].__setitem__(0, "0"), ["field 'exp'"]),
    "exp floats": ("cnn", lambda m, p: proj_of(m, "conv")["exp"].__setitem__(0, 0.5), ["field 'exp'"]),
    "exp too short": ("cnn", lambda m, p: proj_of(m, "conv")["exp"].pop(), ["field 'exp'"]),
    "thresholds floats": ("cnn", lambda m, p: pop_of(m, "gate")["code"]["thresholds"].__setitem__(0, 1.5),
                          ["field 'thresholds'"]),
    "thresholds 0": ("cnn", lambda m, p: pop_of(m, "gate")["code"]["thresholds"].__setitem__(0, 0),
                     ["field 'thresholds'"]),
    "resets bool": ("cnn", lambda m, p: pop_of(m, "gate")["code"]["resets"].__setitem__(0, True),
                    ["field 'resets'"]),
    "code weights huge": ("cnn", lambda m, p: pop_of(m, "gate")["code"]["weights"].__setitem__(0, 2**40),
                          ["field 'weights'"]),
    "code of 256 units": ("cnn", lambda m, p: pop_of(m, "gate")["code"].update(thresholds=[1] * 256),
                         ["field 'thresholds'"]),
    "code steps decreasing": ("cnn", lambda m, p: pop_of(m, "gate")["code"].update(
        steps=[0] * (len(pop_of(m, "gate")["code"]["thresholds"]) - 1) + [5]), ["steps"]),
    "compartments true": ("cnn", lambda m, p: pop_of(m, "gate").update(compartments=True),
                          ["field 'compartments'"]),
    "compartments 0": ("cnn", lambda m, p: pop_of(m, "gate").update(compartments=0), ["field 'compartments'"]),
    "projection kind swapped": ("cnn", lambda m, p: proj_of(m, "dense").update(kind="sparse"),
                                ["field 'weight' must be a JSON object"]),
    "sparse weight a name": ("sparse", lambda m, p: proj_of(m, "sparse").update(kind="dense"),
                             ["field 'weight' must be a string"]),
    "weight member missing": ("cnn", lambda m, p: proj_of(m, "conv").update(weight="nope.npy"),
                              ["the archive has no member 'nope.npy'"]),
    "weight not int8": ("cnn", array_edit(lambda m: proj_of(m, "conv")["weight"], lambda a: a.astype(np.int16)),
                        ["conv weight must be an int8 4-D array"]),
    "weight 3-D": ("cnn", array_edit(lambda m: proj_of(m, "conv")["weight"], lambda a: a[0]),
                   ["conv weight must be an int8 4-D array"]),
    "bias float": ("cnn", array_edit(lambda m: pop_of(m, "gate")["bias"], lambda a: a.astype(np.float32)),
                   ["field 'bias'", "not an integer type"]),
    "bias wrong shape": ("cnn", array_edit(lambda m: pop_of(m, "gate")["bias"], lambda a: a[:1]),
                         ["bias must be an int32 array"]),
    "bias int64": ("cnn", array_edit(lambda m: pop_of(m, "gate")["bias"], lambda a: a.astype(np.int64)),
                   ["bias must be an int32 array"]),
    "bias not npy": ("cnn", lambda m, p: p.update({pop_of(m, "gate")["bias"]: b"\x93NUMPY garbage"}),
                     ["field 'bias'", "not a valid .npy array"]),
    "bias data short": ("cnn", lambda m, p: p.update({pop_of(m, "gate")["bias"]: p[pop_of(m, "gate")["bias"]][:-4]}),
                        ["field 'bias'", "bytes of data"]),
    "scale list short": ("cnn", lambda m, p: pop_of(m, "gate")["scale"].pop(), ["field 'scale'"]),
    "scale with a bool": ("cnn", lambda m, p: pop_of(m, "gate")["scale"].__setitem__(0, True), ["field 'scale'"]),
    "options a list": ("cnn", _top("options", []), ["field 'options' must be a JSON object"]),
    "provenance sha a number": ("cnn", lambda m, p: m["provenance"].update(sha256=5), ["field 'sha256'"]),
    "input missing": ("cnn", lambda m, p: m.pop("input"), ["field 'input' is missing"]),
    "output unknown": ("cnn", _top("output", "nope"), ["no population named 'nope'"]),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_wrong_structure_is_an_artifact_error_naming_the_field(files, tmp_path, case):
    base, edit, needles = STRUCTURE[case]
    refused(edited(files[base], tmp_path / "p.amos", edit), *needles)


def test_population_and_projection_are_named(files, tmp_path):
    path = edited(files["cnn"], tmp_path / "p.amos", _conv("strides", [0, 0]))
    m, _ = read_parts(path)
    assert f"'{proj_of(m, 'conv')['name']}'" in refused(path)
    path = edited(files["cnn"], tmp_path / "q.amos", _field("gate", "start", -1))
    m, _ = read_parts(path)
    assert f"population 1 ('{pop_of(m, 'gate')['name']}'): field 'start'" in refused(path)


# ---------------------------------------------------------------------------
# 5. decompressed size is bounded before anything is inflated
# ---------------------------------------------------------------------------

@pytest.fixture
def inflated(monkeypatch):
    """Counts the bytes zipfile decompresses (all reads of member streams)."""
    count = [0]
    orig = zipfile.ZipExtFile.read

    def read(self, n=-1):
        data = orig(self, n)
        count[0] += len(data)
        return data
    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return count


def test_the_limit_is_documented_and_fits_real_programs():
    assert serialize.MAX_ARTIFACT_BYTES == 4 * 2**30
    assert serialize.MAX_ARTIFACT_BYTES_ENV == "AMOSC_MAX_ARTIFACT_BYTES"


def test_total_decompressed_size_is_bounded(files, tmp_path, monkeypatch, inflated):
    m, parts = read_parts(files["cnn"])
    total = sum(len(v) for v in parts.values())
    monkeypatch.setenv("AMOSC_MAX_ARTIFACT_BYTES", str(total - 1))
    inflated[0] = 0
    refused(files["cnn"], "too large", f"more than the limit of {total - 1}", "AMOSC_MAX_ARTIFACT_BYTES")
    assert inflated[0] == 0                          # refused from the directory alone
    monkeypatch.setenv("AMOSC_MAX_ARTIFACT_BYTES", str(total + 100))
    amosc.load(files["cnn"])
    # an unread member counts too: 8 MiB of zeros is 8 KiB deflated
    write_parts(tmp_path / "p.amos", m, {**parts, "padding.bin": bytes(8 << 20)})
    refused(tmp_path / "p.amos", "too large")
    monkeypatch.setenv("AMOSC_MAX_ARTIFACT_BYTES", "lots")
    with pytest.raises(AmoscError, match="AMOSC_MAX_ARTIFACT_BYTES"):
        amosc.load(files["cnn"])


def test_a_member_larger_than_its_array_can_be_is_not_inflated(files, tmp_path, inflated):
    # a bias is int32 of its population's shape: 64 MiB of zeros (64 KiB deflated) cannot be one
    def edit(m, parts):
        parts[pop_of(m, "gate")["bias"]] = npy(np.zeros(16 << 20, np.int32))
    path = edited(files["cnn"], tmp_path / "p.amos", edit)
    assert os.path.getsize(path) < 1 << 20
    refused(path, "field 'bias'", "it can take")
    assert inflated[0] < 1 << 20


def _patch_sizes(path, name, declared: int, data: bytes):
    """Make the zip at ``path`` declare ``declared`` bytes (and their CRC) for member ``name``
    whose stream holds more: in its local header and its central directory entry."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    raw = bytearray(open(path, "rb").read())
    old = struct.pack("<III", info.CRC, info.compress_size, info.file_size)
    new = struct.pack("<III", zlib.crc32(data[:declared]), info.compress_size, declared)
    assert raw.count(old) == 2
    open(path, "wb").write(bytes(raw).replace(old, new))


def test_a_stream_longer_than_its_declared_size_is_read_only_that_far(files, tmp_path, inflated):
    m, parts = read_parts(files["cnn"])
    key = pop_of(m, "gate")["bias"]
    true = parts[key]
    parts[key] = true + bytes(32 << 20)              # 32 MiB more behind the declared size
    write_parts(tmp_path / "p.amos", m, parts)
    _patch_sizes(tmp_path / "p.amos", key, len(true), parts[key])
    p = amosc.load(tmp_path / "p.amos")              # the declared bytes are the whole array
    assert inflated[0] < 1 << 20
    assert_sound(p)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_compression_methods_are_refused(files, tmp_path, method):
    m, parts = read_parts(files["cnn"])
    write_parts(tmp_path / "p.amos", m, parts, method)
    refused(tmp_path / "p.amos", "compression method")


def test_duplicate_members_are_refused(files, tmp_path):
    m, parts = read_parts(files["cnn"])
    write_parts(tmp_path / "p.amos", m, parts)
    with pytest.warns(UserWarning), zipfile.ZipFile(tmp_path / "p.amos", "a") as z:
        z.writestr("manifest.json", b"{}")
    refused(tmp_path / "p.amos", "appears twice")


# ---------------------------------------------------------------------------
# fuzz: mutated manifests, arrays and zips load cleanly or run exactly
# ---------------------------------------------------------------------------

VALUES = [0, 1, -1, 2, 3, 7, 64, 255, 2**15, 2**16 + 1, 2**31, 2**63, -2**63, 10**30, 10**400, True, False, None,
          0.5, -0.0, 1.0, 1e308, math.nan, math.inf, -math.inf, "", "x", "input", "output", "conv", "sparse",
          "gate", "proj/0/weight.npy", [], [0], [1, 1], [[1]], {}, {"a": 1}]


def _paths(v, path=()):
    yield path
    if isinstance(v, dict):
        for k, item in v.items():
            yield from _paths(item, path + (k,))
    elif isinstance(v, list):
        for i, item in enumerate(v):
            yield from _paths(item, path + (i,))


def _get(m, path):
    for k in path:
        m = m[k]
    return m


@st.composite
def manifest_mutation(draw, m):
    paths = [p for p in _paths(m) if p]
    path = draw(st.sampled_from(paths))
    parent, key = _get(m, path[:-1]), path[-1]
    old = parent[key]
    op = draw(st.sampled_from(["value", "value", "delete", "nudge", "copy", "list"]))
    if op == "delete":
        del parent[key]
        return
    if op == "nudge" and type(old) in (int, float) and abs(old) < 1e300:  # (a huge int has no float)
        half = int(old) + 0.5
        new = draw(st.sampled_from([old + 1, old - 1, -old, old * 2, old * 1000, float(old), half]))
    elif op == "copy":
        new = json.loads(json.dumps(_get(m, draw(st.sampled_from(paths)))))
    elif op == "list" and isinstance(old, list):
        change = draw(st.sampled_from(["drop", "dup", "reverse", "empty", "wrap"]))
        new = {"drop": old[:-1], "dup": old + old[-1:], "reverse": old[::-1], "empty": [], "wrap": [old]}[change]
    else:
        new = draw(st.sampled_from(VALUES))
    parent[key] = new


DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64, np.float32, np.float64, np.bool_]


@st.composite
def array_mutation(draw, a: np.ndarray):
    """A changed array, or raw bytes standing in for its .npy member."""
    op = draw(st.sampled_from(["dtype", "shape", "value", "value", "encoding", "bytes"]))
    if op == "dtype":
        return a.astype(draw(st.sampled_from(DTYPES)))
    if op == "shape":
        change = draw(st.sampled_from(["flat", "axis", "drop", "append", "empty", "transpose"]))
        return {"flat": lambda: a.reshape(-1), "axis": lambda: a[None], "drop": lambda: a.reshape(-1)[:-1],
                "append": lambda: np.append(a.reshape(-1), a.reshape(-1)[:1]), "empty": lambda: a.reshape(-1)[:0],
                "transpose": lambda: a.T.copy()}[change]()
    if op == "value":
        if a.size == 0:
            return a
        b = a.astype(np.int64).reshape(-1)
        i = draw(st.integers(0, b.size - 1))
        v = draw(st.sampled_from([0, 1, -1, 2, 127, -128, 128, 2**15, 2**31 - 1, -2**31, int(b.max()) + 1,
                                  int(b.min()) - 1, b.size, -b.size]))
        b[i] = v
        info = np.iinfo(a.dtype)
        if info.min <= v <= info.max:
            return b.astype(a.dtype).reshape(a.shape)
        return b.reshape(a.shape)                    # widened to int64
    if op == "encoding":                             # same values, other valid encodings
        enc = draw(st.sampled_from(["fortran", "big-endian"]))
        return np.asfortranarray(a) if enc == "fortran" else a.astype(a.dtype.newbyteorder(">"))
    data = npy(a)
    change = draw(st.sampled_from(["truncate", "garbage", "header"]))
    if change == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if change == "garbage":
        return b"\x93NUMPY\x01\x00" + bytes(draw(st.binary(max_size=40)))
    return data.replace(b"'shape': (", b"'shape': (" + str(draw(st.sampled_from([0, 1, 2**40, 2**62]))).encode()
                        + b", ", 1)


@st.composite
def zip_bytes(draw, m, parts):
    """The whole file, with its zip structure possibly damaged."""
    parts = dict(parts)
    parts["manifest.json"] = json.dumps(m).encode()
    op = draw(st.sampled_from(["none", "none", "none", "drop", "extra", "method", "flip", "truncate"]))
    names = sorted(parts)
    if op == "drop":
        del parts[draw(st.sampled_from(names))]
    elif op == "extra":
        parts[draw(st.sampled_from(["x.npy", "manifest.json/", "../evil"]))] = bytes(draw(st.binary(max_size=64)))
    buf = io.BytesIO()
    special = draw(st.sampled_from(names)) if op == "method" else None
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in parts.items():
            z.writestr(n, data, compress_type=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_BZIP2,
                                                                   zipfile.ZIP_LZMA])) if n == special else None)
    raw = bytearray(buf.getvalue())
    if op == "flip":
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    return bytes(raw)


@settings(max_examples=150, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_files_are_refused_cleanly_or_run_exactly(files, data):
    base = data.draw(st.sampled_from(["cnn", "sparse", "fitted"]), label="program")
    m, parts = read_parts(files[base])
    for _ in range(data.draw(st.integers(0, 2), label="manifest mutations")):
        data.draw(manifest_mutation(m))
    arrays = sorted(k for k in parts if k.endswith(".npy"))
    keys = data.draw(st.lists(st.sampled_from(arrays), max_size=2, unique=True), label="arrays mutated")
    for key in keys:
        got = data.draw(array_mutation(unnpy(parts[key])))
        parts[key] = got if isinstance(got, bytes) else npy(got)
    path = files["dir"] / "fuzz.amos"
    path.write_bytes(data.draw(zip_bytes(m, parts)))
    try:
        p = amosc.load(path)
    except ArtifactError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        # never a bare Python error dressed up: manifest and array problems are named
        assert "Error:" not in msg, msg
        return
    assert_sound(p, seed=data.draw(st.integers(0, 99), label="seed"))
