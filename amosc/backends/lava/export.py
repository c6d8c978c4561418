"""``amosc export --target lava``: a self-contained Lava program.

The output directory holds ``network.py`` (builds the standard-process network
with public lava-nc APIs and runs it), ``lava_compat.py`` (the Python 3.11 import
fix), ``params.npz`` (the plan: weights, delays, thresholds; no pickle) and a
README. It needs numpy, scipy and lava-nc, not amosc.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ...errors import AmoscError
from ...fileio import umask
from . import _compat, loihi, network

README = """# Exported AMOS program ({source})

Standard Lava processes only (RingBuffer sources, LIFReset units, DelaySparse synapses,
a Monitor on the readout): {processes} processes, latency {latency} steps.

    pip install numpy scipy "lava-nc==0.10.0"   # on Python 3.11: --no-deps --ignore-requires-python
    python network.py --input x.npy -o logits.npy [--interval 1]

`x.npy` is float (N, {shape}); `logits.npy` is float (N, {classes}), the model's pre-softmax
output. On Loihi hardware, build the same graph with `network.build(plan, codes, interval,
steps)` and run it with Intel's Loihi run configuration instead of `Loihi2SimCfg`.
"""


def export_lava(program, out_dir) -> list[str]:
    out_dir = os.fspath(out_dir)
    plan = loihi.plan(program)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise AmoscError(f"{out_dir}: parent directory {parent} does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise AmoscError(f"{out_dir}: exists and is not a directory")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise AmoscError(f"{out_dir}: exists and is not empty")
    tmp = tempfile.mkdtemp(prefix=".amosc-export-", dir=parent)
    try:
        shutil.copyfile(network.__file__, os.path.join(tmp, "network.py"))
        shutil.copyfile(_compat.__file__, os.path.join(tmp, "lava_compat.py"))
        network.save_plan(plan, os.path.join(tmp, "params.npz"))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(README.format(source=program.provenance.get("source", "?"),
                                  processes=len(plan["processes"]), latency=program.latency,
                                  shape=", ".join(map(str, program.input_pop.shape)),
                                  classes=program.output_pop.shape[0]))
        os.chmod(tmp, 0o777 & ~umask())
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(os.listdir(out_dir))
