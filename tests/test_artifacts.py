"""The .amos artifact: round trip, provenance, versioning, corruption, atomic writes."""

import json
import os
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import amosc
from amosc.errors import AmoscError, ArtifactError
from amosc.ir import serialize
from amosc.ir.semantics import evaluate
from amosc.ir.text import describe, render
from conftest import uniform_inputs
from onnx_builders import GraphBuilder, save, small_cnn


@pytest.fixture
def program(tmp_path):
    path = save(small_cnn(seed=4), tmp_path / "cnn.onnx")
    return amosc.compile(path, uniform_inputs((1, 12, 12), 32), bits=6)


def _weights_equal(a, b):
    if sp.issparse(a):
        return sp.issparse(b) and (a != b).nnz == 0 and a.data.dtype == b.data.dtype
    return np.array_equal(a, b) and a.dtype == b.dtype


def test_round_trip_is_identical(program, tmp_path):
    program.save(tmp_path / "p.amos")
    back = amosc.load(tmp_path / "p.amos")
    assert describe(back) == describe(program)
    for a, b in zip(program.projections, back.projections):
        assert _weights_equal(a.weight, b.weight) and a.attrs == b.attrs and np.array_equal(a.exp, b.exp)
    for a, b in zip(program.populations, back.populations):
        assert type(a) is type(b) and a.shape == b.shape and a.start == b.start
        if hasattr(a, "bias"):
            assert np.array_equal(a.bias, b.bias) and a.bias.dtype == b.bias.dtype
    x = uniform_inputs((1, 12, 12), 5, seed=9)
    assert np.array_equal(evaluate(program, x)["output"], evaluate(back, x)["output"])


def test_sparse_projection_round_trip(tmp_path):
    b = GraphBuilder((2, 4, 4))
    h = b.relu(b.conv("x", 2, 2))
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])   # a permutation -> sparse projection
    h = b.relu(b.node("Reshape", [h, b.init(np.array([-1, 32], np.int64))]))
    path = save(b.model(b.gemm(h, 32, 3), 3), tmp_path / "m.onnx")
    p = amosc.compile(path, uniform_inputs((2, 4, 4), 16), bits=4)
    assert "sparse" in {pr.kind for pr in p.projections}
    p.save(tmp_path / "p.amos")
    back = amosc.load(tmp_path / "p.amos")
    x = uniform_inputs((2, 4, 4), 4, seed=2)
    assert np.array_equal(evaluate(p, x)["output"], evaluate(back, x)["output"])


def test_provenance_is_recorded(program):
    pv = program.provenance
    assert pv["amosc"] == amosc.__version__ and len(pv["sha256"]) == 64 and pv["source"] == "cnn.onnx"
    assert program.options["bits"] == 6 and program.options["rounding"] == "round"


def test_newer_format_version_is_refused(program, tmp_path):
    path = tmp_path / "p.amos"
    program.save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    m = json.loads(files["manifest.json"])
    m["format_version"] = serialize.FORMAT_VERSION + 1
    files["manifest.json"] = json.dumps(m).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(ArtifactError, match="newer than this amosc reads"):
        amosc.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no_manifest", "bad_array"])
def test_corrupt_files_fail_clearly(program, tmp_path, damage):
    path = tmp_path / "p.amos"
    program.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(n) for n in z.namelist()}
        if damage == "no_manifest":
            del files["manifest.json"]
        else:
            key = next(k for k in files if k.endswith("weight.npy"))
            files[key] = files[key][:20]
        with zipfile.ZipFile(path, "w") as z:
            for n, d in files.items():
                z.writestr(n, d)
    with pytest.raises(ArtifactError, match="p.amos"):
        amosc.load(path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.bin"

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        serialize.atomic_write(target, boom)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_a_clear_error(program, tmp_path):
    with pytest.raises(AmoscError, match="does not exist"):
        program.save(tmp_path / "nodir" / "p.amos")


def test_inspect_text_lists_everything(program):
    text = render(describe(program))
    for pop in program.populations:
        assert pop.name in text
    for pr in program.projections:
        assert f"<- {pr.source}" in text
    assert "latency=" in text and "throughput=1 input/step" in text and "theta=" in text
    assert render(describe(program)) == text  # stable
