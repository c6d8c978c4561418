"""Hardware profiles: the per-core limits and per-event energies the cost model and the
core mapping use (docs/hardware.md lists the same numbers with their sources).

Every number names its source; ``estimate`` marks the ones that are not a published
figure of the chip but our reading of one (documented in docs/hardware.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelError

DAVIES_2018 = ("Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', "
               "IEEE Micro 38(1), 2018, Table 1 and Section 'Architecture'")
INTEL_LOIHI2 = ("Intel Labs, 'Taking Neuromorphic Computing to the Next Level with Loihi 2', "
                "technology brief, 2021")


@dataclass(frozen=True)
class Profile:
    name: str
    cores_per_chip: int
    neurons_per_core: int           # compartments
    synapse_memory_bits: int        # synaptic memory per core
    input_axons_per_core: int | None   # distinct presynaptic sources per core (None: not limited)
    output_axons_per_core: int | None  # distinct destination cores x neurons routed per core
    weight_bits: int                # bits per stored synaptic weight (amosc: 8-bit mantissas)
    delay_bits: int                 # extra bits per synapse when a projection uses delays
    max_delay: int                  # the longest synaptic delay in steps
    index_bits: int                 # per-synapse index overhead of a sparse synapse list
    conv_weight_sharing: bool       # a conv kernel is stored once per core, not per target neuron
    # energies in pJ
    e_synop: float                  # one synaptic operation (a spike delivered over one synapse)
    e_neuron_active: float          # one neuron update while it integrates or fires
    e_neuron_idle: float            # one neuron update while idle
    e_spike: float                  # one spike sent within a tile
    e_hop: float                    # one hop of a spike between tiles
    sources: dict = field(default_factory=dict)
    estimates: tuple = ()           # fields that are estimates, not published figures

    def check(self) -> None:
        if self.cores_per_chip < 1 or self.neurons_per_core < 1 or self.synapse_memory_bits < 1:
            raise ModelError(f"hardware profile {self.name!r}: sizes must be positive")


LOIHI1 = Profile(
    name="loihi1", cores_per_chip=128, neurons_per_core=1024, synapse_memory_bits=128 * 1024 * 8,
    input_axons_per_core=4096, output_axons_per_core=4096, weight_bits=8, delay_bits=6, max_delay=62,
    index_bits=12, conv_weight_sharing=False,
    e_synop=23.6, e_neuron_active=81.0, e_neuron_idle=52.0, e_spike=1.7, e_hop=3.5,
    sources={"cores_per_chip, neurons_per_core, synapse_memory_bits, input/output axons, energies": DAVIES_2018,
             "e_hop": DAVIES_2018 + " (3.0 pJ E-W, 4.0 pJ N-S: the mean is used)"},
    estimates=("index_bits", "delay_bits", "max_delay"),
)

LOIHI2 = Profile(
    name="loihi2", cores_per_chip=128, neurons_per_core=8192, synapse_memory_bits=128 * 1024 * 8,
    input_axons_per_core=None, output_axons_per_core=None, weight_bits=8, delay_bits=6, max_delay=62,
    index_bits=12, conv_weight_sharing=True,
    e_synop=23.6, e_neuron_active=81.0, e_neuron_idle=52.0, e_spike=1.7, e_hop=3.5,
    sources={"cores_per_chip, neurons_per_core, conv_weight_sharing (convolutional connectivity)": INTEL_LOIHI2,
             "energies": DAVIES_2018 + " (Loihi 1 figures; Loihi 2's are not published per event)"},
    estimates=("synapse_memory_bits", "input_axons_per_core", "output_axons_per_core", "index_bits",
               "delay_bits", "max_delay", "e_synop", "e_neuron_active", "e_neuron_idle", "e_spike", "e_hop"),
)

PROFILES = {p.name: p for p in (LOIHI1, LOIHI2)}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ModelError(f"unknown hardware target {name!r}; known: {sorted(PROFILES)}") from None
