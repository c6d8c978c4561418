"""The compile pipeline: import -> calibrate -> lower -> passes -> verified Program."""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..errors import IRError, RangeError
from ..ir.nodes import Program
from ..ir.verify import verify
from .calibrate import OnnxRunner, check_input_array, scale_from
from .importer import import_model, load_model, normalize
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


def calibrate(fg, model, calib: np.ndarray, opts: Options):
    runner = OnnxRunner(model, fg.input_name, fg.batch_fixed, [g.pre_tensor for g in fg.gates])
    tensors = [g.pre_tensor for g in fg.gates]
    samples: dict[str, list] = {t: [] for t in tensors}
    for _, outs in runner.run(calib, tensors, desc="calibrating"):
        for t, v in outs.items():
            samples[t].append(np.asarray(v, np.float32))
    alphas = {}
    for g in fg.gates:
        v = np.concatenate(samples[g.pre_tensor])
        per_sample = int(np.prod(v.shape[1:]))
        if v.size > MAX_CALIB_VALUES:  # keep whole samples, evenly spaced
            v = v[:: -(-v.shape[0] * per_sample // MAX_CALIB_VALUES)]
        alphas[g.name] = scale_from(v, opts.calibration, opts.percentile, opts.granularity == "channel",
                                    opts.bits)
    x = calib.astype(np.float64)
    if opts.calibration in ("max", "mse"):
        in_range = (float(x.min()), float(x.max()))
    else:
        in_range = (float(np.percentile(x, 100 - opts.percentile)), float(np.percentile(x, opts.percentile)))
    return alphas, in_range


def compile_model(model_path, calib: np.ndarray, opts: Options | None = None, **kw) -> Program:
    """Compile an ONNX classifier to a verified AMOS program.

    ``calib``: float array (N, *input_shape) of representative inputs. Keyword
    arguments are :class:`Options` fields (bits, calibration, percentile, rounding).
    """
    opts = opts or Options(**kw)
    fg = import_model(model_path)
    calib = check_input_array(calib, fg.input_shape, "calibration data")
    model = normalize(load_model(model_path)[0], fg.path)
    alphas, in_range = calibrate(fg, model, calib, opts)
    program = lower(fg, alphas, in_range, opts)
    program.options = {"bits": opts.bits, "calibration": opts.calibration,
                       "percentile": opts.percentile, "rounding": opts.rounding,
                       "granularity": opts.granularity, "weight_bits": opts.weight_bits}
    program.provenance = {"source": fg.path.rsplit("/", 1)[-1], "sha256": fg.sha256,
                          "opset": fg.opset, "amosc": __version__, "input_name": fg.input_name,
                          "output_name": fg.output_name, "softmax": fg.softmax or "",
                          "calibration_samples": int(calib.shape[0])}
    return run_passes(program)
