"""Hostile and careless input through the CLI: the exit contract (one ``error:`` line and
exit 2 for what a user can cause; one ``internal error`` line and exit 70 for a bug, the
traceback only under --debug), outputs that never damage anything but the output file,
external ONNX data confined to the model's directory, resource bounds, calibration sanity.

Crafted ``.amos`` files are covered by tests/test_untrusted_artifacts.py."""

import os
import stat
import threading

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import amosc
from amosc.cli import main
from amosc.errors import CalibrationError, CalibrationWarning, ModelError, ResourceError
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save, small_cnn


def cli(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def assert_user_error(r, *needles):
    """Exit 2, exactly one line on the output, starting 'error:', naming each needle."""
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert str(n) in lines[0], (n, r.output)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    save(small_cnn(seed=4, pool="avg"), d / "model.onnx")
    x = structured_inputs((1, 12, 12), 120, seed=1)
    np.save(d / "calib.npy", x[:80])
    np.save(d / "x.npy", x[80:])
    np.save(d / "y.npy", np.arange(40) % 5)
    r = cli("compile", d / "model.onnx", "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 4)
    assert r.exit_code == 0, r.output
    return d


def listing(path):
    return sorted(os.listdir(path))


# -- the exit contract, over a table of bad inputs for every command ----------------------

def _bad_files(d):
    """Bad inputs, made once: name -> path."""
    b = d / "bad"
    b.mkdir(exist_ok=True)
    with open(b / "labels.pkl.npy", "wb") as f:  # a pickled object array
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (b / "labels.txt").write_text("0 1 2\n")
    np.savez(b / "labels.npz", y=np.arange(40))
    np.save(b / "labels_float.npy", np.zeros(40))
    other = GraphBuilder((1, 10, 10))  # a model whose input differs from the program's
    h = other.node("Flatten", [other.relu(other.conv("x", 1, 2))], axis=1)
    save(other.model(other.gemm(h, 200, 5), 5), b / "other.onnx")
    m = small_cnn(seed=4, pool="avg")  # initializer dims that say far more than its data holds
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([100000, 100000])
    onnx.save(m, str(b / "dims.onnx"))
    m = small_cnn(seed=4, pool="avg")
    m.opset_import[0].version = 99
    onnx.save(m, str(b / "opset99.onnx"))
    return b


def _table(d, b):
    """(argv, substrings the one error line must hold)."""
    m, x, c = d / "m.amos", d / "x.npy", d / "calib.npy"
    return [
        (["compile", b / "dims.onnx", "--calib", c, "-o", d / "o.amos"], ["dims.onnx", "declares dims"]),
        (["compile", b / "opset99.onnx", "--calib", c, "-o", d / "o.amos"], ["opset 99 is newer"]),
        (["compile", d / "model.onnx", "--calib", c, "-o", d / "model.onnx"], ["would overwrite the input"]),
        (["compile", d / "model.onnx", "--calib", c, "-o", f"{d}/sub/"], ["names a directory"]),
        (["compile", d / "model.onnx", "--calib", c, "-o", d / "o.amos", "--max-memory", "lots"],
         ["--max-memory", "not a size"]),
        (["compile", d / "model.onnx", "--calib", c, "-o", d / "o.amos", "--bits", 40], ["--bits"]),
        (["run", m, "-i", x, "-o", m], ["would overwrite the input"]),
        (["run", m, "-i", x, "-o", d / "nodir" / "l.npy"], ["does not exist"]),
        (["run", m, "-i", x, "-o", d / "l.npy", "--interval", 10_000_000], ["interval", "latency"]),
        (["run", m, "-i", x, "-o", d / "l.npy", "--backend", "nope"], ["unknown backend 'nope'"]),
        (["run", m, "-o", d / "l.npy"], ["--input"]),
        (["validate", m, "--onnx", d / "model.onnx", "-i", x, "--labels", b / "labels.pkl.npy"],
         ["labels.pkl.npy", "not a readable .npy"]),
        (["validate", m, "--onnx", d / "model.onnx", "-i", x, "--labels", b / "labels.txt"], ["labels.txt"]),
        (["validate", m, "--onnx", d / "model.onnx", "-i", x, "--labels", b / "labels.npz"],
         ["labels.npz", ".npz archive"]),
        (["validate", m, "--onnx", d / "model.onnx", "-i", x, "--labels", b / "labels_float.npy"],
         ["labels must be integers"]),
        (["validate", m, "--onnx", b / "other.onnx", "-i", x], ["other.onnx", "(1, 10, 10)", "(1, 12, 12)"]),
        (["validate", m, "--onnx", d / "model.onnx", "-i", x, "--json", x], ["would overwrite the input"]),
        (["inspect", d / "model.onnx"], ["model.onnx"]),
        (["export", m, "-o", x], ["is a file"]),
        (["nosuchcommand"], ["No such command"]),
    ]


def test_every_command_fails_bad_input_with_one_error_line_and_no_file(d):
    b = _bad_files(d)
    for argv, needles in _table(d, b):
        before, stamp = listing(d), {p: os.stat(d / p).st_mtime_ns for p in listing(d)}
        r = cli(*argv)
        assert_user_error(r, *needles)
        assert "Traceback" not in r.output
        assert listing(d) == before, argv  # nothing appeared (no temporary either)
        assert {p: os.stat(d / p).st_mtime_ns for p in listing(d)} == stamp, argv  # nothing touched


def test_an_internal_bug_is_one_line_and_exit_70_with_traceback_under_debug(d, monkeypatch):
    import amosc.ir.text as text

    def boom(program):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(text, "describe", boom)
    r = cli("inspect", d / "m.amos")
    assert r.exit_code == 70
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: RuntimeError: simulated bug")
    assert "--debug" in lines[0] and "Traceback" not in r.output
    for r in (cli("--debug", "inspect", d / "m.amos"), cli("inspect", d / "m.amos", env={"AMOSC_DEBUG": "1"})):
        assert r.exit_code == 70 and "Traceback" in r.output and "simulated bug" in r.output


def test_disk_full_and_permission_denied_are_user_errors(d, monkeypatch):
    if os.path.exists("/dev/full"):  # a character device that fails every write with ENOSPC
        r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", "/dev/full")
        assert_user_error(r, "/dev/full", "No space left on device")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    before = listing(d)
    r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "l.npy")
    assert_user_error(r, "l.npy", "Permission denied")
    assert listing(d) == before


# -- outputs -------------------------------------------------------------------------------

def test_fifo_output_is_written_through_not_replaced(d):
    fifo = d / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", fifo)
    reader.join(10)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO
    assert got and got[0].startswith(b"\x93NUMPY")
    os.unlink(fifo)


def test_symlinked_output_is_followed_and_stays_a_link(d):
    target = d / "real.npy"
    target.write_bytes(b"old")
    link = d / "link.npy"
    os.symlink(target, link)
    r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", link)
    assert r.exit_code == 0, r.output
    assert os.path.islink(link) and np.load(target).shape == (40, 5)
    os.unlink(link)
    os.unlink(target)


def test_output_modes_follow_the_umask_and_read_only_files_are_refused(d):
    old = os.umask(0o027)
    try:
        r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "u.npy")
        assert r.exit_code == 0
        assert stat.S_IMODE(os.stat(d / "u.npy").st_mode) == 0o640
    finally:
        os.umask(old)
    os.chmod(d / "u.npy", 0o444)
    data = (d / "u.npy").read_bytes()
    r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "u.npy", "--limit", 3)
    assert_user_error(r, "u.npy", "read-only")
    assert (d / "u.npy").read_bytes() == data and stat.S_IMODE(os.stat(d / "u.npy").st_mode) == 0o444
    (d / "ro.amos").write_bytes(b"keep")  # compile -o goes through the same writer
    os.chmod(d / "ro.amos", 0o444)
    r = cli("compile", d / "model.onnx", "--calib", d / "calib.npy", "-o", d / "ro.amos")
    assert_user_error(r, "ro.amos", "read-only")
    assert (d / "ro.amos").read_bytes() == b"keep"
    os.unlink(d / "ro.amos")
    os.chmod(d / "u.npy", 0o644)
    r = cli("run", d / "m.amos", "-i", d / "x.npy", "-o", d / "u.npy", "--limit", 3)
    assert r.exit_code == 0 and stat.S_IMODE(os.stat(d / "u.npy").st_mode) == 0o644  # a replaced file keeps its mode
    os.unlink(d / "u.npy")


