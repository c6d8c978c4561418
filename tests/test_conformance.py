"""Backend conformance: every registered backend (amosc.backends.base.backend_names(): the
built-in reference, lava and lava-loihi, and any third-party one) runs

(a) small programs built directly from the IR nodes, whose spike rasters and readout integers
    are derived by hand from docs/ir.md in the comments and written down literally here, and
(b) hypothesis-generated small programs, compared with the reference simulator spike for
    spike (the reference itself with the level-1 integer evaluation).

A backend that is not usable here is skipped with its reason. A backend that refuses a program
by design must say so, naming the element it cannot build (``REFUSALS`` for the built-in ones);
any other failure fails.

Notation: a raster is (N inputs, K units, *shape), unit k (MSB first) of input n; codes c are
sum_k d_k z_k; y = bias + synaptic input; unit k fires when y - sum_{j<k} h_j z_j >= T_k.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amosc.backends.base import backend_names, get_backend
from amosc.backends.reference import simulate
from amosc.errors import BackendError, RangeError
from amosc.ir.nodes import Code, GatePop, InputPop, Program, Projection, ReadoutPop
from amosc.ir.semantics import (bit_planes, conv_output_hw, evaluate, max_compartments, spikes_input,
                                 unit_spikes)
from amosc.ir.verify import verify
from amosc.validate import compare_spikes

BACKENDS = backend_names()
BUILTIN = ("reference", "lava", "lava-loihi")


@dataclass
class Refusal:
    types: tuple
    pattern: str
    must: bool  # True: the backend must refuse; False: it may refuse, or run and conform


#: Programs the built-in backends refuse by design. lava-loihi builds single-compartment
#: LIFReset units only (docs/ir.md#compartments) and, today, binary source codes only (it
#: raises RangeError, not BackendError, for a non-binary one).
REFUSALS = {
    "lava-loihi": {
        "max_join": Refusal((BackendError,), r"'pool'.*compartments", must=True),
        "nonbinary_code": Refusal((BackendError, RangeError), r"g->out.*binary", must=False),
        "radix_code": Refusal((BackendError,), r"'g' is a radix/flash ADC", must=True),
    },
}


def usable(name):
    try:
        return get_backend(name)
    except BackendError as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


def names_an_element(msg: str, program) -> bool:
    return any(n in msg for n in [p.name for p in program.populations] + [p.name for p in program.projections])


def run_or_refuse(name, backend, program, x, interval, case=None):
    """The backend's RunResult, or None when it refused the program as it is allowed to."""
    refusal = REFUSALS.get(name, {}).get(case)
    try:
        res = backend.run(program, x, record=True, interval=interval)
    except (BackendError, RangeError) as exc:
        if refusal is not None and isinstance(exc, refusal.types):
            assert re.search(refusal.pattern, str(exc)), f"{name} refused {case} without naming it: {exc}"
            return None
        if name not in BUILTIN and isinstance(exc, BackendError) and names_an_element(str(exc), program) \
                and "run failed" not in str(exc):
            return None  # a third-party backend's refusal by design, naming what it cannot build
        raise
    if refusal is not None and refusal.must:
        pytest.fail(f"backend {name!r} ran {case!r}, which it refuses by design ({refusal.pattern})")
    return res


# ---------------------------------------------------------------------------
# (a) hand-checked programs
# ---------------------------------------------------------------------------

def i32(*v):
    return np.array(v, np.int32)


def dense(name, src, tgt, w, exp):
    w = np.array(w, np.int8)
    return Projection(name, src.name, tgt.name, "dense", w, np.array(exp, np.int64), tuple(src.shape),
                      tuple(tgt.input_shape))


@dataclass
class Case:
    program: Program
    x: np.ndarray
    rasters: dict            # gate population -> (N, K, *shape) literal
    output: np.ndarray       # readout integers (N, *shape)
    interval: int = 1
    extra: dict = field(default_factory=dict)


