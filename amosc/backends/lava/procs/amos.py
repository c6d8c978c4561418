"""Lava processes of the ``fast`` style: an independent implementation of the AMOS
dynamics of docs/ir.md, one process per population and one per projection.

Nothing here runs amosc's simulators: neither :mod:`amosc.backends.reference` nor the
integer helpers of :mod:`amosc.ir.semantics` (plane_input, unit_spikes, gate_code,
join, enable_weights, conv2d/linear) are used. The models take from amosc only the
program's data layout (a population's shape, start, code, bias; a projection's
weights, exponents, kind, attributes and shapes) and compute every step from
docs/ir.md with their own integer state, declared as Lava Vars with their precision:

- :class:`AmosSynapses` (a projection): its integer weight matrix M, built once as a
  scipy sparse matrix (CSC) from the conv / dense / sparse layout; each step, for each
  source plane j that spiked, ``M @ z_j`` as the integer sum of the columns of the units
  that fired, then ``floor(d_j * (M @ z_j) * 2^e[c])`` by integer shifts, added to a ring buffer of pending arrivals (``delay_line``) at ``t + 1 + d_j``
  (d_j = start(target) - start(source) - s_j - 1, unit j firing at step s_j of its code:
  s_j = j for a sequential code, the code's ``steps`` for a radix / flash ADC). Like
  Lava's Dense it sends first and receives after, so a hop takes one step.
- :class:`AmosUnits`: a gate's K units over D steps. ``inputs`` is a ring of the last D
  steps' synaptic input (compartments joined by max on arrival): unit k reads the row of
  t - s_k, its copy of the synapses being delayed s_k more. ``inhibition`` is a ring of
  pending inhibition, unit j's spike at t arriving at each unit k of a later step at
  t + s_k - s_j with weight -h_j (units of one step do not inhibit each other). The bias
  is gated as on Loihi: the unit holds ``b - E``
  (E = 2^8 (floor(b / 2^8) + 1)) and the enable of weight E arrives with the input of a
  scheduled evaluation (input s at unit k: step start + s * interval + s_k); a unit that
  fires without it is counted as spurious. Unit k fires when
  ``v >= T_k`` (Lava's LIF: ``v > vth`` with vth = T_k - 1). A readout adds its bias to
  the input of its scheduled steps.

Results are written once per process, at its last step (``dump``, an .npz), instead of
being read element by element through Lava Vars or Monitors.

Keep this package free of side effects and of unrelated modules: Lava's compiler
imports every .py file beside a module that defines a process model.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

#: Loihi's enable weight is an 8-bit mantissa times 2^ENABLE_EXP (docs/ir.md, gated bias).
ENABLE_EXP = 8


def _size(shape) -> int:
    return int(np.prod(shape))


def _steps(code) -> tuple:
    """The step of each unit relative to the population's start: the code's ``steps``, or
    unit k at step k (docs/ir.md, gate structures)."""
    return tuple(int(v) for v in code.steps) if code.steps else tuple(range(len(code.thresholds)))


def _offsets(src, tgt) -> list:
    """1 + delay of source plane j's synapses into the target's copy 0 (docs/ir.md#timing):
    unit j fires at start(src) + step_j."""
    return [tgt.start - src.start - s for s in _steps(src.code)]


# ---------------------------------------------------------------------------
# Weight matrices from the projection layouts (built once per process)
# ---------------------------------------------------------------------------

def conv_matrix(w: np.ndarray, in_shape, out_shape, attrs) -> sp.csc_matrix:
    """The (C_out*Ho*Wo, C_in*H*W) integer matrix of an ONNX Conv (cross-correlation):
    out[o, y, x] += w[o, c, ky, kx] * in[g*C_in/g + c, y*sh - pt + ky*dh, x*sw - pl + kx*dw]
    with g = o // (C_out/groups), zero outside the input (padding). Built tap by tap: for
    kernel tap (ky, kx), the output positions whose input lies inside the image, times the
    (o, c) pairs whose weight at that tap is not zero."""
    co, cig, kh, kw = w.shape
    ci, h, wd = in_shape
    _, ho, wo = out_shape
    (sh, sw), (pt, pl, _, _), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
    cog = co // attrs["groups"]
    idx = np.int32 if max(co * ho * wo, ci * h * wd) < 2**31 else np.int64
    rows, cols, data = [], [], []
    for ky in range(kh):
        iy = np.arange(ho, dtype=idx) * sh - pt + ky * dh
        oy = np.flatnonzero((iy >= 0) & (iy < h)).astype(idx)
        for kx in range(kw):
            ix = np.arange(wo, dtype=idx) * sw - pl + kx * dw
            ox = np.flatnonzero((ix >= 0) & (ix < wd)).astype(idx)
            o, c = (v.astype(idx) for v in np.nonzero(w[:, :, ky, kx]))
            if oy.size == 0 or ox.size == 0 or o.size == 0:
                continue
            out_pos = (oy[:, None] * wo + ox[None, :]).reshape(-1)                  # within a channel
            in_pos = (iy[oy][:, None] * wd + ix[ox][None, :]).reshape(-1)
            cin = (o // cog) * cig + c
            rows.append((o[:, None] * (ho * wo) + out_pos[None, :]).reshape(-1))
            cols.append((cin[:, None] * (h * wd) + in_pos[None, :]).reshape(-1))
            data.append(np.repeat(w[o, c, ky, kx].astype(np.int32), out_pos.size))
    shape = (co * ho * wo, ci * h * wd)
    if not rows:
        return sp.csc_matrix(shape, dtype=np.int32)
    # one entry per (row, column), none zero: no duplicates to sum, no zeros to drop
    return sp.csc_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def weight_matrix(proj) -> sp.csc_matrix:
    """The projection's integer mantissa matrix M (targets x sources), int32 CSC: a step
    adds up the columns of the sources that spiked."""
    n_out, n_in = _size(proj.out_shape), _size(proj.in_shape)
    if proj.kind == "conv":
        m = conv_matrix(np.asarray(proj.weight), proj.in_shape, proj.out_shape, proj.attrs)
        if m.shape != (n_out, n_in):
            raise ValueError(f"projection {proj.name!r}: weight matrix {m.shape} != ({n_out}, {n_in})")
        return m
    elif proj.kind == "dense":
        m = sp.csc_matrix(np.asarray(proj.weight, dtype=np.int32))
    elif proj.kind == "sparse":
        m = sp.csc_matrix(proj.weight, dtype=np.int32)
    else:
        raise ValueError(f"projection {proj.name!r}: unknown kind {proj.kind!r}")
    if m.shape != (n_out, n_in):
        raise ValueError(f"projection {proj.name!r}: weight matrix {m.shape} != ({n_out}, {n_in})")
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class AmosSynapses(AbstractProcess):
    """Projection ``proj`` from the K_src units of ``src`` to ``tgt``'s input compartments.
    ``delay_line[(t + 1 + d) % D]`` holds what arrives at step t + 1 + d."""

    def __init__(self, *, proj, src, tgt, name=None):
        n_in = len(src.code.weights) * _size(src.shape)
        n_out = _size(tgt.input_shape)
        super().__init__(proj=proj, src=src, tgt=tgt, name=name)
        self.s_in = InPort(shape=(n_in,))
        self.a_out = OutPort(shape=(n_out,))
        self.delay_line = Var(shape=(max(_offsets(src, tgt)) + 1, n_out), init=0)


class AmosUnits(AbstractProcess):
    """A gate population's K units (spikes out: K x n, unit k's plane at k*n) or a
    readout's accumulators (no spikes)."""

    def __init__(self, *, pop, n_items, interval, dump, name=None):
        n = _size(pop.shape)
        k = len(pop.code.thresholds) if hasattr(pop, "code") else 1
        depth = _steps(pop.code)[-1] + 1 if hasattr(pop, "code") else 1
        super().__init__(pop=pop, n_items=n_items, interval=interval, dump=dump, name=name)
        self.a_in = InPort(shape=(_size(pop.input_shape),))  # compartments of a max-join unit
        self.s_out = OutPort(shape=(k * n if hasattr(pop, "code") else 1,))
        self.inputs = Var(shape=(depth, n), init=0)          # joined input of steps t-D+1..t
        self.inhibition = Var(shape=(depth, k, n), init=0)   # pending inhibition by arrival step, unit