# -- external tensor data -------------------------------------------------------------------

def _external_model(tmp_path, location="weights.bin"):
    """small_cnn with its initializers in a file beside it (``location`` rewritten after)."""
    src = tmp_path / "ext"
    src.mkdir()
    m = small_cnn(seed=4, pool="avg")
    onnx.save(m, str(src / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        m = onnx.load(str(src / "model.onnx"), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save(m, str(src / "model.onnx"))
    return src / "model.onnx"


def test_external_data_is_read_beside_the_model_not_from_the_working_directory(tmp_path, monkeypatch):
    path = _external_model(tmp_path)
    calib = structured_inputs((1, 12, 12), 60, seed=2)
    np.save(tmp_path / "calib.npy", calib)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes(os.urandom(os.path.getsize(path.parent / "weights.bin")))
    monkeypatch.chdir(elsewhere)  # a same-named decoy in the working directory
    r = cli("compile", path, "--calib", tmp_path / "calib.npy", "-o", tmp_path / "e.amos")
    assert r.exit_code == 0, r.output
    ref = amosc.compile(save(small_cnn(seed=4, pool="avg"), tmp_path / "inline.onnx"), calib, bits=8)
    prog = amosc.load(tmp_path / "e.amos")
    x = structured_inputs((1, 12, 12), 20, seed=5)
    np.testing.assert_array_equal(prog.run(x).output, ref.run(x).output)
    np.save(tmp_path / "x.npy", x)
    r = cli("validate", tmp_path / "e.amos", "--onnx", path, "-i", tmp_path / "x.npy", "--min-agreement", 0.9)
    assert r.exit_code == 0 and "sha256 differs" not in r.output, r.output
    # provenance covers the external bytes: change one weight, and validate notices
    data = bytearray((path.parent / "weights.bin").read_bytes())
    data[0] ^= 1
    (path.parent / "weights.bin").write_bytes(bytes(data))
    r = cli("validate", tmp_path / "e.amos", "--onnx", path, "-i", tmp_path / "x.npy", "--min-agreement", 0)
    assert "sha256 differs" in r.output


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "link.bin"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path, location):
    path = _external_model(tmp_path, location)
    (tmp_path / "secret.bin").write_bytes((path.parent / "weights.bin").read_bytes())
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    np.save(tmp_path / "calib.npy", structured_inputs((1, 12, 12), 20))
    r = cli("compile", path, "--calib", tmp_path / "calib.npy", "-o", tmp_path / "o.amos")
    assert_user_error(r, "model.onnx", "external data location", repr(location))
    assert not (tmp_path / "o.amos").exists()


# -- resources ------------------------------------------------------------------------------

def _graph(nodes, inits, out_shape, opset=13):
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    out = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_a_tiny_model_cannot_make_the_compiler_allocate_gigabytes(tmp_path):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).uniform(size=(8, 1, 4, 4)).astype(np.float32))
    # an unsupported op with constant inputs used to be folded before its op was checked
    big = numpy_helper.from_array(np.array([1 << 16, 1 << 16], np.int64), "reps")
    tile = [helper.make_node("Tile", ["w", "reps"], ["wt"], name="tile"),
            helper.make_node("Flatten", ["x"], ["f"], axis=1, name="flat"),
            helper.make_node("Relu", ["f"], ["y"], name="relu")]
    m = _graph(tile, [numpy_helper.from_array(np.ones((1, 1), np.float32), "w"), big], ["N", 16])
    onnx.save(m, str(tmp_path / "tile.onnx"))
    r = cli("compile", tmp_path / "tile.onnx", "--calib", tmp_path / "c.npy", "-o", tmp_path / "o.amos")
    assert_user_error(r, "tile.onnx", "'tile'", "unsupported op type 'Tile'")
    # a supported op whose folded constant would be huge
    cos = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos",
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
           helper.make_node("Flatten", ["x"], ["f"], axis=1, name="flat"),
           helper.make_node("Relu", ["f"], ["y"], name="relu")]
    m = _graph(cos, [numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")], ["N", 16])
    onnx.save(m, str(tmp_path / "cos.onnx"))
    assert os.path.getsize(tmp_path / "cos.onnx") < 6000
    r = cli("compile", tmp_path / "cos.onnx", "--calib", tmp_path / "c.npy", "-o", tmp_path / "o.amos")
    assert_user_error(r, "'cos'", "ConstantOfShape", "1099511627776 elements")
    assert not (tmp_path / "o.amos").exists()


def test_a_huge_program_is_refused_before_it_is_built(tmp_path):
    b = GraphBuilder((1, 16, 16))
    h = b.relu(b.conv("x", 1, 40_000, k=1, pad=0))
    h = b.node("GlobalAveragePool", [h])
    save(b.model(b.gemm(b.node("Flatten", [h], axis=1), 40_000, 3), 3), tmp_path / "wide.onnx")
    np.save(tmp_path / "c.npy", structured_inputs((1, 16, 16), 4))
    r = cli("compile", tmp_path / "wide.onnx", "--calib", tmp_path / "c.npy", "-o", tmp_path / "o.amos")
    assert_user_error(r, "81,922,051 neurons", "--max-neurons 16,777,216")
    assert not (tmp_path / "o.amos").exists()
    with pytest.raises(ResourceError, match="--max-memory"):
        amosc.compile(str(tmp_path / "wide.onnx"), structured_inputs((1, 16, 16), 4),
                      limits=amosc.compiler.resources.Limits(max_neurons=10**9, max_memory=2**20))


def test_run_interval_is_bounded_by_the_latency(d):
    prog = amosc.load(d / "m.amos")
    x = np.load(d / "x.npy")[:2]
    assert prog.run(x, interval=prog.latency).output.shape == (2, 5)
    with pytest.raises(ResourceError, match=f"0..{prog.latency}"):
        prog.run(x, interval=prog.latency + 1)


# -- calibration sanity ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,needle", [
    ("uint8", "calibration data is integer (uint8, values 0..255)"),
    ("zeros", "calibration inputs are all identical"),
    ("1e6", "out of the model's input distribution")])