def case_dense_binary():
    inp = InputPop("in", (2,), 3, 1.0, 0.0, 0)                    # K=3: d = 4, 2, 1
    g = GatePop("g", (1,), Code.binary(2, 4, 0), i32(1), np.ones(1), start=3)  # T=(8,4) h=(8,4) d=(2,1)
    out = ReadoutPop("out", (1,), i32(0), np.ones(1), start=5)
    p = Program([inp, g, out], [dense("in->g", inp, g, [[1, 2]], [0]), dense("g->out", g, out, [[3]], [0])],
                "in", "out")
    # y = 1 + c0 + 2 c1 (binary input planes, exponent 0: the planes sum to M @ c)
    # x0 c=(1,2): y=6:  6>=8? no;  6>=4 yes           -> z=(0,1), code 1, out 3
    # x1 c=(7,3): y=14: 14>=8 yes; 14-8=6>=4 yes      -> z=(1,1), code 3, out 9
    # x2 c=(0,5): y=11: 11>=8 yes; 3>=4 no            -> z=(1,0), code 2, out 6
    return Case(p, np.array([[1, 2], [7, 3], [0, 5]], float),
                {"g": np.array([[[0], [1]], [[1], [1]], [[1], [0]]])}, np.array([[3], [9], [6]]))


def case_nonbinary_code():
    inp = InputPop("in", (3,), 2, 1.0, 0.0, 0)
    code = Code(thresholds=(6, 3, 2), resets=(5, 3, 1), weights=(3, -3, 1))
    g = GatePop("g", (2,), code, i32(0, 2), np.ones(2), start=2)
    out = ReadoutPop("out", (1,), i32(1), np.ones(1), start=5)
    p = Program([inp, g, out], [dense("in->g", inp, g, [[1, 2, 0], [0, 1, -1]], [0, 0]),
                                dense("g->out", g, out, [[1, 3]], [-1])], "in", "out")
    # y0 = c0 + 2 c1, y1 = 2 + c1 - c2; units T=(6,3,2), h=(5,3,1):
    # x0 c=(3,1,0): y=(5,3):  5 -> (0,1,1) [5>=3, 2>=2];  3 -> (0,1,0) [3>=3, 0<2]
    # x1 c=(0,3,1): y=(6,4):  6 -> (1,0,0) [6>=6, 1<3, 1<2]; 4 -> (0,1,0) [4>=3, 1<2]
    # x2 c=(2,0,3): y=(2,-1): 2 -> (0,0,1) [2<6, 2<3, 2>=2]; -1 -> (0,0,0)
    # readout: 1 + sum_k floor(d_k * (M @ z_k) / 2), M = [1 3], d = (3, -3, 1):
    # x0: z1=(1,1): floor(-3*4/2) = -6; z2=(1,0): floor(1/2) = 0          -> 1 - 6 + 0 = -5
    # x1: z0=(1,0): floor(3/2) = 1; z1=(0,1): floor(-9/2) = -5 (a floor)  -> 1 + 1 - 5 = -3
    # x2: z2=(1,0): floor(1/2) = 0                                         -> 1
    r = np.array([[[0, 0], [1, 1], [1, 0]],
                  [[1, 0], [0, 1], [0, 0]],
                  [[0, 0], [0, 0], [1, 0]]])
    return Case(p, np.array([[3, 1, 0], [0, 3, 1], [2, 0, 3]], float), {"g": r}, np.array([[-5], [-3], [1]]))


def case_gated_bias():
    inp = InputPop("in", (1,), 1, 1.0, 0.0, 0)                     # K=1: d = 1
    g = GatePop("g", (3,), Code.binary(2, 100, 50), i32(300, -300, 120), np.ones(3), start=1)
    out = ReadoutPop("out", (2,), i32(0, 5), np.ones(2), start=3)
    p = Program([inp, g, out], [dense("in->g", inp, g, [[1], [8], [-1]], [6, 6, 6]),
                                dense("g->out", g, out, [[1, 1, 0], [0, -1, 2]], [0, 0])], "in", "out")
    # T=(150,50), h=(200,100), d=(2,1). Biases 300 and 120 alone reach a threshold: the bias
    # must act only at the units' evaluation steps (on Loihi b - E < 0 plus an enable E:
    # E = 512, -256, 256), which interval 3 leaves idle steps around.
    # y = bias + 64 * c * (1, 8, -1):
    # x0 c=0: y=(300,-300,120): 300 -> (1,1) [300>=150, 100>=50]; -300 -> (0,0); 120 -> (0,1)
    # x1 c=1: y=(364,212,56):   364 -> (1,1); 212 -> (1,0) [212>=150, 12<50]; 56 -> (0,1)
    # codes x0 (3,0,1), x1 (3,2,1); out = (0,5) + M @ code: x0 (3, 5-0+2) = (3,7); x1 (5, 5-2+2) = (5,5)
    r = np.array([[[1, 0, 0], [1, 0, 1]],
                  [[1, 1, 0], [1, 0, 1]]])
    return Case(p, np.array([[0], [1]], float), {"g": r}, np.array([[3, 7], [5, 5]]), interval=3)


