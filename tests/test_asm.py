"""The integer IR's text form (amosc.ir.asm): complete, parses back to the same text and
the same integers, refuses bad text naming the line, and drives the CLI's inspect --format
ir, assemble and compile --dump-after."""

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amosc
from amosc.backends.reference import simulate
from amosc.cli import main
from amosc.compiler.passes import drop_dead_populations
from amosc.compiler.pipeline import PASS_NAMES
from amosc.errors import ArtifactError
from amosc.ir import asm
from amosc.ir.nodes import GatePop, InputPop, Program, Projection
from amosc.ir.semantics import evaluate
from click.testing import CliRunner
from conftest import EXAMPLE, uniform_inputs
from onnx_builders import save, small_cnn
from test_conformance import programs


def assert_same_program(p, q, x):
    """q is p: the same text, and bit-identical integers at level 1 and on the reference."""
    assert asm.dumps(q) == asm.dumps(p)
    assert asm.equal(p, q)
    ev_p, ev_q = evaluate(p, x), evaluate(q, x)
    assert ev_p.keys() == ev_q.keys()
    for name in ev_p:
        np.testing.assert_array_equal(ev_p[name], ev_q[name], err_msg=name)
    np.testing.assert_array_equal(simulate(q, x).output, ev_p[p.output])


# ---------------------------------------------------------------------------
# generated programs: the conformance suite's, with every float, name and JSON field drawn
# ---------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=8)
SCALES = st.floats(min_value=5e-324, max_value=2.0**100)


@st.composite
def decorated(draw):
    """A conformance program with drawn scales, zero point, tensor names, population and
    projection names, options, provenance and (on one gate) a fit; integers unchanged."""
    program, x, _ = draw(programs())
    names = {p.name: draw(TEXT.filter(bool)) + f"#{i}" for i, p in enumerate(program.populations)}
    pops = []
    for p in program.populations:
        if isinstance(p, InputPop):
            pops.append(dataclasses.replace(p, name=names[p.name], scale=draw(st.floats(1e-30, 1e30)),
                                            zero_point=draw(st.floats(-1e300, 1e300))))
            continue
        c = p.shape[0]
        extra = {}
        if isinstance(p, GatePop):
            extra["activation"] = draw(TEXT)
            if draw(st.booleans()):
                extra["fit"] = {"fn": draw(TEXT), "range": sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=2,
                                                                                 max_size=2))),
                                "segments": 1, "bits": p.code.bits, "neurons_per_element": p.code.bits,
                                "max_err": draw(st.floats(0, 1)), "mean_err": draw(st.floats(0, 1)),
                                "slopes": [draw(st.floats(-10, 10))], "offset": draw(st.floats(-10, 10))}
        pops.append(dataclasses.replace(p, name=names[p.name], tensor=draw(TEXT),
                                        scale=np.array(draw(st.lists(SCALES, min_size=c, max_size=c)), np.float64),
                                        **extra))
    projs = [Projection(draw(TEXT.filter(bool)) + f"#{i}", names[pr.source], names[pr.target], pr.kind, pr.weight,
                        pr.exp, pr.in_shape, pr.out_shape, pr.attrs) for i, pr in enumerate(program.projections)]
    provenance = draw(st.dictionaries(TEXT.filter(lambda k: k not in ("source", "sha256", "amosc")), JSON,
                                      max_size=4))
    return Program(pops, projs, names[program.input], names[program.output],
                   draw(st.dictionaries(TEXT, JSON, max_size=4)), provenance), x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=decorated(), inline=st.sampled_from([asm.INLINE, 0, 3, None]))
def test_generated_programs_round_trip(case, inline):
    program, x = case
    text = asm.dumps(program, inline=inline)
    q = asm.parses(text)
    assert asm.dumps(q, inline=inline) == text
    assert_same_program(program, q, x)


def test_the_grammar_knows_every_manifest_field():
    """A field to_manifest writes that the text form cannot print fails loudly (dumps raises),
    never silently: every field of every kind is in HEADER or BODY."""
    from amosc.ir.serialize import to_manifest
    m, _ = to_manifest(asm.parses(HEAD + DEAD + TAIL + DEAD_PROJ + OUT_PROJ))
    for d in m["populations"] + m["projections"]:
        kind = d.get("kind") if d in m["populations"] else "projection"
        assert set(d) <= {"name", "kind", *asm.HEADER[kind], *asm.BODY[kind]}


