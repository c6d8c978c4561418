"""The compile pipeline: import -> calibrate -> lower -> passes -> verified Program."""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..errors import IRError, RangeError
from ..ir.nodes import Program
from ..ir.verify import verify
from .calibrate import check_input_array, scale_from
from .expand import expand_fitted
from .importer import import_model
from .passes import DEFAULT_PASSES
from .quantize import Options, lower

MAX_CALIB_VALUES = 4_000_000  # per tensor; larger tensors are subsampled deterministically


def run_passes(program: Program, passes=DEFAULT_PASSES) -> Program:
    done = []
    for p in passes:
        program = p(program)
        try:
            verify(program, ranges=False)
        except (IRError, RangeError) as exc:
            raise IRError(f"pass {p.__name__} (after {[d.__name__ for d in done]}) produced an "
                          f"invalid program: {exc}") from exc
        done.append(p)
    verify(program)
    return program


CALIB_BATCH = 64


def calibrate(fg, calib: np.ndarray, opts: Options):
    """Ranges of every gate from the imported float graph run on the calibration data:
    ``alphas[name]`` (per-channel upper range of ReLU-family gates) and ``ranges[name]``
    ((lo, hi) of a fitted gate's input over the whole layer)."""
    from ..progress import progress
    from .importer import float_eval
    samples: dict[str, list] = {g.name: [] for g in fg.gates}
    n = calib.shape[0]
    for i in progress(range(0, n, CALIB_BATCH), desc="calibrating", total=-(-n // CALIB_BATCH)):
        pre: dict = {}
        float_eval(fg, calib[i:i + CALIB_BATCH].astype(np.float64), pre_values=pre)
        for g in fg.gates:
            samples[g.name].append(pre[g.name].astype(np.float32))
    alphas, ranges = {}, {}
    for g in fg.gates:
        v = np.concatenate(samples.pop(g.name))
        per_sample = int(np.prod(v.shape[1:]))
        if v.size > MAX_CALIB_VALUES:  # keep whole samples, evenly spaced
            v = v[:: -(-v.shape[0] * per_sample // MAX_CALIB_VALUES)]
        if g.fn is not None:
            flat = v.astype(np.float64).ravel()
            if opts.calibration == "max":
                ranges[g.name] = (float(flat.min()), float(flat.max()))
            else:
                ranges[g.name] = (float(np.percentile(flat, 100 - opts.percentile)),
                                  float(np.percentile(flat, opts.percentile)))
        else:
            alphas[g.name] = scale_from(v, opts.calibration, opts.percentile,
                                        opts.granularity == "channel", opts.bits)
    x = calib.astype(np.float64)
    if opts.calibration in ("max", "mse"):
        in_range = (float(x.min()), float(x.max()))
    else:
        in_range = (float(np.percentile(x, 100 - opts.percentile)), float(np.percentile(x, opts.percentile)))
    return alphas, ranges, in_range


def compile_model(model_path, calib: np.ndarray, opts: Options | None = None, **kw) -> Program:
    """Compile an ONNX classifier to a verified AMOS program.

    ``calib``: float array (N, *input_shape) of representative inputs. Keyword
    arguments are :class:`Options` fields (bits, calibration, percentile, rounding).
    """
    opts = opts or Options(**kw)
    fg = import_model(model_path)
    calib = check_input_array(calib, fg.input_shape, "calibration data")
    alphas, ranges, in_range = calibrate(fg, calib, opts)
    fg = expand_fitted(fg, ranges, opts.bits)
    program = lower(fg, alphas, in_range, opts)
    program.options = {"bits": opts.bits, "calibration": opts.calibration,
                       "percentile": opts.percentile, "rounding": opts.rounding,
                       "granularity": opts.granularity, "weight_bits": opts.weight_bits}
    program.provenance = {"source": fg.path.rsplit("/", 1)[-1], "sha256": fg.sha256,
                          "opset": fg.opset, "amosc": __version__, "input_name": fg.input_name,
                          "output_name": fg.output_name, "softmax": fg.softmax or "",
                          "calibration_samples": int(calib.shape[0])}
    return run_passes(program)