def case_chain_with_delay():
    inp = InputPop("in", (2,), 2, 1.0, 0.0, 0)
    g1 = GatePop("g1", (2,), Code.binary(2, 2, 1), i32(0, -1), np.ones(2), start=3)   # ASAP 2: one step late
    g2 = GatePop("g2", (1,), Code.binary(3, 1, 0), i32(2), np.ones(1), start=7)      # ASAP 5: two steps late
    out = ReadoutPop("out", (1,), i32(-2), np.ones(1), start=10)
    p = Program([inp, g1, g2, out],
                [dense("in->g1", inp, g1, [[1, 0], [1, 1]], [0, 0]),
                 dense("g1->g2", g1, g2, [[1, -1]], [1]),
                 dense("in->g2", inp, g2, [[1, 1]], [0]),        # a shortcut: delays 6 - j + k
                 dense("g2->out", g2, out, [[3]], [-1])], "in", "out")
    # g1: T=(3,1), h=(4,2), d=(2,1); y = (c0, c0 + c1 - 1)
    # x0 c=(2,1): y=(2,2): 2 -> (0,1) [2<3, 2>=1] twice          codes (1,1)
    # x1 c=(3,3): y=(3,5): 3 -> (1,0) [3>=3, -1<1]; 5 -> (1,1)   codes (2,3)
    # x2 c=(0,2): y=(0,1): 0 -> (0,0); 1 -> (0,1)                codes (0,1)
    # g2: T=(4,2,1), h=(4,2,1), d=(4,2,1); y = 2 + 2 (code0 - code1) + c0 + c1
    # x0: 2 + 0 + 3 = 5 -> (1,0,1); x1: 2 - 2 + 6 = 6 -> (1,1,0); x2: 2 - 2 + 2 = 2 -> (0,1,0)
    # out = -2 + sum_k floor(d_k * 3 / 2) z_k, planes 6, 3, 1 (floor 1.5):
    # x0: -2 + 6 + 1 = 5; x1: -2 + 6 + 3 = 7; x2: -2 + 3 = 1
    g1r = np.array([[[0, 0], [1, 1]], [[1, 1], [0, 1]], [[0, 0], [0, 1]]])
    g2r = np.array([[[1], [0], [1]], [[1], [1], [0]], [[0], [1], [0]]])
    return Case(p, np.array([[2, 1], [3, 3], [0, 2]], float), {"g1": g1r, "g2": g2r},
                np.array([[5], [7], [1]]))


def case_max_join():
    inp = InputPop("in", (4,), 2, 1.0, 0.0, 0)
    pool = GatePop("pool", (2,), Code.binary(2, 1, 0), i32(0, 1), np.ones(2), start=2, compartments=2)
    out = ReadoutPop("out", (2,), i32(0, -1), np.ones(2), start=4)
    p = Program([inp, pool, out],
                [dense("in->pool", inp, pool, [[1, 0, 0, 0], [0, 1, 0, 0], [-1, 0, 1, 0], [0, -1, 0, 1]],
                       [0, 0, 0, 0]),  # one exponent per compartment row
                 dense("pool->out", pool, out, [[1, 0], [1, 1]], [0, 0])], "in", "out")
    # compartment i of channel c at row 2c + i: channel 0 = max(c0, c1),
    # channel 1 = 1 + max(c2 - c0, c3 - c1); T=(2,1), h=(2,1): code clip(y, 0, 3)
    # x0 c=(1,3,2,0): y0 = 3 -> (1,1); y1 = 1 + max(1,-3) = 2 -> (1,0)    (a sum would give -1)
    # x1 c=(2,0,1,3): y0 = 2 -> (1,0); y1 = 1 + max(-1,3) = 4 -> (1,1)    (saturates at 3)
    # x2 c=(3,3,0,1): y0 = 3 -> (1,1); y1 = 1 + max(-3,-2) = -1 -> (0,0)
    # codes (3,2), (2,3), (3,0); out = (0,-1) + (a, a + b): (3,4), (2,4), (3,2)
    r = np.array([[[1, 1], [1, 0]], [[1, 1], [0, 1]], [[1, 0], [1, 0]]])
    return Case(p, np.array([[1, 3, 2, 0], [2, 0, 1, 3], [3, 3, 0, 1]], float), {"pool": r},
                np.array([[3, 4], [2, 4], [3, 2]]))