# ---------------------------------------------------------------------------
# the shipped example
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example():
    calib = np.load(os.path.join(EXAMPLE, "calib.npy"))[:64]
    x = np.load(os.path.join(EXAMPLE, "test_x.npy"))[:8]
    return amosc.compile(os.path.join(EXAMPLE, "model.onnx"), calib, bits=2), x


def test_example_round_trips(example, tmp_path):
    program, x = example
    text = asm.dumps(program)
    q = asm.parses(text)
    assert_same_program(program, q, x)
    assert asm.equal(asm.parses(asm.dumps(program, inline=None)), program)
    assert any(" zlib:" in line for line in text.splitlines())   # big weights compressed
    assert "bias int32[16,28,28] " in text and "*784" in text     # per-channel biases as runs
    program.save(tmp_path / "m.amos")
    assert asm.equal(amosc.load(tmp_path / "m.amos"), q)


# ---------------------------------------------------------------------------
# a pass, text in and text out
# ---------------------------------------------------------------------------

HEAD = """\
amos-ir 1
program input="x" output="y"
option bits=2

input "x" shape=[2] start=0 bits=2 scale=0.5 zero_point=0.0

gate "h" shape=[2] start=2 activation="relu" tensor="t/h"
  code {"resets":[2,1],"thresholds":[2,1],"weights":[2,1]}
  scale [0.25,0.125]
  bias int32[2] 0 -1
"""
DEAD = """
gate "dead" shape=[1] start=2 activation="relu"
  code {"resets":[1],"thresholds":[1],"weights":[1]}
  scale [1.0]
  bias int32[1] 0
"""
TAIL = """
readout "y" shape=[1] start=4
  scale [0.5]
  bias int32[1] 3

projection "x->h" source="x" target="h" kind="dense" in_shape=[2] out_shape=[2]
  exp [0,0]
  weight int8[2,2] 1 0 0 1
"""
DEAD_PROJ = """
projection "x->dead" source="x" target="dead" kind="sparse" in_shape=[2] out_shape=[1]
  exp [0]
  weight csr[1,2]
  weight.data int8[1] 1
  weight.indices int32[1] 1
  weight.indptr int32[2] 0 1
"""
OUT_PROJ = """
projection "h->y" source="h" target="y" kind="dense" in_shape=[2] out_shape=[1]
  exp [-1]
  weight int8[1,2] 3 -2
"""


def test_a_pass_text_in_text_out():
    before = HEAD + DEAD + TAIL + DEAD_PROJ + OUT_PROJ
    assert asm.dumps(asm.parses(before)) == before              # the canonical form, as written
    after = asm.dumps(drop_dead_populations(asm.parses(before)))
    assert after == HEAD + TAIL + OUT_PROJ


def test_comments_blank_lines_and_field_order_are_free():
    text = ("# a hand-written program\n\n" + HEAD.replace('activation="relu" tensor="t/h"',
                                                          'tensor="t/h"   activation="relu"')
            + "  # the readout\n" + TAIL + OUT_PROJ).replace("bias int32[2] 0 -1", "bias int32[2] 0*1 -1")
    assert asm.dumps(asm.parses(text)) == HEAD + TAIL + OUT_PROJ


# ---------------------------------------------------------------------------
# errors name the line
# ---------------------------------------------------------------------------

GOOD = HEAD + TAIL + OUT_PROJ


def _line_of(text, needle):
    return next(i for i, line in enumerate(text.split("\n"), 1) if needle in line)


