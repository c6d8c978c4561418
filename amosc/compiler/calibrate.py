"""Run the float model with onnxruntime and read intermediate tensors.

Used for calibration (each gate's scale), and by ``validate`` for the per-layer
comparison. Models exported with a fixed batch of 1 are run one sample at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def read_npy(path, what: str) -> np.ndarray:
    """One array from a .npy file: no pickles, no .npz archives."""
    import os
    if not os.path.isfile(path):
        raise CalibrationError(f"{path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CalibrationError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None
    if not isinstance(x, np.ndarray):  # an .npz archive opens as a mapping of arrays
        x.close()
        raise CalibrationError(f"{path}: {what} must be one .npy array, got an .npz archive")
    return x


def load_array(path, shape, what) -> np.ndarray:
    x = read_npy(path, what)
    return check_input_array(x, shape, what, path)


def load_labels(path, n: int | None = None) -> np.ndarray:
    """Integer class labels (N,) from a .npy file; ``n``: the number of inputs they label."""
    y = read_npy(path, "labels")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise CalibrationError(f"{path}: labels must be integers shaped (N,), got {y.dtype} {y.shape}")
    if n is not None and y.shape[0] < n:
        raise CalibrationError(f"{path}: {y.shape[0]} labels for {n} inputs")
    return y


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
        starts = range(0, x.shape[0], self.batch)
        if desc:  # (None: the caller shows its own progress)
            starts = progress(starts, desc=desc, total=len(starts))
        for i in starts:
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


#: calibration values kept per channel of a fitted gate for its mean-error correction
FIT_SAMPLE = 4096


@dataclass(frozen=True)
class FitRange:
    """What calibration gives a fitted gate: the per-channel input range [lo, hi] (each (C,))
    its fit spans, and ``sample`` (C, m): calibration values of its input per channel (evenly
    spaced, m <= :data:`FIT_SAMPLE`), on which expand_fitted measures the fitted unit's mean
    error per channel and folds it out of the unit's offset (None: no correction)."""
    lo: np.ndarray
    hi: np.ndarray
    sample: np.ndarray | None = None


def fit_sample(v: np.ndarray) -> np.ndarray:
    """(C, m) evenly spaced values per channel of samples v (N, C, ...), m <= FIT_SAMPLE."""
    rows = channel_rows(v)
    return np.ascontiguousarray(rows[:, ::-(-rows.shape[1] // FIT_SAMPLE)], np.float32)


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


# ---------------------------------------------------------------------------
# Calibration sanity: data that would give a useless program is reported as a
# CalibrationWarning (an error with --strict) naming what looks wrong.
# ---------------------------------------------------------------------------

#: The calibration's per-channel spread at the first BatchNormalization, as a multiple of
#: the trained one (sqrt(running_var)), beyond which the data is reported as out of the
#: model's input distribution (real data sits near 1; pixels in 0..255 for a model trained
#: on 0..1 give ~255).
NORM_RATIO_LIMIT = 10.0


def warn(msg: str) -> None:
    import warnings
    from ..errors import CalibrationWarning
    warnings.warn(msg, CalibrationWarning, stacklevel=2)


def check_raw_calibration(x, path: str = "") -> None:
    """Warn about calibration data that is integer or constant (before it is converted)."""
    where = f"{path}: " if path else ""
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu" and x.size:
        warn(f"{where}calibration data is integer ({x.dtype}, values {x.min()}..{x.max()}); the model "
             "takes float inputs: scale it exactly as the inputs the program will run on (e.g. x / 255)")
    if isinstance(x, np.ndarray) and x.ndim >= 2 and x.size and x.dtype.kind in "fiu" \
            and np.all(np.isfinite(x)) and np.ptp(x.reshape(x.shape[0], -1), axis=0).max() == 0:
        warn(f"{where}calibration inputs are all identical (every value "
             f"{'0' if not np.any(x) else 'equal across samples'}); calibrate on representative inputs")


class NormStats:
    """Per-channel mean and variance of the first BatchNormalization's input on the
    calibration data, to compare with the running statistics it was trained with."""

    def __init__(self, first_norm):
        self.norm = first_norm
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, vals: dict) -> None:
        if self.norm is None:
            return
        from ..ir.tensor import expr_value
        expr = self.norm[1]
        if any(src not in vals for src in expr.maps):
            self.norm = None
            return
        v = channel_rows(expr_value(expr, vals))  # (C, samples)
        self.n += v.shape[1]
        self.s1 = self.s1 + v.sum(1)
        self.s2 = self.s2 + (v * v).sum(1)

    def ratios(self):
        """(node, median spread ratio, median mean shift in trained stds), or None."""
        if self.norm is None or not self.n:
            return None
        node, _, mean, var = self.norm
        mu = self.s1 / self.n
        sd = np.sqrt(np.maximum(self.s2 / self.n - mu * mu, 0))
        ok = np.broadcast_to(var, mu.shape) > 1e-8
        if not ok.any():
            return None
        ref = np.sqrt(np.broadcast_to(var, mu.shape)[ok])
        ratio = float(np.median(sd[ok] / ref))
        shift = float(np.median(np.abs(mu[ok] - np.broadcast_to(mean, mu.shape)[ok]) / ref))
        return node, ratio, shift


def check_calibration(fg, peak: dict, stats: NormStats) -> None:
    """Warn about gates that never fire and data far from the trained input statistics."""
    dead = [g.name for g in fg.gates if g.fn is None and peak[g.name] <= 0]
    if dead:
        shown = ", ".join(dead[:8]) + (f" and {len(dead) - 8} more" if len(dead) > 8 else "")
        warn(f"{len(dead)} of {len(fg.gates)} gates never fire on the calibration data: {shown}; "
             "their outputs compile to constant zero")
    r = stats.ratios()
    if r is None:
        return
    node, ratio, shift = r
    if not 1 / NORM_RATIO_LIMIT <= ratio <= NORM_RATIO_LIMIT or shift > NORM_RATIO_LIMIT:
        warn(f"calibration data looks out of the model's input distribution: at BatchNormalization "
             f"{node!r} its per-channel spread is {ratio:.3g}x the trained one (median; mean off by "
             f"{shift:.3g} trained stds); are the inputs scaled as in training?")
