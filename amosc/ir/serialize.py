"""The ``.amos`` artifact: one zip file holding ``manifest.json`` and ``.npy`` arrays.

No pickle anywhere: the manifest is JSON, arrays are read with
``allow_pickle=False``. Files are written to a temporary name beside the target
and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np
import scipy.sparse as sp

from ..errors import AmoscError, ArtifactError
from .nodes import Code, GatePop, InputPop, Program, Projection, ReadoutPop

FORMAT = "amosc-program"
FORMAT_VERSION = 1


def atomic_write(path, write_fn) -> None:
    """Call write_fn(fileobj) on a temp file beside ``path``, then rename it into place."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise AmoscError(f"{path}: directory {d} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def to_manifest(program: Program):
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for p in program.populations:
        d = {"name": p.name, "shape": list(p.shape), "start": int(p.start)}
        if isinstance(p, InputPop):
            d.update(kind="input", bits=p.bits, scale=p.scale, zero_point=p.zero_point)
        else:
            key = f"pop/{len(pops)}/bias.npy"
            arrays[key] = p.bias
            d.update(bias=key, scale=[float(v) for v in p.scale], tensor=p.tensor)
            if isinstance(p, GatePop):
                d.update(kind="gate", activation=p.activation,
                         code={"thresholds": list(p.code.thresholds), "resets": list(p.code.resets),
                               "weights": list(p.code.weights)})
                if p.fit is not None:
                    d["fit"] = p.fit
                if p.compartments > 1:
                    d["compartments"] = p.compartments
            else:
                d.update(kind="readout")
        pops.append(d)
    projs = []
    for i, pr in enumerate(program.projections):
        d = {"name": pr.name, "source": pr.source, "target": pr.target, "kind": pr.kind,
             "exp": [int(v) for v in pr.exp], "in_shape": list(pr.in_shape), "out_shape": list(pr.out_shape),
             "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pr.attrs.items()}}
        if sp.issparse(pr.weight):
            for part in ("data", "indices", "indptr"):
                arrays[f"proj/{i}/{part}.npy"] = getattr(pr.weight, part)
            d["weight"] = {"sparse": f"proj/{i}/", "shape": list(pr.weight.shape)}
        else:
            arrays[f"proj/{i}/weight.npy"] = pr.weight
            d["weight"] = f"proj/{i}/weight.npy"
        projs.append(d)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "input": program.input,
                "output": program.output, "options": program.options,
                "provenance": program.provenance, "populations": pops, "projections": projs}
    return manifest, arrays


def save(program: Program, path) -> None:
    manifest, arrays = to_manifest(program)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            for key, arr in arrays.items():
                z.writestr(key, _npy(arr))

    atomic_write(path, write)


def load(path) -> Program:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                manifest = json.loads(z.read("manifest.json"))
            except KeyError:
                raise ArtifactError(f"{path}: not an .amos program (no manifest.json)") from None
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path}: not an .amos program (format {manifest.get('format')!r})")
            v = manifest.get("format_version")
            if not isinstance(v, int) or v > FORMAT_VERSION:
                raise ArtifactError(f"{path}: format version {v} is newer than this amosc reads "
                                    f"({FORMAT_VERSION}); upgrade amosc")

            def arr(key):
                return np.load(io.BytesIO(z.read(key)), allow_pickle=False)

            program = _from_manifest(manifest, arr)
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{path}: corrupt or truncated .amos file ({exc})") from None
    except AmoscError as exc:
        raise ArtifactError(f"{path}: invalid program: {exc}") from None
    except (KeyError, ValueError, TypeError, OSError, zipfile.LargeZipFile) as exc:
        raise ArtifactError(f"{path}: corrupt .amos file ({type(exc).__name__}: {exc})") from None
    from .verify import verify
    try:
        verify(program)
    except AmoscError as exc:
        raise ArtifactError(f"{path}: invalid program: {exc}") from None
    return program


def _from_manifest(m: dict, arr) -> Program:
    pops = []
    for d in m["populations"]:
        shape = tuple(d["shape"])
        if d["kind"] == "input":
            pops.append(InputPop(d["name"], shape, int(d["bits"]), float(d["scale"]),
                                 float(d["zero_point"]), int(d["start"])))
        elif d["kind"] == "gate":
            c = d["code"]
            code = Code(tuple(c["thresholds"]), tuple(c["resets"]), tuple(c["weights"]))
            pops.append(GatePop(d["name"], shape, code, arr(d["bias"]), np.asarray(d["scale"], np.float64),
                                int(d["start"]), d["activation"], d["tensor"], d.get("fit"),
                                int(d.get("compartments", 1))))
        elif d["kind"] == "readout":
            pops.append(ReadoutPop(d["name"], shape, arr(d["bias"]), np.asarray(d["scale"], np.float64),
                                   int(d["start"]), d["tensor"]))
        else:
            raise ArtifactError(f"unknown population kind {d['kind']!r}")
    projs = []
    for d in m["projections"]:
        w = d["weight"]
        if isinstance(w, dict):
            pre = w["sparse"]
            weight = sp.csr_matrix((arr(pre + "data.npy"), arr(pre + "indices.npy"),
                                    arr(pre + "indptr.npy")), shape=tuple(w["shape"]))
        else:
            weight = arr(w)
        attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d["attrs"].items()}
        projs.append(Projection(d["name"], d["source"], d["target"], d["kind"], weight, np.asarray(d["exp"], np.int64),
                                tuple(d["in_shape"]), tuple(d["out_shape"]), attrs))
    return Program(pops, projs, m["input"], m["output"], m.get("options", {}), m.get("provenance", {}))