@pytest.mark.parametrize("old,new,needle", [
    ("amos-ir 1", "amos-ir 2", "text version 2 (newer"),
    ("amos-ir 1", "amos 1", "starts with 'amos-ir 1'"),
    ('program input="x"', 'program input=x', "not valid JSON"),
    ("option bits=2", "option bits=2 bits=3", "given twice"),
    ("option bits=2", "options bits=2", "unknown statement 'options'"),
    ("bias int32[2] 0 -1", "bias int32[2] 0", "1 values; a int32 array [2] has 2"),
    ("bias int32[2] 0 -1", "bias int32[2] 0 -1 4", "more than 2 values"),
    ("bias int32[2] 0 -1", "bias [0,-1]", "bias must be an integer array"),
    ("bias int32[2] 0 -1", "bias int32[2] 0 x", "'x' is not an integer"),
    ("weight int8[2,2] 1 0 0 1", "weight int8[2,2] 1 0 0 128", "value 128 outside int8"),
    ("weight int8[2,2] 1 0 0 1", "weight int8[2,2] zlib:AAAA", "zlib: data is damaged"),
    ("weight int8[2,2] 1 0 0 1", "weight int8[2,2] zlib:eNpjZGAAAAAGAAI=", "needs 4"),
    ("weight int8[2,2] 1 0 0 1", "weight int16[2,2] 1 0 0 1", "must be an int8"),
    ("weight int8[2,2] 1 0 0 1", "weight int8[4] 1 0 0 1", "int8 2-D"),
    ("weight int8[2,2] 1 0 0 1", "weight csr[2,2]", "needs lines weight.data"),
    ("exp [0,0]", "exp [0,0,0]", "field 'exp' must be a list of 2 integers"),
    ("exp [0,0]", "exp [0,0] 7", "unexpected text after"),
    ("exp [0,0]", "in_shape [2]", "no field line 'in_shape' (it goes on the header line)"),
    ('gate "h" shape=[2]', 'gate "h" scale=[1.0] shape=[2]', "no header field 'scale' (it goes on its own"),
    ('gate "h" shape=[2]', "gate h shape=[2]", "a name is not valid JSON"),
    ('"thresholds":[2,1]', '"thresholds":[0,1]', "in [1, 131071]"),
    ("scale [0.25,0.125]", "scale [0.25,-0.125]", "scale must be finite, > 0"),
    ('source="x" target="h"', 'source="x" target="nowhere"', "unknown population 'nowhere'"),
    ("scale [0.5]\n  bias int32[1] 3", "scale [0.5]\n  bias int32[1] 3\n  bias int32[1] 4", "given twice"),
    ('tensor="t/h"', 'tensor="t\\u0001h"', "control characters"),
])
def test_bad_text_is_refused_naming_the_line(old, new, needle):
    assert GOOD.count(old) == 1
    text = GOOD.replace(old, new)
    line = _line_of(text, new.split("\n")[-1])
    with pytest.raises(ArtifactError) as err:
        asm.parses(text, name="m.air")
    msg = str(err.value)
    assert needle in msg, msg
    assert msg.startswith(f"m.air:{line}: "), msg
    assert "\n" not in msg


def test_errors_without_a_line():
    with pytest.raises(ArtifactError, match=r"^m.air: empty"):
        asm.parses("# nothing\n\n", name="m.air")
    with pytest.raises(ArtifactError, match=r"^m.air:1: .*tabs"):
        asm.parses("amos-ir 1\t\n", name="m.air")
    with pytest.raises(ArtifactError, match="no 'program input=... output=...' line"):
        asm.parses("amos-ir 1\n")


def test_a_range_error_names_the_population_line():
    text = GOOD.replace("weight int8[1,2] 3 -2", "weight int8[1,2] 127 -128").replace("exp [-1]", "exp [8]")
    with pytest.raises(ArtifactError) as err:
        asm.parses(text, name="m.air")
    msg = str(err.value)
    lines = (_line_of(text, 'projection "h->y"'), _line_of(text, 'readout "y"'))
    assert msg.startswith(tuple(f"m.air:{n}: " for n in lines)), msg


def test_arrays_are_bounded_before_they_are_built(monkeypatch):
    monkeypatch.setenv("AMOSC_MAX_ARTIFACT_BYTES", "1000")
    text = GOOD.replace("weight int8[2,2] 1 0 0 1", "weight int8[2000,2000] 0*4000000")
    with pytest.raises(ArtifactError, match=r"^<text>:\d+: weight: .*past 1000 bytes"):
        asm.parses(text)