def test_degenerate_calibration_is_a_warning_and_an_error_with_strict(d, kind, needle):
    x = np.load(d / "calib.npy")
    bad = {"uint8": (x * 255).astype(np.uint8), "zeros": np.zeros_like(x), "1e6": x * 1e6}[kind]
    np.save(d / f"cal_{kind}.npy", bad)
    r = cli("compile", d / "model.onnx", "--calib", d / f"cal_{kind}.npy", "-o", d / f"o_{kind}.amos")
    assert r.exit_code == 0 and "warning: " in r.output and needle in r.output, r.output
    os.unlink(d / f"o_{kind}.amos")
    r = cli("compile", d / "model.onnx", "--calib", d / f"cal_{kind}.npy", "-o", d / f"o_{kind}.amos", "--strict")
    assert_user_error(r, needle, "--strict")
    assert not (d / f"o_{kind}.amos").exists()
    with pytest.raises(CalibrationError, match="--strict"):
        amosc.compile(str(d / "model.onnx"), bad, bits=4, strict=True)


def test_gates_that_never_fire_are_named(tmp_path):
    b = GraphBuilder((1, 6, 6))
    h = b.relu(b.conv("x", 1, 2))
    dead = b.node("Relu", [b.node("Sub", [h, b.init(np.array(1e3, np.float32))])])  # never above 0
    h = b.node("Flatten", [b.node("Add", [h, dead])], axis=1)
    path = save(b.model(b.gemm(h, 72, 3), 3), tmp_path / "dead.onnx")
    with pytest.warns(CalibrationWarning, match=r"1 of \d+ gates never fire .*g1_Relu"):
        amosc.compile(path, structured_inputs((1, 6, 6), 30), bits=4)


def test_real_calibration_data_gives_no_warning(d):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        amosc.compile(str(d / "model.onnx"), np.load(d / "calib.npy"), bits=4)


def test_model_errors_name_the_file(tmp_path):
    m = small_cnn()
    m.opset_import[0].version = 99
    with pytest.raises(ModelError, match="opset 99"):
        amosc.compile(save(m, tmp_path / "m.onnx"), structured_inputs((1, 12, 12), 4))
