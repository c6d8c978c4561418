"""Run the float model with onnxruntime and read intermediate tensors.

Used for calibration (each gate's scale), and by ``validate`` for the per-layer
comparison. Models exported with a fixed batch of 1 are run one sample at a time.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import CalibrationError
from ..progress import progress


def check_input_array(x, shape, what: str, path: str = "") -> np.ndarray:
    """Validate a user array shaped (N, *shape); return it as float32."""
    where = f"{path}: " if path else ""
    if not isinstance(x, np.ndarray):
        raise CalibrationError(f"{where}{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise CalibrationError(f"{where}{what} has dtype {x.dtype}; expected a float array")
    if x.ndim == len(shape) and tuple(x.shape) == tuple(shape):
        raise CalibrationError(f"{where}{what} has shape {x.shape}; add a leading batch axis: "
                               f"(N, {', '.join(map(str, shape))})")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise CalibrationError(f"{where}{what} has shape {x.shape}; the model expects "
                               f"(N, {', '.join(map(str, shape))})")
    if x.shape[0] == 0:
        raise CalibrationError(f"{where}{what} is empty (N = 0)")
    if not np.all(np.isfinite(x)):
        raise CalibrationError(f"{where}{what} contains NaN or Inf")
    return x.astype(np.float32)


def load_array(path, shape, what) -> np.ndarray:
    import os
    if not os.path.isfile(path):
        raise CalibrationError(f"{path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CalibrationError(f"{path}: not a readable .npy array ({exc})") from None
    return check_input_array(x, shape, what, path)


class OnnxRunner:
    """onnxruntime session exposing extra intermediate tensors as outputs."""

    def __init__(self, model: onnx.ModelProto, input_name: str, batch_fixed: bool, tensors=()):
        import onnxruntime as ort
        model = onnx.ModelProto.FromString(model.SerializeToString())
        have = {o.name for o in model.graph.output}
        for t in tensors:
            if t not in have:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
                have.add(t)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(model.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        self.input_name = input_name
        self.batch = 1 if batch_fixed else 64

    def run(self, x: np.ndarray, tensors, desc: str = "onnxruntime"):
        """Yield (slice, {tensor: array}) over batches of x."""
        for i in progress(range(0, x.shape[0], self.batch), desc=desc,
                          total=-(-x.shape[0] // self.batch)):
            xb = x[i:i + self.batch].astype(np.float32)
            try:
                outs = self.sess.run(list(tensors), {self.input_name: xb})
            except Exception as exc:
                raise CalibrationError(f"onnxruntime failed on inputs {i}..{i + xb.shape[0] - 1} "
                                       f"of shape {xb.shape}: {str(exc).splitlines()[0]}") from None
            yield slice(i, i + xb.shape[0]), dict(zip(tensors, outs))

    def collect(self, x, tensors, desc="onnxruntime") -> dict:
        res: dict[str, list] = {t: [] for t in tensors}
        for _, outs in self.run(x, tensors, desc):
            for t, v in outs.items():
                res[t].append(np.asarray(v, np.float64))
        return {t: np.concatenate(v) for t, v in res.items()}


MSE_SAMPLES = 16384  # values per channel a range search scores (its tails exactly)


def channel_rows(v: np.ndarray) -> np.ndarray:
    """Samples (N, C, ...) as one row per channel (C, N * ...)."""
    return np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)


def _weighted_sample(v: np.ndarray, low: int, high: int):
    """Sorted samples v cut to at most MSE_SAMPLES: the ``low`` smallest and ``high``
    largest exactly, an evenly spaced subset of the rest; (values, the count each stands for)."""
    if v.size <= MSE_SAMPLES:
        return v, np.ones(v.size)
    body = v[low:v.size - high]
    stride = -(-body.size // (MSE_SAMPLES - low - high))
    kept = body[::stride]
    return (np.concatenate([v[:low], kept, v[v.size - high:]]),
            np.concatenate([np.ones(low), np.full(kept.size, float(stride)), np.ones(high)]))


def mse_range(v: np.ndarray, bits: int, candidates: int = 256) -> float:
    """The range alpha whose K-bit round-to-nearest code (step alpha / (2^K - 1), clipped)
    has the least mean squared error on the non-negative samples v.

    Candidates are ``candidates`` evenly spaced fractions of the largest sample. Large
    sample sets are scored on their largest values (where clipping error lives) plus an
    evenly spaced subset of the sorted rest, weighted by the values each stands for."""
    v = np.sort(v[v > 0].astype(np.float64))
    if v.size == 0:
        return 0.0
    v, weight = _weighted_sample(v, 0, MSE_SAMPLES // 4)
    levels = 2**bits - 1
    alphas = float(v[-1]) * np.linspace(1.0 / candidates, 1.0, candidates)
    err = np.empty(candidates)
    for i in range(0, candidates, 32):  # bounded memory
        step = (alphas[i:i + 32] / levels)[:, None]
        q = np.minimum(np.round(v / step), levels) * step
        err[i:i + 32] = ((q - v) ** 2) @ weight
    return float(alphas[int(np.argmin(err))])


def mse_fn_range(fn, v: np.ndarray, bits: int, candidates: int = 64) -> tuple:
    """The input range [lo, hi] for a fitted unit of ``fn`` (a unit that saturates at
    f(lo) and f(hi), with a K-bit output grid of step TV(f on [lo, hi]) / (2^K - 1)) with
    the least expected squared error on the samples v: grid noise step^2 / 12 inside, the
    saturation error outside. The upper end is searched with the lower at min(v), then the
    lower with that upper end; candidates are evenly spaced in [min(v), max(v)]."""
    v, weight = _weighted_sample(np.sort(np.asarray(v, np.float64).ravel()),
                                 MSE_SAMPLES // 4, MSE_SAMPLES // 4)
    lo, hi = float(v[0]), float(v[-1])
    if not hi > lo:
        return lo, hi
    grid = np.linspace(lo, hi, 4097)
    tv = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(fn(grid))))])  # TV from lo
    fv = fn(v)
    levels = 2**bits - 1
    cands = lo + (hi - lo) * np.arange(1, candidates + 1) / candidates

    def err(a, b):
        step = (np.interp(b, grid, tv) - np.interp(a, grid, tv)) / levels
        inside = (v >= a) & (v <= b)
        sat = np.where(v < a, fn(np.array(a)) - fv, np.where(v > b, fn(np.array(b)) - fv, 0.0))
        return float((inside * step**2 / 12 + sat**2) @ weight)

    hi = min(cands, key=lambda b: err(lo, b))
    lows = lo + (hi - lo) * np.arange(0, candidates) / candidates
    lo = min(lows, key=lambda a: err(a, hi))
    return float(lo), float(hi)


def scale_from(values: np.ndarray, method: str, percentile: float, per_channel: bool,
               bits: int = 8) -> np.ndarray:
    """The calibrated upper range of an activation (its ReLU'd values) from samples
    (N, C, ...): per channel C, each channel's own range capped at the layer's; or the
    layer's range repeated. ``method``: 'percentile', 'max' or 'mse' (least K-bit
    quantization error, zeros excluded)."""
    v = np.maximum(channel_rows(values), 0)

    def rng(a):
        if method == "mse":
            return (mse_range(a, bits) if a.ndim == 1 else
                    np.array([mse_range(row, bits) for row in a]))
        return a.max(axis=-1) if method == "max" else np.percentile(a, percentile, axis=-1)

    layer = float(rng(v.reshape(-1)))
    if not per_channel:
        return np.full(values.shape[1], layer)
    return np.minimum(rng(v), layer).astype(np.float64)