# ---------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("asm")
    model = save(small_cnn(seed=4), d / "model.onnx")
    np.save(d / "calib.npy", uniform_inputs((1, 12, 12), 32, seed=3))
    return d, model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_inspect_ir_and_assemble(files):
    d, model = files
    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m.amos", "--bits", 3)
    assert r.exit_code == 0, r.output
    r = invoke("inspect", d / "m.amos", "--format", "ir")
    assert r.exit_code == 0, r.output
    program = amosc.load(d / "m.amos")
    assert r.stdout == asm.dumps(program)
    (d / "m.air").write_text(r.stdout)
    r = invoke("assemble", d / "m.air", "-o", d / "m2.amos")
    assert r.exit_code == 0 and "wrote" in r.stdout, r.output
    assert asm.equal(amosc.load(d / "m2.amos"), program)
    r = invoke("assemble", d / "m.air")                            # default: SOURCE.amos
    assert r.exit_code == 0 and asm.equal(amosc.load(d / "m.amos"), program), r.output

    text = (d / "m.air").read_text()
    line = _line_of(text, "  bias int32")
    lines = text.split("\n")
    lines[line - 1] = lines[line - 1].replace("int32[", "int32[9,")
    (d / "bad.air").write_text("\n".join(lines))
    r = invoke("assemble", d / "bad.air", "-o", d / "bad.amos")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {d / 'bad.air'}:{line}: bias: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (d / "bad.amos").exists()
    (d / "bin.air").write_bytes(b"amos-ir 1\n\xff\n")
    r = invoke("assemble", d / "bin.air", "-o", d / "bad.amos")
    assert r.exit_code == 2 and "not UTF-8" in r.stderr and not (d / "bad.amos").exists()
    r = invoke("assemble", d / "none.air", "-o", d / "bad.amos")
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_dump_after(files):
    d, model = files
    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m3.amos", "--bits", 3,
               "--dump-after", "lower", "--dump-after", "schedule_asap", "--dump-after", "correct_floor_bias")
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert err.count("# ---- IR after ") == 3
    last = err[err.index("# ---- IR after correct_floor_bias ----\n"):].split("\n", 1)[1]
    assert asm.equal(asm.parses(last), amosc.load(d / "m3.amos"))   # the final program
    scheduled = err[err.index("# ---- IR after schedule_asap ----\n"):err.index("# ---- IR after correct")]
    before = asm.parses(scheduled.split("\n", 1)[1])
    assert "bias_correction" not in before.options and amosc.load(d / "m3.amos").options["bias_correction"] == 32
    lowered = err[err.index("# ---- IR after lower ----\n"):err.index("# ---- IR after schedule")]
    assert asm.parses(lowered.split("\n", 1)[1]).options == {}      # options are set after lower

    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m4.amos", "--bits", 3,
               "--dump-after", "all", "--dump-dir", d / "dumps", "--latency-budget", 9)
    assert r.exit_code == 0, r.output
    assert "IR after" not in r.stderr
    files_ = sorted(os.listdir(d / "dumps"))
    # every pass but relay_input, which runs only for a fitted unit whose input does not fit
    assert [f.split("-", 1)[1].rsplit(".", 1)[0] for f in files_] == [p for p in PASS_NAMES if p != "relay_input"]
    assert asm.equal(asm.parses((d / "dumps" / files_[-1]).read_text()), amosc.load(d / "m4.amos"))
    for f in files_:
        text = (d / "dumps" / f).read_text()
        if f.endswith(".air"):
            asm.parses(text)
        else:
            assert f.endswith(".tir") and text.startswith("tensor-graph")

    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m5.amos", "--dump-after", "lowr")
    assert r.exit_code == 2 and "unknown pass 'lowr'" in r.stderr
    assert "all, import" in r.stderr and "schedule_asap" in r.stderr and not (d / "m5.amos").exists()
    r = invoke("compile", model, "--calib", d / "calib.npy", "-o", d / "m5.amos", "--dump-dir", d / "x")
    assert r.exit_code == 2 and "--dump-dir needs --dump-after" in r.stderr
