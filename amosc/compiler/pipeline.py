"""The compile pipeline: import -> calibrate -> lower -> passes -> verified Program."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import CalibrationError, CalibrationWarning, IRError, ModelError, PrecisionWarning, RangeError
from ..ir.nodes import Program
from ..ir.semantics import max_compartments
from ..ir.verify import verify
from . import resources
from .calibrate import (FitRange, NormStats, channel_rows, check_calibration, check_input_array, check_raw_calibration,
                        fit_sample, mse_fn_range, scale_from)
from .expand import expand_fitted as expand, expand_products as expand_gated
from .floor_bias import correct_floor_bias
from .importer import import_model
from .passes import DEFAULT_PASSES
from .quantize import Options, lower
from .resources import Limits
from .structures import apply_plan, optimize, program_nodes
from .tensor_passes import IMPORT_PASSES, relay_input as _relay_input, run_tensor_passes

#: Every pass ``compile_model(dump=...)`` reports, in pipeline order (tensor IR, then integer IR).
PASS_NAMES = ("import", *(p.__name__ for p in IMPORT_PASSES), "relay_input", "expand_products", "expand_fitted",
              "lower",
              *(p.__name__ for p in DEFAULT_PASSES), "choose_structures", "correct_floor_bias")

MAX_CALIB_VALUES = 4_000_000  # per tensor; larger tensors are subsampled deterministically


def run_passes(program: Program, passes=DEFAULT_PASSES, dump=None) -> Program:
    """Run integer-IR ``passes`` in order, verifying after each (naming the pass that broke
    the program); ``dump(name, program)`` is called after each pass."""
    done = []
    for p in passes:
        program = p(program)
        try:
            verify(program, ranges=False)
        except (IRError, RangeError) as exc:
            raise IRError(f"pass {p.__name__} (after {[d.__name__ for d in done]}) produced an "
                          f"invalid program: {exc}") from exc
        done.append(p)
        if dump:
            dump(p.__name__, program)
    verify(program)
    return program


CALIB_BATCH = 64
#: Bytes the float64 pre-activations and activations of one calibration batch may take: an
#: ImageNet-size graph holds tens of millions of values per image, so its batch is smaller.
CALIB_BATCH_BYTES = 1 << 30


def calib_batch(fg) -> int:
    """Images per calibration batch: CALIB_BATCH, fewer when one image's float64 values
    (every gate's pre-activation and activation) would exceed CALIB_BATCH_BYTES per batch."""
    per_image = 8 * sum(int(np.prod(g.expr.shape)) + int(np.prod(g.shape)) for g in fg.gates)
    return int(max(1, min(CALIB_BATCH, CALIB_BATCH_BYTES // max(per_image, 1))))


def import_graph(model_path, maxpool: str = "tree", dump=None):
    """Import an ONNX model to the tensor IR and run the import passes (verified after
    the importer and after each pass; ``dump`` as in :func:`compile_model`)."""
    return run_tensor_passes(import_model(model_path, maxpool=maxpool), IMPORT_PASSES, dump, after="import")


def calibrate(fg, calib: np.ndarray, opts: Options, precisions=None):
    """Ranges of every gate from the imported float graph run on the calibration data:
    ``alphas[name]`` (per-channel upper range of ReLU-family gates), ``ranges[name]``
    (a :class:`~.calibrate.FitRange`: (lo, hi) of a fitted gate's input per channel, see
    :func:`fitted_range`, and a sample of that input for the fit's mean-error correction; of
    the balanced input for product squares) and ``balance[name]`` (a :class:`PairCalibration`: the
    per-channel factor of a product's square pair, see :func:`balance_pair`, and its factors'
    ranges). A gate's range is set for its own K
    (``gate.bits``, else ``opts.bits``); with ``precisions`` (a list of K) the float graph runs
    once and {K: (alphas, ranges, balance, in_range)} is returned, every gate without its own
    bits calibrated for that K (for :mod:`.precision`)."""
    from ..progress import progress
    from ..ir.tensor import float_eval
    n = calib.shape[0]
    paired = fg.squares
    # the samples kept per gate: whole samples, evenly spaced, at most MAX_CALIB_VALUES values
    # (a product's square pair keeps all: its balance is set from every sample first)
    stride = {}
    for g in fg.gates:
        per_sample = int(np.prod(g.shape))
        big = g.name not in paired and n * per_sample > MAX_CALIB_VALUES
        stride[g.name] = -(-n * per_sample // MAX_CALIB_VALUES) if big else 1
    samples: dict[str, list] = {g.name: [] for g in fg.gates}
    peak = {g.name: -np.inf for g in fg.gates}
    stats = NormStats(fg.first_norm)
    batch = calib_batch(fg)
    for i in progress(range(0, n, batch), desc="calibrating", total=-(-n // batch)):
        pre: dict = {}
        vals = float_eval(fg, calib[i:i + batch].astype(np.float64), pre_values=pre)
        stats.add(vals)
        for g in fg.gates:
            s = stride[g.name]  # pooled pre-activations: the range of the max
            samples[g.name].append(max_compartments(pre[g.name], g.compartments)[(-i) % s::s].astype(np.float32))
            peak[g.name] = max(peak[g.name], float(pre[g.name].max()))
    check_calibration(fg, peak, stats)
    balance = {}
    for g in fg.gates:
        if g.partner is not None:
            u, v = np.concatenate(samples[g.name]), np.concatenate(samples[g.partner])
            ranges_xs = None
            if g.factors is not None:   # x = u + v and s = u - v, per channel (for a gated product)
                ranges_xs = tuple((r.min(axis=1), r.max(axis=1)) for r in (channel_rows(u + v), channel_rows(u - v)))
            a, u, w = balance_pair(u, v)
            balance[g.name] = PairCalibration(a, *(ranges_xs or (None, None)))
            samples[g.name], samples[g.partner] = [u], [w]
    for g in fg.gates:
        if g.name in samples:
            v = np.concatenate(samples.pop(g.name))
            if g.name in paired and v.size > MAX_CALIB_VALUES:  # a balanced square: subsample it now
                v = v[:: -(-v.size // MAX_CALIB_VALUES)]
            samples[g.name] = v
    x = calib.astype(np.float64)
    if opts.calibration in ("max", "mse"):
        in_range = (float(x.min()), float(x.max()))
    else:
        in_range = (float(np.percentile(x, 100 - opts.percentile)), float(np.percentile(x, opts.percentile)))

    kept = {g.name: fit_sample(samples[g.name]) for g in fg.gates if g.fn is not None}

    def at(k):
        alphas, ranges = {}, {}
        for g in fg.gates:
            if g.compartments > 1 and g.alpha_from is not None:  # a pool of codes: its source's step
                continue
            bits = g.bits or k   # a gate's own precision (per-layer K), else the program's
            if g.fn is not None:
                ranges[g.name] = FitRange(*fitted_range(samples[g.name], opts, g.fn, bits), kept[g.name])
            else:
                alphas[g.name] = scale_from(samples[g.name], opts.calibration, opts.percentile,
                                            opts.granularity == "channel", bits)
        return alphas, ranges, balance, in_range
    if precisions is None:
        return at(opts.bits)
    return {k: at(k) for k in precisions}


@dataclass(frozen=True)
class PairCalibration:
    """What calibration found for a product's square pair: ``a`` the per-channel balance factor
    (:func:`balance_pair`); for a product with a per-channel factor (``Gate.factors``) the
    per-channel (lo, hi) of x and of s over the calibration data (for :func:`.expand.expand_products`)."""
    a: np.ndarray
    x_range: tuple | None = None
    s_range: tuple | None = None


def balance_pair(u: np.ndarray, v: np.ndarray):
    """For a product x y = u^2 - v^2 with u = (x + y) / 2, v = (x - y) / 2 (samples
    (N, C, ...)): per channel the a with a |x| and |y| / a of equal range, and the
    balanced inputs u' = (a x + y / a) / 2, v' = (a x - y / a) / 2 (u'^2 - v'^2 = x y
    still). Unbalanced, a product of a large x and a small y is the small difference of
    two large squares; balanced, each square spans about 4 max|x y|."""
    x, y = u + v, u - v
    c = u.shape[1]
    ax, ay = (np.abs(channel_rows(t)).max(axis=1) for t in (x, y))
    ok = (ax > 0) & (ay > 0)
    a = np.where(ok, np.sqrt(np.where(ok, ay, 1.0) / np.where(ok, ax, 1.0)), 1.0)
    ab = a.reshape((1, c) + (1,) * (u.ndim - 2))
    return a, (ab * x + y / ab) / 2, (ab * x - y / ab) / 2


def fitted_range(v: np.ndarray, opts: Options, fn, bits: int | None = None) -> tuple:
    """(lo, hi), each (C,): the input range a fitted gate of ``fn`` is fitted on, per
    channel of the samples v (N, C, ...) (the layer's range for every channel with
    granularity 'layer'): min/max with 'max' calibration, the least expected K-bit error
    with 'mse' (:func:`~.calibrate.mse_fn_range`), else the (100 - p, p) percentiles."""
    rows = channel_rows(v).astype(np.float64)
    if opts.granularity == "layer":
        rows = rows.reshape(1, -1)
    if opts.calibration == "max":
        lo, hi = rows.min(axis=1), rows.max(axis=1)
    elif opts.calibration == "mse":
        lo, hi = np.array([mse_fn_range(fn, r, bits or opts.bits) for r in rows]).T
    else:
        lo, hi = np.percentile(rows, [100 - opts.percentile, opts.percentile], axis=1)
    c = v.shape[1]
    return np.broadcast_to(lo, (c,)).copy(), np.broadcast_to(hi, (c,)).copy()


def compile_model(model_path, calib: np.ndarray, opts: Options | None = None, *,
                  limits: Limits | None = None, strict: bool = False, calib_name: str = "",
                  dump=None, latency_budget: int | None = None, neuron_budget: int | None = None,
                  max_drop: float | None = None, validation: tuple | None = None, log=None,
                  **kw) -> Program:
    """Compile an ONNX classifier to a verified AMOS program.

    ``calib``: float array (N, *input_shape) of representative inputs (``calib_name``:
    the file it came from, for messages). Keyword
    arguments are :class:`Options` fields (bits, calibration, percentile, rounding).
    ``limits``: neuron and memory limits checked before the program is built
    (:class:`~.resources.Limits`). Suspicious calibration data (integer, constant, out of
    the model's trained input distribution, gates that never fire) is reported as a
    :class:`~amosc.errors.CalibrationWarning`; ``strict=True`` makes it a CalibrationError.
    ``dump(name, ir)``: called with the IR after every pass of either level (a
    :class:`~amosc.ir.tensor.TensorGraph` or a :class:`~amosc.ir.nodes.Program`; names in
    :data:`PASS_NAMES`). ``latency_budget`` (steps) / ``neuron_budget``: choose a structure
    per ADC gate (SAR, radix-2^r, flash; :mod:`.structures`) for the fewest neurons within
    the latency budget, or the lowest latency within the neuron budget, at the same
    precision; an impossible budget raises ModelError naming the best achievable value.
    ``max_drop`` (top-1 points against the float model on ``validation`` = (inputs, labels)):
    lower some gates' K where the measured loss is smallest (:mod:`.precision`). A
    ``neuron_budget`` with ``validation`` = (inputs, labels or None) and no ``max_drop``: the
    per-layer precision (K at most ``opts.bits``) with the highest measured score within the
    budget (:func:`.precision.fit_budget`; accuracy with labels, else agreement with the float
    model), then the structures. ``log(line)`` receives the searches' progress and reports.
    Last, the ``correct_floor_bias`` pass (:mod:`.floor_bias`) compensates the plane floors'
    mean in every bias, measured on the first ``opts.bias_correction`` calibration inputs (0:
    not run).
    """
    import warnings
    opts = opts or Options(**kw)
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", CalibrationWarning)
        try:
            if max_drop is None and neuron_budget is not None and validation is not None:
                from .precision import fit_budget
                program, report = fit_budget(model_path, calib, *validation, neuron_budget, opts,
                                             limits=limits, calib_name=calib_name, log=log, dump=dump)
                if log:
                    log(report.render())
            elif max_drop is None:
                program = _compile(model_path, calib, opts, limits or Limits(), calib_name, dump)
            else:
                if validation is None:
                    raise ModelError("--max-drop needs validation inputs and their labels")
                from .precision import choose_precision
                program, report = choose_precision(model_path, calib, *validation, max_drop, opts,
                                                   limits=limits, calib_name=calib_name, log=log, dump=dump)
                if log:
                    log(report.render())
        except CalibrationWarning as w:
            raise CalibrationError(f"{w} (an error with --strict)") from None
    if latency_budget is not None or neuron_budget is not None:
        program = choose_structures(program, latency_budget, neuron_budget, dump)
    return floor_bias(program, calib, opts.bias_correction, calib_name, dump)


def floor_bias(program: Program, calib: np.ndarray, images: int, calib_name: str = "", dump=None) -> Program:
    """The ``correct_floor_bias`` pass (:func:`.floor_bias.correct_floor_bias`) on the first
    ``images`` calibration inputs, verified; the program itself when ``images`` is 0."""
    if not images:
        return program
    x = check_input_array(calib, program.input_pop.shape, "calibration data", calib_name)
    corrected, _ = correct_floor_bias(program, x, images)
    verify(corrected)
    if dump:
        dump("correct_floor_bias", corrected)
    return corrected


def choose_structures(program: Program, latency_budget=None, neuron_budget=None, dump=None) -> Program:
    """The ``choose_structures`` pass: pick every ADC gate's structure by the exact optimizer of
    :func:`.structures.optimize` and apply it (verified; same integer codes, other latency)."""
    plan = optimize(*program_nodes(program), latency_budget=latency_budget, neuron_budget=neuron_budget)
    structured = apply_plan(program, plan)
    verify(structured)
    if structured.latency != plan.latency:
        raise IRError(f"choose_structures: the scheduled latency {structured.latency} differs from the "
                      f"optimizer's {plan.latency}")
    if dump:
        dump("choose_structures", structured)
    return structured


#: fitted gates whose input one compile may relay (see tensor_passes.relay_input)
MAX_RELAYS = 16


def _compile(model_path, calib, opts: Options, limits: Limits, calib_name: str, dump=None) -> Program:
    fg, calib = prepare(model_path, calib, opts, limits, calib_name, dump)
    return build_relayed(fg, calib, opts, limits, dump)[0]


def build_relayed(fg, calib, opts: Options, limits: Limits, dump=None):
    """calibrate + :func:`build`; a fitted gate whose worst-case input does not fit the
    accumulator at its K gets its input relayed through two ReLU gates
    (:func:`~.tensor_passes.relay_input`) and, if that is not enough, a lower K for that gate
    alone; the graph is calibrated and built again after each change. Returns (program, the
    tensor graph it was built from, with those relays and coarsened gates)."""
    import warnings
    from dataclasses import replace as _replace
    relayed: list = []
    coarsened: dict = {}
    while True:
        try:
            program = build(fg, calib.shape[0], calibrate(fg, calib, opts), opts, limits, dump)
        except RangeError as exc:
            gate = next((gt for gt in fg.gates if gt.name == exc.layer), None)
            if gate is None or gate.fn is None or gate.partner is not None:
                raise
            if exc.layer not in relayed:
                if len(relayed) >= MAX_RELAYS:
                    raise
                relayed.append(exc.layer)
                fg = run_tensor_passes(fg, [_relay(exc.layer)], dump)
                continue
            bits = gate.bits or opts.bits
            if bits <= 2:
                raise
            # coarser steps for this layer only: the fit at K - 1 has wider segments
            coarsened[exc.layer] = bits - 1
            fg = _replace(fg, gates=[_replace(gt, bits=bits - 1) if gt.name == exc.layer else gt for gt in fg.gates])
            continue
        for name in relayed:
            k = coarsened.get(name, opts.bits)
            warnings.warn(PrecisionWarning(
                f"layer {name!r}: its worst-case input does not fit the accumulator at K={opts.bits}; its "
                f"input is relayed through two ReLU gates (z = relu(z) - relu(-z))"
                + (f" and it is fitted at K={k} (coarser steps for this layer only)" if k != opts.bits else "")))
        return program, fg


def _relay(name):
    def relay_input(g):
        return _relay_input(g, name)
    return relay_input


def prepare(model_path, calib, opts: Options, limits: Limits, calib_name: str = "", dump=None):
    """Import (and the import passes), check the calibration data against the model and the
    limits: (tensor graph, calibration array as the model's input shape)."""
    fg = import_graph(model_path, opts.maxpool, dump)
    raw, calib = calib, check_input_array(calib, fg.input_shape, "calibration data", calib_name)
    check_raw_calibration(raw, calib_name)
    est = resources.estimate(fg, opts.bits, opts.weight_bits, calib.shape[0], calib_batch(fg))
    resources.check(est, limits, "fitted units counted as one K-bit unit per element")
    return fg, calib


def build(fg, n_calib: int, calibration: tuple, opts: Options, limits: Limits, dump=None) -> Program:
    """From a calibrated tensor graph (``calibration``: what :func:`calibrate` returns) to the
    verified integer program: expand_fitted, lower, the integer passes. A gate's ``bits``
    (per-layer K, see :mod:`.precision`) overrides ``opts.bits``."""
    alphas, ranges, balance, in_range = calibration

    def expand_products(g):   # SE products as gated circuits (--product gated), else the square pairs stay
        return expand_gated(g, balance, opts.bits, opts.rounding) if opts.product == "gated" else g

    def expand_fitted(g):
        return expand(g, ranges, opts.bits, balance, opts.fit_tolerance, opts.relu_split, opts.rounding,
                      opts.fitted_units)
    fg = run_tensor_passes(fg, [expand_products, expand_fitted], dump)
    est = resources.estimate(fg, opts.bits, opts.weight_bits, n_calib, calib_batch(fg))
    resources.check(est, limits, "fitted units expanded into their segments")
    program = lower(fg, alphas, in_range, opts)
    if dump:
        dump("lower", program)
    program.options = {"bits": opts.bits, "calibration": opts.calibration,
                       "percentile": opts.percentile, "rounding": opts.rounding,
                       "granularity": opts.granularity, "weight_bits": opts.weight_bits,
                       "maxpool": opts.maxpool, "fit_tolerance": opts.fit_tolerance,
                       "relu_split": opts.relu_split, "product": opts.product,
                       "fitted_units": opts.fitted_units}
    program.provenance = {"source": fg.path.rsplit("/", 1)[-1], "sha256": fg.sha256,
                          "opset": fg.opset, "amosc": __version__, "input_name": fg.input_name,
                          "output_name": fg.output_name, "softmax": fg.softmax or "",
                          "calibration_samples": int(n_calib)}
    return run_passes(program, dump=dump)
