"""A Lava process whose fixed-point model raises at step 3 (for the no-hang test).
It lives alone in this package: Lava imports every module beside a process model."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class Broken(AbstractProcess):
    def __init__(self):
        super().__init__()
        self.s_out = OutPort(shape=(2,))


@implements(proc=Broken, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyBrokenModel(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)

    def run_spk(self):
        if self.time_step == 3:
            raise ValueError("deliberate failure in a process model")
        self.s_out.send(np.zeros(2, np.int32))
