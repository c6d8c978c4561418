"""Fitted AMOS units: one K-neuron circuit per activation element, its thresholds T_k,
resets h_k and output weights d_k fitted to the function (Stöckl & Maass 2021's FS neuron,
unrolled in space as an AMOS circuit: unit k fires at most once, at step k)::

    z_k = [ x - sum_{j<k} h_j z_j >= T_k ]        f(x) ~ offset + sum_k d_k z_k

This is the structure the papers give every non-ReLU gate (SiLU, sigmoid, GELU, tanh, ...):
K neurons per element where the segment realization (:mod:`.activations`) needs S x K_s.
Its error is a fitting error, not a K-bit grid: the fit decides where the unit resolves.

The fit (:func:`fit_unit`) minimizes the mean squared error on the calibration sample of the
gate's input (all channels pooled: a population has one code, so every channel's unit is the
same function of its input on one absolute input grid). Given T and h the spike pattern of
every sample is fixed and the best d and offset are a least-squares solve, so only T and h
are searched: coordinate descent, each coordinate over candidate values (quantiles of what
that unit sees, an even grid of resets, small moves of the current value), every candidate
scored by its least-squares solve, all candidates of one coordinate in one batched solve.
RESTARTS starts (the successive-approximation ADC on the sample's range, then seeded random
perturbations of it) run on COARSE_SAMPLES quantiles; the REFINED best continue on all
UNIT_SAMPLES. Deterministic. The output weights are then rounded to a grid of ``step``
(range / 2^CODE_BITS; an integer code, :attr:`UnitFit.codes`), largest first with the rest
refitted, and the offset re-fitted, so the unit's mean error on the sample is zero as rounded;
:meth:`UnitFit.centre` then takes each channel's own mean error out of its offset (as the
segments' centring, :func:`.expand._centre`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ModelError

#: quantiles of the pooled calibration sample the fit runs on (its minimum and maximum included)
UNIT_SAMPLES = 1024
#: candidate values per coordinate (plus 9 small moves of the current value)
CANDIDATES = 64
#: restarts (on COARSE_SAMPLES of the quantiles), of which the REFINED best continue on all
RESTARTS = 8
COARSE_SAMPLES = 256
REFINED = 2
SWEEPS = 20
#: the output quantum is the function's range on the sample / 2^CODE_BITS: a source's code
#: weights scale its readers' synapses down (a reader's exponent is at least MIN_WEIGHT_SHIFT),
#: so a finer quantum costs the readers' weight precision (a K-bit ReLU code has 2^K levels)
CODE_BITS = 8
#: share of the fit's weight on an even grid over the sample's range (the quantiles are
#: sparse in the tails; without the grid the fit may put narrow excursions between them)
GRID_WEIGHT = 0.05
#: most units a fitted unit may have
MAX_UNIT_NEURONS = 24


@dataclass(frozen=True)
class UnitFit:
    """A fitted K-neuron AMOS unit of ``fn`` (float parameters, input and output in the
    activation's units; ``codes``: the integer output weights, value = offset + step * code).
    Channel-independent: ``channels`` units share it. Errors on the pooled calibration sample."""

    fn: str
    thresholds: tuple
    resets: tuple
    codes: tuple            # integer d_k / step
    step: float             # output quantum
    offset: float
    lo: float               # the sample's range
    hi: float
    rms_err: float
    max_err: float
    mean_abs_err: float
    channels: int
    #: the segment realization's rms error on the same sample, when the compiler compared them
    segments_rms_err: float | None = None
    #: (C,) each channel's mean error on its own calibration values, taken out of its offset
    #: (:meth:`centre`; one code serves every channel, but each channel's readers get their own
    #: bias, as the segments' :func:`~.expand._centre`)
    centred: tuple | None = None

    @property
    def bits(self) -> int:
        """Neurons per element (K)."""
        return len(self.thresholds)

    neurons = bits
    segments = 1            # one population channel per activation channel

    @property
    def slopes(self) -> np.ndarray:   # (C, 1): the readers' ChannelSum (see expand._segment_sum)
        return np.ones((self.channels, 1))

    @property
    def offsets(self) -> np.ndarray:  # (C,)
        return self.offset - np.asarray(self.centred if self.centred is not None else 0.0) * np.ones(self.channels)

    def centre(self, fn, sample) -> "UnitFit":
        """This unit with each channel's mean error on ``sample`` (C, m) recorded in ``centred``
        (so ``offsets`` takes it out), and its errors measured on the whole centred sample."""
        x = np.asarray(sample, np.float64)
        err = self.evaluate(x) - fn(x)
        mean = err.mean(axis=1)
        err = err - mean[:, None]
        return replace(self, centred=tuple(float(v) for v in mean), rms_err=float(np.sqrt((err**2).mean())),
                       max_err=float(np.abs(err).max()), mean_abs_err=float(np.abs(err).mean()))

    def spikes(self, x) -> np.ndarray:
        """(K, *x.shape) the units' spikes for float inputs x."""
        return _spikes(np.asarray(x, np.float64).ravel(), np.asarray(self.thresholds)[None],
                       np.asarray(self.resets)[None])[0].reshape((self.bits,) + np.shape(x))

    def evaluate(self, x) -> np.ndarray:
        """The unit's value on float inputs (what the integer circuit computes up to the
        input's quantization)."""
        z = self.spikes(x)
        return self.offset + self.step * np.tensordot(np.asarray(self.codes, np.float64), z, 1)

    def as_dict(self) -> dict:
        """What the IR keeps (docs/ir.md, fitted units): decoding needs ``segments`` (1),
        ``slopes`` and ``offset``; the rest is for reports."""
        return {"fn": self.fn, "structure": "unit", "range": [self.lo, self.hi], "bits": self.bits,
                "segments": 1, "neurons_per_element": self.bits, "channels": self.channels,
                "max_err": self.max_err, "mean_err": self.mean_abs_err, "rms_err": self.rms_err,
                "step": self.step, "slopes": [1.0],
                "offset": self.offsets.tolist() if self.centred is not None else self.offset,
                **({"centred": list(self.centred)} if self.centred is not None else {}),
                **({"segments_rms_err": self.segments_rms_err} if self.segments_rms_err is not None else {}),
                "unit": {"thresholds": list(self.thresholds), "resets": list(self.resets),
                         "weights": [c * self.step for c in self.codes]}}


def _spikes(x: np.ndarray, T: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(B, K, n) spikes of B candidate units (T, h: (B, K)) on inputs x (n,)."""
    b, k = T.shape
    v = np.broadcast_to(x, (b, x.size)).copy()
    z = np.empty((b, k, x.size))
    for i in range(k):
        z[:, i] = v >= T[:, i:i + 1]
        v -= h[:, i:i + 1] * z[:, i]
    return z


def _solve(z: np.ndarray, fx: np.ndarray, w: np.ndarray):
    """Weighted least-squares output weights and offset of B spike patterns z (B, K, n) for
    targets fx (n,), weights w (n,) summing to 1: (mean squared errors (B,), coefficients
    (B, K + 1), the last the offset)."""
    b, k, n = z.shape
    a = np.concatenate([z, np.ones((b, 1, n))], axis=1)
    g = (a * w) @ a.transpose(0, 2, 1) + 1e-8 * np.eye(k + 1)   # a unit that never fires: d = 0
    r = (a * w) @ fx
    d = np.linalg.solve(g, r[..., None])[..., 0]
    return np.maximum((fx**2) @ w - (d * r).sum(axis=1), 0.0), d   # the residual at the solution


def _search(x, fx, w, T, h, sweeps: int):
    """Coordinate descent on (T, h) from the given start: (mse, T, h)."""
    k = T.size
    best, _ = _solve(_spikes(x, T[None], h[None]), fx, w)
    best = float(best[0])
    span = float(x[-1] - x[0]) or 1.0
    moves = np.linspace(-0.2, 0.2, 9)
    for _ in range(sweeps):
        improved = False
        for i in range(k):
            seen = x.copy()   # what unit i sees
            for j in range(i):
                seen -= h[j] * (seen >= T[j])
            for which in (T, h):
                if which is T:
                    base = np.quantile(seen, np.linspace(0.005, 0.995, CANDIDATES))
                else:
                    base = np.linspace(-0.5 * span, span, CANDIDATES)
                cand = np.concatenate([base, which[i] + (abs(which[i]) + 1e-3 * span) * moves])
                Ts = np.repeat(T[None], cand.size, 0)
                hs = np.repeat(h[None], cand.size, 0)
                (Ts if which is T else hs)[:, i] = cand
                mse, _ = _solve(_spikes(x, Ts, hs), fx, w)
                j = int(np.argmin(mse))
                if mse[j] < best * (1 - 1e-9) - 1e-15:
                    best, improved = float(mse[j]), True
                    which[i] = cand[j]
        if not improved:
            break
    return best, T, h


def fit_unit(fn, sample, neurons: int, channels: int | None = None) -> UnitFit:
    """Fit a ``neurons``-unit AMOS circuit to ``fn`` (a :class:`~.activations.ScalarFn`) on
    ``sample`` (calibration values of the gate's input, any shape; (C, m) per channel)."""
    if not 1 <= int(neurons) <= MAX_UNIT_NEURONS:
        raise ModelError(f"a fitted unit needs 1..{MAX_UNIT_NEURONS} neurons, got {neurons}")
    s = np.asarray(sample, np.float64)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ModelError(f"cannot fit a unit of {fn.key}: its calibration sample is empty or not finite")
    q = np.quantile(s.ravel(), np.linspace(0.0, 1.0, UNIT_SAMPLES))   # with both extremes
    c = channels if channels is not None else (s.shape[0] if s.ndim > 1 else 1)
    return _fit(fn, tuple(np.round(q, 12)), int(neurons), int(c))


def _integer_weights(z: np.ndarray, fx: np.ndarray, w: np.ndarray, d: np.ndarray, step: float) -> np.ndarray:
    """Output weights d (K,) as integers of ``step``: the largest first, each rounded and the
    ones not yet rounded (and the offset) fitted again by least squares, so each rounding's
    error is partly taken up by the rest (better than rounding all at once)."""
    k = d.size
    fixed = np.zeros(k, bool)
    codes = np.zeros(k)
    free = d.copy()
    for _ in range(k):
        j = int(np.argmax(np.where(fixed, -1.0, np.abs(free))))
        codes[j], fixed[j] = np.rint(free[j] / step), True
        rest = ~fixed
        target = fx - step * codes @ z
        if rest.any():
            _, coef = _solve(z[rest][None], target, w)
            free[rest] = coef[0, :-1]
    return codes


def _points(fn, q: np.ndarray):
    """(x, f(x), weights) the fit scores on: the sample's quantiles q and an even grid over
    their range holding GRID_WEIGHT of the weight."""
    grid = np.linspace(q[0], q[-1], max(q.size // 4, 2))
    order = np.argsort(np.concatenate([q, grid]), kind="stable")
    x = np.concatenate([q, grid])[order]
    w = np.concatenate([np.full(q.size, (1 - GRID_WEIGHT) / q.size), np.full(grid.size, GRID_WEIGHT / grid.size)])[order]
    return x, np.asarray(fn(x), np.float64), w


@functools.lru_cache(maxsize=64)
def _fit(fn, q: tuple, k: int, channels: int) -> UnitFit:
    q = np.asarray(q, np.float64)
    lo, hi = float(q[0]), float(q[-1])
    coarse = _points(fn, q[np.linspace(0, q.size - 1, COARSE_SAMPLES).round().astype(int)])
    fine = _points(fn, q)
    width = (hi - lo) or 1.0
    rng = np.random.default_rng(0)
    sar = width * 2.0 ** -np.arange(1, k + 1)     # the SAR ADC on [lo, hi]
    starts = []   # restarts on a coarse sample, the best few refined on the full one
    for r in range(RESTARTS):
        T = lo + sar * (1 if r == 0 else rng.uniform(0.5, 1.5, k))
        h = sar * (1 if r == 0 else rng.uniform(0.5, 1.5, k))
        starts.append(_search(*coarse, T.copy(), h.copy(), SWEEPS))
    starts.sort(key=lambda t: t[0])
    best = min((_search(*fine, T.copy(), h.copy(), SWEEPS) for _, T, h in starts[:REFINED]), key=lambda t: t[0])
    x, fx, w = fine
    _, T, h = best
    z = _spikes(x, T[None], h[None])[0]
    _, coef = _solve(z[None], fx, w)
    d = coef[0, :k]
    span = float(np.ptp(fx)) or 1.0
    step = span / 2**CODE_BITS   # the output quantum: CODE_BITS over the function's range here
    codes = _integer_weights(z, fx, w, d, step)
    zq = _spikes(q, T[None], h[None])[0]   # errors on the sample (its quantiles)
    value = step * codes @ zq
    offset = float((fn(q) - value).mean())
    err = value + offset - fn(q)
    return UnitFit(fn.key, tuple(float(v) for v in T), tuple(float(v) for v in h),
                   tuple(int(v) for v in codes), step, offset, lo, hi,
                   float(np.sqrt((err**2).mean())), float(np.abs(err).max()), float(np.abs(err).mean()),
                   channels)
