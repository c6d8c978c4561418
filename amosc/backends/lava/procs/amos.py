"""One Lava process per AMOS population (``fast`` style), running the reference
simulator's own per-population state classes inside fixed-point process models.

- :class:`AmosSynapses`: a projection; sends, at each step, the arrivals due for its
  target (like Lava's Dense it sends first and receives after, one step per hop);
- :class:`AmosUnits`: a gate population's K units, or a readout's accumulators;
  results go to ``dump`` (an .npz written once, at the last step) so that reading
  them costs nothing per element.
"""

from __future__ import annotations

import os

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class AmosSynapses(AbstractProcess):
    """Projection ``proj`` from a population of K_src units to ``n_out`` targets."""

    def __init__(self, *, proj, src, tgt, name=None):
        n_in = src.code.bits * int(np.prod(src.shape))
        super().__init__(proj=proj, src=src, tgt=tgt, name=name)
        self.s_in = InPort(shape=(n_in,))
        self.a_out = OutPort(shape=(int(np.prod(tgt.input_shape)),))


class AmosUnits(AbstractProcess):
    """A gate population (spikes out: K x n) or the readout (no spikes)."""

    def __init__(self, *, pop, n_items, interval, dump, name=None):
        n = int(np.prod(pop.shape))
        super().__init__(pop=pop, n_items=n_items, interval=interval, dump=dump, name=name)
        self.a_in = InPort(shape=(int(np.prod(pop.input_shape)),))  # compartments of a pooling unit
        self.s_out = OutPort(shape=(pop.code.bits * n if hasattr(pop, "code") else 1,))


@implements(proc=AmosSynapses, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAmosSynapsesModel(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        from amosc.backends.reference import SynapseState
        p = proc_params
        self.src_shape = (p["src"].code.bits, 1, *p["src"].shape)
        self.state = SynapseState(p["proj"], p["src"], p["tgt"])
        self.pending: dict[int, np.ndarray] = {}
        self.n_out = int(np.prod(p["tgt"].input_shape))

    def run_spk(self):
        t = self.time_step - 1
        out = self.pending.pop(t, None)
        self.a_out.send(np.zeros(self.n_out, np.int32) if out is None else out.reshape(-1).astype(np.int32))
        z = self.s_in.recv().reshape(self.src_shape).astype(np.uint8)
        self.state.deliver(z, t, self._arrive)

    def _arrive(self, step, y):
        self.pending[step] = self.pending[step] + y if step in self.pending else y


@implements(proc=AmosUnits, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAmosUnitsModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        from amosc.backends.reference import Schedule, UnitsState
        p = proc_params
        self.pop = pop = p["pop"]
        self.sched = Schedule(p["n_items"], 1, p["interval"])
        self.state = UnitsState(pop, 1, self.sched)
        self.gate = hasattr(pop, "code")
        self.dump = p["dump"]
        self.last = self.sched.steps_before_last + pop.start + (pop.code.bits - 1 if self.gate else 0)
        n = p["n_items"]
        if self.gate:
            self.raster = np.zeros((n, pop.code.bits, *pop.shape), np.uint8)
        else:
            self.output = np.zeros((n, *pop.shape), np.int64)

    def run_spk(self):
        t = self.time_step - 1
        a = self.a_in.recv().astype(np.int64).reshape(1, *self.pop.input_shape)
        if a.any():
            self.state.arrive(t, a)
        if self.gate:
            z = self.state.step(t, self._note)
            self.s_out.send(np.zeros(self.s_out.shape, np.int32) if z is None else z.reshape(-1).astype(np.int32))
        else:
            got = self.state.readout(t)
            if got is not None:
                self.output[got[0]] = got[1][0]
            self.s_out.send(np.zeros(1, np.int32))
        self.state.forget(t)
        if t == self.last:
            tmp = self.dump + ".tmp.npz"
            if self.gate:
                np.savez(tmp, raster=self.raster, spurious=self.state.spurious)
            else:
                np.savez(tmp, output=self.output)
            os.replace(tmp, self.dump)

    def _note(self, slot, k, zk):
        self.raster[slot, k] = zk[0]