def case_negative_weights_floor_shift():
    inp = InputPop("img", (1, 2, 2), 2, 1.0, 0.0, 0)
    c = GatePop("c", (1, 2, 2), Code.binary(2, 2, 0), np.array([[[0, 1], [2, 0]]], np.int32), np.ones(1),
                start=2)
    out = ReadoutPop("out", (2,), i32(1, -4), np.ones(2), start=4)
    conv = Projection("img->c", "img", "c", "conv", np.array([[[[3, -2], [-1, 4]]]], np.int8),
                      np.array([-1]), (1, 2, 2), (1, 2, 2),
                      {"strides": (1, 1), "pads": (1, 1, 0, 0), "dilations": (1, 1), "groups": 1})
    p = Program([inp, c, out], [conv, dense("c->out", c, out, [[-3, 1, 0, 2], [1, 2, -1, -1]], [-2, 0])],
                "img", "out")
    # ONNX cross-correlation, pads top/left 1: with input [[a, b], [c, d]],
    #   (M z)[0,0] = 4a, [0,1] = -a + 4b, [1,0] = -2a + 4c, [1,1] = 3a - 2b - c + 4d
    # exponent -1: plane 0 (d=2) exact, plane 1 (d=1) floor((M z1) / 2); T=(4,2), h=(4,2)
    # x0 [[1,2],[3,0]]: z0 = [[0,1],[1,0]] -> (0,4,4,-3); z1 = [[1,0],[1,0]] -> M z1 = (4,-1,2,2),
    #   floors (2,-1,1,1); y = (0,4,4,-3) + (2,-1,1,1) + bias (0,1,2,0) = (2,4,7,-2)
    #   units: 2 -> (0,1); 4 -> (1,0); 7 -> (1,1); -2 -> (0,0); codes (1,2,3,0)
    # x1 [[3,1],[0,2]]: z0 = [[1,0],[0,1]] -> (4,-1,-2,7); z1 = [[1,1],[0,0]] -> M z1 = (4,3,-2,1),
    #   floors (2,1,-1,0); y = (6,1,-1,7): 6 -> (1,1); 1 -> (0,0); -1 -> (0,0); 7 -> (1,1); codes (3,0,0,3)
    # readout row 0, exponent -2: floor(2 (M z0) / 4) + floor((M z1) / 4), M = (-3, 1, 0, 2):
    #   x0: M z0 = 1 -> 0; M z1 = -3 -> floor(-0.75) = -1; 1 + 0 - 1 = 0
    #   x1: M z0 = -1 -> floor(-0.5) = -1; M z1 = -1 -> -1; 1 - 2 = -1
    # row 1, exponent 0: -4 + (1, 2, -1, -1) @ code: x0 -4 + 1 + 4 - 3 = -2; x1 -4 + 3 - 3 = -4
    r = np.array([[[[[0, 1], [1, 0]]], [[[1, 0], [1, 0]]]],
                  [[[[1, 0], [0, 1]]], [[[1, 0], [0, 1]]]]])
    return Case(p, np.array([[[[1, 2], [3, 0]]], [[[3, 1], [0, 2]]]], float), {"c": r},
                np.array([[0, -2], [-1, -4]]))


def case_zero_projection():
    inp = InputPop("in", (2,), 2, 1.0, 0.0, 0)
    g = GatePop("g", (2,), Code.binary(2, 3, 1), i32(7, 3), np.ones(2), start=2)
    out = ReadoutPop("out", (1,), i32(4), np.ones(1), start=4)
    p = Program([inp, g, out], [dense("in->g", inp, g, [[0, 0], [0, 0]], [0, 0]),
                                dense("g->out", g, out, [[0, 0]], [0]),
                                dense("in->out", inp, out, [[1, -2]], [0])], "in", "out")
    # projections whose weights are all zero are valid IR (the compiler folds such gates away,
    # a hand-written or transformed program need not): g fires on its bias alone.
    # T=(5,2), h=(6,3): y=7 -> (1,0) [7>=5, 1<2], code 2; y=3 -> (0,1) [3<5, 3>=2], code 1
    # out = 4 + c0 - 2 c1: x0 (3,1) -> 5; x1 (0,2) -> 0
    r = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 1]]])
    return Case(p, np.array([[3, 1], [0, 2]], float), {"g": r}, np.array([[5], [0]]))