@implements(proc=AmosSynapses, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAmosSynapsesModel(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    delay_line: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        proj, src, tgt = proc_params["proj"], proc_params["src"], proc_params["tgt"]
        self.columns = weight_matrix(proj)
        self.d = [int(d) for d in src.code.weights]
        self.k_src, self.n_src = len(self.d), _size(src.shape)
        self.offsets = _offsets(src, tgt)
        # each target row's channel exponent, as a left and a right shift
        rows_per_channel = _size(proj.out_shape) // proj.out_shape[0]
        e = np.repeat(np.asarray(proj.exp, np.int64), rows_per_channel)
        self.left, self.right = np.maximum(e, 0), np.maximum(-e, 0)

    def run_spk(self):
        t = self.time_step - 1
        depth = self.delay_line.shape[0]
        self.a_out.send(self.delay_line[t % depth].copy())
        self.delay_line[t % depth] = 0
        z = self.s_in.recv().reshape(self.k_src, self.n_src)
        for j in range(self.k_src):
            fired = np.flatnonzero(z[j])
            if fired.size == 0:
                continue
            # (M @ z_j)_i: the sum of row i's weights from the sources that fired
            m_z = np.asarray(self.columns[:, fired].sum(axis=1, dtype=np.int64)).reshape(-1)
            # floor(d_j * (M @ z_j) * 2^e): a left shift, or an arithmetic right shift
            y = np.right_shift(np.left_shift(m_z * self.d[j], self.left), self.right)
            row = (t + self.offsets[j]) % depth
            self.delay_line[row] += y.astype(np.int32)


@implements(proc=AmosUnits, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAmosUnitsModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    inputs: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    inhibition: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = proc_params
        pop = p["pop"]
        self.n_items, self.interval, self.dump = p["n_items"], max(int(p["interval"]), 1), p["dump"]
        self.first, self.shape = int(pop.start), tuple(pop.shape)  # not self.start: that is Lava's start()
        self.n = _size(pop.shape)
        self.gate = hasattr(pop, "code")
        self.bias = np.asarray(pop.bias, np.int64).reshape(-1)
        self.m = int(getattr(pop, "compartments", 1))
        if self.gate:
            code = pop.code
            self.k = len(code.thresholds)
            self.steps = _steps(code)
            self.depth = self.steps[-1] + 1
            self.thresholds = [int(x) for x in code.thresholds]
            self.resets = [int(x) for x in code.resets]
            # gated bias: constant b - E in [-2^8, -1], enable spike of weight E
            self.enable = (np.floor_divide(self.bias, 1 << ENABLE_EXP) + 1) << ENABLE_EXP
            self.idle_bias = self.bias - self.enable
            self.raster = np.zeros((self.n_items, self.k, self.n), np.uint8)
            self.spurious = 0
            self.last = (self.n_items - 1) * self.interval + self.first + self.depth - 1
        else:
            self.k = 1
            self.output = np.zeros((self.n_items, self.n), np.int64)
            self.last = (self.n_items - 1) * self.interval + self.first

    def _slot(self, t0: int):
        """The input whose evaluation begins at step t0 (its enable arrives then), or None."""
        if t0 < 0 or t0 % self.interval:
            return None
        s = t0 // self.interval
        return s if s < self.n_items else None

    def run_spk(self):
        t = self.time_step - 1
        a = self.a_in.recv().astype(np.int64)
        if self.m > 1:  # max-join: each unit's input is the largest of its compartments
            a = a.reshape(self.shape[0], self.m, -1).max(axis=1).reshape(-1)
        if not self.gate:
            s = self._slot(t - self.first)
            if s is not None:
                self.output[s] = self.bias + a
            self.s_out.send(np.zeros(1, np.int32))
        else:
            self._gate_step(t, a)
        if t == self.last:
            self._write()

    def _gate_step(self, t: int, a: np.ndarray):
        k_all, n, depth, st = self.k, self.n, self.depth, self.steps
        self.inputs[t % depth] = a
        pending = self.inhibition[t % depth]
        z = np.zeros((k_all, n), np.int32)
        for k in range(k_all):
            s = self._slot(t - st[k] - self.first)
            v = self.inputs[(t - st[k]) % depth].astype(np.int64) + pending[k] + self.idle_bias
            if s is not None:
                v += self.enable
            zk = v >= self.thresholds[k]
            z[k] = zk
            if s is None:
                self.spurious += int(zk.sum())
            else:
                self.raster[s, k] = zk
        pending[:] = 0
        self.s_out.send(z.reshape(-1))
        for j in range(k_all - 1):  # unit j inhibits the units of later steps, arriving at their step
            if z[j].any():
                inh = self.resets[j] * z[j]
                for k in range(j + 1, k_all):
                    if st[k] > st[j]:
                        self.inhibition[(t + st[k] - st[j]) % depth, k] -= inh

    def _write(self):
        tmp = self.dump + ".tmp.npz"
        if self.gate:
            np.savez(tmp, raster=self.raster.reshape(self.n_items, self.k, *self.shape),
                     spurious=self.spurious)
        else:
            np.savez(tmp, output=self.output.reshape(self.n_items, *self.shape))
        os.replace(tmp, self.dump)