def case_radix_code():
    inp = InputPop("in", (2,), 3, 1.0, 0.0, 0)                    # K=3: d = 4, 2, 1
    # a 3-bit radix-4 ADC, theta 2, offset 1: stage 0 = 3 units of weight 2 (T = 3, 7, 11,
    # h = 4), stage 1 = 1 unit of weight 1 (T = 1, h = 2): code clip(floor((y + 1) / 2), 0, 7)
    code = Code.radix(3, 2, 2, 1)
    assert code.thresholds == (3, 7, 11, 1) and code.steps == (0, 0, 0, 1)
    g = GatePop("g", (1,), code, i32(-2), np.ones(1), start=3)
    out = ReadoutPop("out", (1,), i32(0), np.ones(1), start=6)
    p = Program([inp, g, out], [dense("in->g", inp, g, [[1, 2]], [0]), dense("g->out", g, out, [[1]], [0])],
                "in", "out")
    # y = -2 + c0 + 2 c1; units of step 0 fire together, step 1 sees y - 4 * (their count):
    # x0 c=(1,2): y=3:  (1,0,0) [3>=3]; 3-4=-1 <1 -> 0      code 2, out 2
    # x1 c=(7,3): y=11: (1,1,1); 11-12=-1 -> 0               code 6, out 6
    # x2 c=(0,5): y=8:  (1,1,0); 8-8=0 -> 0                  code 4, out 4
    # x3 c=(2,0): y=0:  (0,0,0); 0 -> 0                      code 0, out 0
    # x4 c=(4,2): y=6:  (1,0,0); 6-4=2 >= 1 -> 1             code 3, out 3
    return Case(p, np.array([[1, 2], [7, 3], [0, 5], [2, 0], [4, 2]], float),
                {"g": np.array([[[1], [0], [0], [0]], [[1], [1], [1], [0]], [[1], [1], [0], [0]],
                                [[0], [0], [0], [0]], [[1], [0], [0], [1]]])},
                np.array([[2], [6], [4], [0], [3]]))


CASES = {f.__name__[5:]: f for f in (case_dense_binary, case_radix_code, case_nonbinary_code, case_gated_bias,
                                     case_chain_with_delay, case_max_join, case_negative_weights_floor_shift,
                                     case_zero_projection)}

#: Known failures, each (backend, case) -> reason; strict, so a fix shows up as XPASS.
KNOWN: dict = {}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_checked_cases_are_valid_programs_and_level_1_agrees(case):
    """The literal rasters and outputs are also what the level-1 evaluation computes."""
    c = CASES[case]()
    verify(c.program)
    ev = evaluate(c.program, c.x)
    np.testing.assert_array_equal(ev[c.program.output], c.output)
    for name, r in c.rasters.items():
        pop = c.program.pop(name)
        w = np.asarray(pop.code.weights).reshape((1, -1) + (1,) * len(pop.shape))
        np.testing.assert_array_equal((r * w).sum(1), ev[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_hand_checked_program(backend, case, request):
    if (backend, case) in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[backend, case], strict=True))
    c = CASES[case]()
    b = usable(backend)
    res = run_or_refuse(backend, b, c.program, c.x, c.interval, case)
    if res is None:
        return
    assert res.output.dtype.kind == "i"
    np.testing.assert_array_equal(res.output, c.output, err_msg="readout integers")
    np.testing.assert_allclose(res.logits, c.output * c.program.output_pop.scale)
    for name, expected in c.rasters.items():
        assert name in res.rasters, f"{backend} recorded no raster for {name!r}"
        np.testing.assert_array_equal(res.rasters[name], expected, err_msg=name)
        np.testing.assert_array_equal(res.spikes[name], expected.reshape(len(c.x), -1).sum(1), err_msg=name)
    assert res.extra.get("spurious_spikes", 0) == 0


# ---------------------------------------------------------------------------
# (b) generated programs, compared with the reference spike for spike
# ---------------------------------------------------------------------------

#: Examples per backend (a Lava run of these small programs takes ~0.1-0.5 s).
EXAMPLES = {"reference": 40, "lava": 20, "lava-loihi": 8}
#: What each built-in backend's generated programs may contain (lava-loihi: REFUSALS).
FEATURES = {"lava-loihi": {"nonbinary": False, "compartments": False, "steps": False}}


@st.composite
def codes(draw, nonbinary, spread, steps=True):
    """A K-unit code for inputs y spread over about [-spread, 2 spread]: a binary ADC whose
    2^K - 1 steps cover most of it, (steps) the same ADC as a radix / flash structure, or
    (nonbinary) thresholds, resets and weights at random."""
    if nonbinary and draw(st.booleans()):
        k = draw(st.integers(1, 3))
        top = max(2, 2 * spread)
        return Code(tuple(draw(st.lists(st.integers(1, top), min_size=k, max_size=k))),
                    tuple(draw(st.lists(st.integers(-(top // 4), top), min_size=k, max_size=k))),
                    tuple(draw(st.lists(st.integers(-4, 4), min_size=k, max_size=k))))
    k = draw(st.integers(1, 4))
    theta = max(1, -(-5 * spread // 2**(k + 1)) + draw(st.integers(-1, 1)))
    r = draw(st.integers(1, k)) if steps else 1
    return Code.radix(k, r, theta, draw(st.integers(0, theta - 1)))


@st.composite
def programs(draw, nonbinary=True, compartments=True, steps=True):
    """A small random program: an input (flat or (C, H, W)), 1-3 gate populations, each fed by
    its predecessor (conv with strides, pads, dilations and groups; dense; sparse) and maybe
    by an earlier population or a second projection from the same source (max-join
    compartments, binary or arbitrary codes, random biases, exponents and extra delays), and
    a readout. Each gate's bias and code are fitted
    to its level-1 input on the drawn inputs x so that codes are neither all silent nor all
    saturated (on K >= 2 ADC gates about 40% intermediate, 12% saturated, 47% silent).
    Returns (program, x, interval)."""
    ints = lambda lo, hi: draw(st.integers(lo, hi))  # noqa: E731
    image = draw(st.booleans())
    shape = (ints(1, 2), ints(2, 4), ints(2, 4)) if image else (ints(1, 5),)
    pops = [InputPop("in", shape, ints(1, 4), 1.0, 0.0, 0)]
    projs = []
    rng = np.random.default_rng(ints(0, 2**32 - 1))
    x = rng.integers(0, 2**pops[0].bits, (ints(1, 4), *shape))
    spikes = {"in": bit_planes(x, pops[0].bits)}  # level 1, to fit each gate's code to its input

    def weights(rows, cols):  # leaning positive (fewer silent units), never all zero (case_zero_projection)
        w = rng.integers(-3, 6, (rows, cols)) * (rng.random((rows, cols)) < 0.6)
        w.flat[rng.integers(w.size)] = rng.choice([-2, -1, 1, 2, 3])
        return w.astype(np.int8)

    def exps(channels, src):
        top = max(abs(d) for d in src.code.weights)
        hi = min(0, 8 - max(top.bit_length() - 1, 0))
        return rng.integers(-5, hi + 1, channels).astype(np.int64)

    def flat_projection(name, src, tgt_input_shape):
        n_out, n_in = int(np.prod(tgt_input_shape)), int(np.prod(src.shape))
        w = weights(n_out, n_in)
        kind = "sparse" if draw(st.booleans()) else "dense"
        return Projection(name, src.name, "?", kind, sp.csr_matrix(w) if kind == "sparse" else w,
                          exps(tgt_input_shape[0], src), tuple(src.shape), tuple(tgt_input_shape))

    for i in range(ints(1, 3)):
        src = pops[-1]
        m = ints(1, 2) if compartments else 1
        name = f"g{i}"
        if len(src.shape) == 3 and draw(st.booleans()):
            kh, kw, s, dil = ints(1, 2), ints(1, 2), ints(1, 2), ints(1, 2)
            pads = tuple(ints(0, 1) for _ in range(4))
            hw = conv_output_hw(src.shape[1:], (kh, kw), (s, s), pads, (dil, dil))
            if min(hw) < 1:
                s, dil, pads = 1, 1, (1, 1, 1, 1)
                hw = conv_output_hw(src.shape[1:], (kh, kw), (s, s), pads, (dil, dil))
            c_out = ints(1, 2)
            groups = src.shape[0] if (c_out * m) % src.shape[0] == 0 and draw(st.booleans()) else 1
            in_shape = (c_out * m, *hw)
            cig = src.shape[0] // groups
            w = np.stack([weights(cig, kh * kw).reshape(cig, kh, kw) for _ in range(c_out * m)])
            first = Projection(f"{src.name}->{name}", src.name, name, "conv", w, exps(c_out * m, src),
                               tuple(src.shape), in_shape,
                               {"strides": (s, s), "pads": pads, "dilations": (dil, dil), "groups": groups})
            shape = (c_out, *hw)
        else:
            shape = (ints(1, 4),) if draw(st.booleans()) or len(src.shape) == 1 else (1, 2, 2)
            in_shape = (shape[0] * m, *shape[1:])
            first = flat_projection(f"{src.name}->{name}", src, in_shape)
        incoming = [first]
        extra = draw(st.sampled_from(["none", "earlier", "second"]))
        if extra != "none":
            other = pops[ints(0, len(pops) - 1)] if extra == "earlier" else src
            incoming.append(flat_projection(f"{other.name}->{name}#2", other, in_shape))
        by_name = {p.name: p for p in pops}
        a = max_compartments(sum(spikes_input(pr, by_name[pr.source].code, spikes[pr.source])
                                 for pr in incoming), m)
        mid = int(np.median(a))
        spread = max(1, int(np.percentile(np.abs(a - mid), 75)))
        bias = np.clip(rng.integers(0, spread + 1, shape) - mid, -700, 700)
        if draw(st.booleans()):  # a few large biases: enable weights E beyond 2^8
            bias = np.where(rng.random(shape) < 0.2, rng.integers(-700, 701, shape), bias)
        bias = bias.astype(np.int32)
        code = draw(codes(nonbinary, spread, steps))
        spikes[name] = unit_spikes(code, bias + a)
        start = max(by_name[pr.source].start + by_name[pr.source].code.depth for pr in incoming) + ints(0, 2)
        pops.append(GatePop(name, shape, code, bias, np.ones(shape[0]), start=start, compartments=m))
        projs += [Projection(pr.name, pr.source, name, pr.kind, pr.weight, pr.exp, pr.in_shape, pr.out_shape,
                             pr.attrs) for pr in incoming]
    last = pops[-1]
    out = (ints(1, 3),)
    proj = flat_projection(f"{last.name}->out", last, out)
    readout = ReadoutPop("out", out, rng.integers(-50, 51, out).astype(np.int32), np.ones(out[0]),
                         start=last.start + last.code.depth + ints(0, 1))
    pops.append(readout)
    projs.append(Projection(proj.name, proj.source, "out", proj.kind, proj.weight, proj.exp, proj.in_shape,
                            proj.out_shape))
    program = Program(pops, projs, "in", "out")
    verify(program)
    return program, x.astype(np.float64), ints(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_programs_equal_reference_spike_for_spike(backend):
    b = usable(backend)
    features = FEATURES.get(backend, {})

    @settings(max_examples=EXAMPLES.get(backend, 4), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=programs(nonbinary=features.get("nonbinary", True),
                         compartments=features.get("compartments", True),
                         steps=features.get("steps", True)))
    def check(case):
        program, x, interval = case
        if backend == "reference":  # the oracle itself: against the level-1 integer evaluation
            res = simulate(program, x, record=True, interval=interval)
            ev = evaluate(program, x)
            np.testing.assert_array_equal(res.output, ev["out"])
            for pop in program.populations[1:-1]:
                w = np.asarray(pop.code.weights).reshape((1, -1) + (1,) * len(pop.shape))
                np.testing.assert_array_equal((res.rasters[pop.name].astype(np.int64) * w).sum(1), ev[pop.name])
            assert res.extra["spurious_spikes"] == 0
            return
        res = run_or_refuse(backend, b, program, x, interval)
        if res is None:
            return
        ref = simulate(program, x, record=True, interval=interval)
        rep = compare_spikes(program, res, ref, backend)
        assert rep.equal, rep.render()
        assert rep.spikes_compared > 0
        for name in ref.spikes:
            np.testing.assert_array_equal(res.spikes[name], ref.spikes[name], err_msg=name)
        assert res.extra.get("spurious_spikes", 0) == 0

    check()
