"""The ``.amos`` artifact: one zip file holding ``manifest.json`` and ``.npy`` arrays.

No pickle anywhere: the manifest is JSON, arrays are parsed from their ``.npy``
header by this module (integer dtypes only). Files are written by
:func:`amosc.fileio.atomic_write` (temporary file beside the target, then rename), so a
reader never sees half a file.

:func:`load` treats the file as untrusted (docs/ir.md#loading-untrusted-files): it
bounds the decompressed size before reading anything, checks every manifest field's
JSON type and every array's dtype, shape and (for CSR matrices) structure and index
bounds before any numpy or scipy kernel computes with it, builds the nodes (whose
``__post_init__`` checks their invariants) and verifies the program. Every problem is
an :class:`ArtifactError` naming the file and the population, projection or field.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib

import numpy as np
import numpy.lib.format as npformat
import scipy.sparse as sp

from ..errors import AmoscError, ArtifactError, IRError
from ..fileio import atomic_write  # noqa: F401  (also the name benchmarks import from here)
from .nodes import (CODE_WEIGHT_LIMIT, MAX_BITS, MAX_START_STEP, MAX_UNITS, PROJECTION_KINDS, RESET_LIMIT,
                    THRESHOLD_LIMIT,
                    Code, GatePop, InputPop, Program, Projection, ReadoutPop)

FORMAT = "amosc-program"
FORMAT_VERSION = 1

#: Largest total decompressed size of an ``.amos`` file's members, and of what :func:`load`
#: reads from them, in bytes (override: the environment variable AMOSC_MAX_ARTIFACT_BYTES).
#: Real programs are far below: examples/fmnist_resnet at K=8 is 0.4 MiB, the largest
#: fixture (examples/fixtures/efficientnet.onnx, K=8) 682 MiB.
MAX_ARTIFACT_BYTES = 4 * 2**30
MAX_ARTIFACT_BYTES_ENV = "AMOSC_MAX_ARTIFACT_BYTES"
#: Largest manifest.json (real ones: 17 KB to 1.4 MB); it is parsed into Python objects.
MAX_MANIFEST_BYTES = 64 * 2**20
#: Deepest nesting of the manifest's JSON (real ones: 6).
MAX_MANIFEST_DEPTH = 32
#: Most populations and projections (real programs: tens to hundreds).
MAX_POPULATIONS = 2**14
MAX_PROJECTIONS = 2**15
#: Shapes: at most MAX_RANK axes, each at most MAX_DIM, at most MAX_ELEMENTS elements.
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40
#: Member compression methods load accepts (what :func:`save` writes, and no bombs beyond
#: deflate's ~1000:1).
COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: Room for a .npy member's magic and header (numpy parses headers of at most 10000 bytes).
NPY_HEADER_BYTES = 2**14


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
            d.update(kind="input", bits=int(p.bits), scale=float(p.scale), zero_point=float(p.zero_point))
        else:
            key = f"pop/{len(pops)}/bias.npy"
            arrays[key] = p.bias
            d.update(bias=key, scale=[float(v) for v in p.scale], tensor=p.tensor)
            if isinstance(p, GatePop):
                d.update(kind="gate", activation=p.activation,
                         code={"thresholds": list(p.code.thresholds), "resets": list(p.code.resets),
                               "weights": list(p.code.weights)})
                if p.code.steps:
                    d["code"]["steps"] = list(p.code.steps)
                if p.fit is not None:
                    d["fit"] = p.fit
                if p.compartments > 1:
                    d["compartments"] = int(p.compartments)
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


def max_artifact_bytes() -> int:
    """The decompressed-size limit: AMOSC_MAX_ARTIFACT_BYTES if set, else MAX_ARTIFACT_BYTES."""
    raw = os.environ.get(MAX_ARTIFACT_BYTES_ENV, "").strip()
    if not raw:
        return MAX_ARTIFACT_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise AmoscError(f"{MAX_ARTIFACT_BYTES_ENV}={raw!r} must be a positive number of bytes")
    return value


class _Refused(Exception):
    """The file is not one load reads (its message is complete)."""


class _Invalid(IRError):
    """A manifest field or array is wrong (its message names it)."""


class _Corrupt(Exception):
    """The zip container or a member's compressed data is damaged."""


#: What zipfile and zlib raise on damaged containers and streams.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, struct.error,
               ValueError, NotImplementedError, RuntimeError, OverflowError, IndexError, KeyError)


def load(path) -> Program:
    """Read an ``.amos`` file, treating it as untrusted; raise ArtifactError naming the file
    and the offending member, population, projection or field."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such file")
    limit = max_artifact_bytes()
    try:
        try:
            z = zipfile.ZipFile(path)
        except _ZIP_ERRORS as exc:
            raise _Corrupt(_one_line(exc)) from None
        with z:
            archive = _Archive(z, limit)
            program = from_parts(archive.manifest(), archive)
    except _Refused as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except _Corrupt as exc:
        raise ArtifactError(f"{path}: corrupt or truncated .amos file ({exc})") from None
    except (_Invalid, AmoscError) as exc:
        raise ArtifactError(f"{path}: invalid program: {_one_line(exc)}") from None
    return program


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:2000] + "..."


def _show(v) -> str:
    """A short rendering of a manifest value for messages: JSON, cut at 60 characters."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        text = type(v).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Archive:
    """The zip's members, read with bounded sizes."""

    def __init__(self, z: zipfile.ZipFile, limit: int):
        self.z, self.limit, self.used = z, limit, 0
        infos = z.infolist()
        self.members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if name in self.members:
                raise _Invalid(f"member {name!r} appears twice in the archive")
            if info.flag_bits & 0x1:
                raise _Invalid(f"member {name!r} is encrypted")
            if info.compress_type not in COMPRESSION:
                raise _Invalid(f"member {name!r} uses compression method {info.compress_type}; .amos "
                               "members are stored or deflated")
            self.members[name] = info
            total += info.file_size
        if total > limit:
            raise _Refused(f"too large: its members decompress to {total} bytes, more than the limit of "
                           f"{limit} (MAX_ARTIFACT_BYTES; set {MAX_ARTIFACT_BYTES_ENV} to change it)")

    def read(self, name: str, what: str, most: int | None = None) -> bytes:
        info = self.members.get(name)
        if info is None:
            raise _Invalid(f"{what}: the archive has no member {name!r}")
        size = info.file_size
        if most is not None and size > most:
            raise _Invalid(f"{what}: member {name!r} decompresses to {size} bytes, more than the {most} "
                           "it can take")
        if self.used + size > self.limit:
            raise _Refused(f"too large: reading member {name!r} would take the data read to {self.used + size} "
                           f"bytes, more than the limit of {self.limit} (MAX_ARTIFACT_BYTES; set "
                           f"{MAX_ARTIFACT_BYTES_ENV} to change it)")
        self.used += size
        try:
            with self.z.open(info) as f:
                data = f.read(size + 1)  # never more than declared, whatever the stream holds
        except _ZIP_ERRORS as exc:
            raise _Corrupt(f"member {name!r}: {_one_line(exc)}") from None
        if len(data) != size:
            raise _Corrupt(f"member {name!r}: {len(data)} bytes instead of the declared {size}")
        return data

    def manifest(self) -> dict:
        if "manifest.json" not in self.members:
            raise _Refused("not an .amos program (no manifest.json)")
        size = self.members["manifest.json"].file_size
        if size > MAX_MANIFEST_BYTES:
            raise _Refused(f"too large: manifest.json decompresses to {size} bytes, more than "
                           f"{MAX_MANIFEST_BYTES} (MAX_MANIFEST_BYTES)")
        raw = self.read("manifest.json", "manifest")
        try:
            manifest = json.loads(raw)
        except RecursionError:
            raise _Invalid("manifest.json is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
            raise _Invalid(f"manifest.json is not valid JSON ({_one_line(exc)})") from None
        if not isinstance(manifest, dict):
            raise _Refused(f"not an .amos program (manifest.json is {_show(manifest)}, not a JSON object)")
        if manifest.get("format") != FORMAT:
            raise _Refused(f"not an .amos program (format {_show(manifest.get('format'))})")
        v = manifest.get("format_version")
        if type(v) is not int:
            raise _Refused(f"format version {_show(v)} is not an integer; this amosc reads versions 1 to "
                           f"{FORMAT_VERSION}")
        if v > FORMAT_VERSION:
            raise _Refused(f"format version {v} is newer than this amosc reads ({FORMAT_VERSION}); "
                           "upgrade amosc")
        if v < 1:
            raise _Refused(f"format version {v} is not valid; this amosc reads versions 1 to {FORMAT_VERSION}")
        return manifest

    def array(self, name, what: str, elements: int | None = None) -> np.ndarray:
        """An integer .npy member: its header parsed and its data size checked before any
        array is made (native byte order, C-contiguous, writable). ``elements``: how many
        the array can hold at most, so a larger member is refused before it is read."""
        if not isinstance(name, str):
            raise _Invalid(f"{what} must name an archive member, got {_show(name)}")
        most = None if elements is None else elements * 8 + NPY_HEADER_BYTES
        data = self.read(name, what, most)
        f = io.BytesIO(data)
        try:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError) as exc:
            raise _Invalid(f"{what}: member {name!r} is not a valid .npy array ({_one_line(exc)})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "iu":
            raise _Invalid(f"{what}: member {name!r} has dtype {dtype}, not an integer type")
        if not (isinstance(shape, tuple) and len(shape) <= MAX_RANK
                and all(type(n) is int and 0 <= n <= MAX_DIM for n in shape)):
            raise _Invalid(f"{what}: member {name!r} has shape {shape!r:.80}")
        count = math.prod(shape)
        offset = f.tell()
        if len(data) - offset != count * dtype.itemsize:
            raise _Invalid(f"{what}: member {name!r} holds {len(data) - offset} bytes of data; a {dtype} "
                           f"array {shape} needs {count * dtype.itemsize}")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        return np.array(arr, dtype=dtype.newbyteorder("="), order="C")


def _check_json(manifest) -> None:
    """Nesting at most MAX_MANIFEST_DEPTH; no control characters in any string or key
    (names and provenance are printed by ``amosc inspect``)."""
    stack = [(manifest, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_MANIFEST_DEPTH:
                raise _Invalid(f"manifest.json is nested more than {MAX_MANIFEST_DEPTH} levels deep")
            if isinstance(v, dict):
                for k, item in v.items():
                    _check_text(k)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)
        elif isinstance(v, str):
            _check_text(v)


def _check_text(s: str) -> None:
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in s):
        raise _Invalid(f"manifest.json string {s[:60]!r} contains control characters")


_MISSING = object()


def _is_number(v) -> bool:
    """A JSON number that is a float64 (not a boolean, not an integer beyond float range)."""
    if type(v) is float:
        return True
    return type(v) is int and -2**1023 < v < 2**1023


class _Obj:
    """A JSON object of the manifest; every accessor checks the field's JSON type and range
    and names the object and field when it is wrong."""

    def __init__(self, v, where: str):
        if not isinstance(v, dict):
            raise _Invalid(f"{where} must be a JSON object, got {_show(v)}")
        self.d, self.where = v, where

    def raw(self, key, default=_MISSING):
        if key in self.d:
            return self.d[key]
        if default is _MISSING:
            raise _Invalid(f"{self.where}: field {key!r} is missing")
        return default

    def bad(self, key, want, v) -> _Invalid:
        return _Invalid(f"{self.where}: field {key!r} must be {want}, got {_show(v)}")

    def int(self, key, lo, hi, default=_MISSING) -> int:
        v = self.raw(key, default)
        if type(v) is not int or not lo <= v <= hi:
            raise self.bad(key, f"an integer in [{lo}, {hi}]", v)
        return v

    def num(self, key) -> float:
        v = self.raw(key)
        if not _is_number(v):
            raise self.bad(key, "a number", v)
        return float(v)

    def str(self, key, default=_MISSING) -> str:
        v = self.raw(key, default)
        if not isinstance(v, str):
            raise self.bad(key, "a string", v)
        return v

    def name(self, key) -> str:
        v = self.str(key)
        if not v:
            raise self.bad(key, "a non-empty string", v)
        return v

    def choice(self, key, options) -> str:
        v = self.raw(key)
        if not isinstance(v, str) or v not in options:
            raise self.bad(key, " or ".join(map(repr, options)), v)
        return v

    def list(self, key, most: int, default=_MISSING) -> list:
        v = self.raw(key, default)
        if not isinstance(v, list) or len(v) > most:
            raise self.bad(key, f"a list of at most {most} items", v)
        return v

    def obj(self, key, default=_MISSING) -> "_Obj":
        return _Obj(self.raw(key, default), f"{self.where} field {key!r}")

    def ints(self, key, lo, hi, n=None, most=None) -> list:
        v = self.raw(key)
        if not (isinstance(v, list) and (n is None or len(v) == n) and (most is None or 1 <= len(v) <= most)
                and all(type(x) is int and lo <= x <= hi for x in v)):
            size = f"{n} " if n is not None else f"1 to {most} " if most is not None else ""
            raise self.bad(key, f"a list of {size}integers in [{lo}, {hi}]", v)
        return v

    def nums(self, key, n=None) -> list:
        v = self.raw(key)
        if not (isinstance(v, list) and (n is None or len(v) == n) and all(_is_number(x) for x in v)):
            raise self.bad(key, f"a list of {'' if n is None else f'{n} '}numbers", v)
        return [float(x) for x in v]

    def shape(self, key, rank=None) -> tuple:
        v = self.raw(key)
        if not (isinstance(v, list) and 1 <= len(v) <= MAX_RANK and (rank is None or len(v) == rank)
                and all(type(n) is int and 1 <= n <= MAX_DIM for n in v)) or math.prod(v) > MAX_ELEMENTS:
            raise self.bad(key, f"a shape ({rank or f'1 to {MAX_RANK}'} integers in [1, {MAX_DIM}], at most "
                                f"{MAX_ELEMENTS} elements)", v)
        return tuple(v)


def _where(what: str, i: int, d) -> str:
    name = d.get("name") if isinstance(d, dict) else None
    return f"{what} {i}" + (f" ({name!r:.80})" if isinstance(name, str) else "")


class _Arrays:
    """Arrays given by a function ``key -> ndarray`` (the text form, :mod:`amosc.ir.asm`),
    checked like the members of an archive."""

    def __init__(self, fn):
        self.fn = fn

    def array(self, name, what: str, elements: int | None = None) -> np.ndarray:
        if not isinstance(name, str):
            raise _Invalid(f"{what} must name an array, got {_show(name)}")
        try:
            a = self.fn(name)
        except KeyError:
            raise _Invalid(f"{what}: no array {name!r}") from None
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.dtype.fields is not None:
            raise _Invalid(f"{what}: array {name!r} is not an integer array")
        if elements is not None and a.size > elements:
            raise _Invalid(f"{what}: array {name!r} has {a.size} elements, more than {elements}")
        return a


def from_parts(manifest, arrays) -> Program:
    """The verified program of a manifest (as :func:`to_manifest` makes) and its arrays (an
    archive, or a function ``key -> ndarray`` raising KeyError: the text form,
    :mod:`amosc.ir.asm`), checked as :func:`load` checks a file: JSON strings and nesting,
    every field's type and range, every array's dtype and shape, the node invariants, then
    :func:`~amosc.ir.verify.verify`. Raises IRError (or RangeError) naming the population,
    projection or field at fault."""
    from .verify import verify
    _check_json(manifest)
    program = _from_manifest(manifest, arrays)
    verify(program)
    return program


def _from_manifest(m: dict, archive) -> Program:
    """The program of a manifest whose arrays come from ``archive`` (an :class:`_Archive`, or
    a function ``key -> ndarray``). Raises IRError naming the field at fault."""
    if not isinstance(archive, _Archive):
        archive = _Arrays(archive)
    top = _Obj(m, "manifest")
    inp, out = top.name("input"), top.name("output")
    options = top.obj("options", {}).d
    provenance = top.obj("provenance", {})
    for key in ("source", "sha256", "amosc"):
        if key in provenance.d:
            provenance.str(key)
    pops = [_population(i, d, archive) for i, d in enumerate(top.list("populations", MAX_POPULATIONS))]
    projs = [_projection(i, d, archive) for i, d in enumerate(top.list("projections", MAX_PROJECTIONS))]
    return Program(pops, projs, inp, out, options, provenance.d)


def _population(i: int, d, archive):
    where = _where("population", i, d)
    o = _Obj(d, where)
    name = o.name("name")
    kind = o.choice("kind", ("input", "gate", "readout"))
    shape = o.shape("shape")
    start = o.int("start", 0, MAX_START_STEP)
    if kind == "input":
        return InputPop(name, shape, o.int("bits", 1, MAX_BITS), o.num("scale"), o.num("zero_point"), start)
    bias = archive.array(o.str("bias"), f"{where} field 'bias'", math.prod(shape))
    scale = np.asarray(o.nums("scale", shape[0]), np.float64)
    tensor = o.str("tensor", "")
    if kind == "readout":
        return ReadoutPop(name, shape, bias, scale, start, tensor)
    c = o.obj("code")
    th = c.ints("thresholds", 1, THRESHOLD_LIMIT, most=MAX_UNITS)
    k = len(th)
    code_args = (th, c.ints("resets", -RESET_LIMIT, RESET_LIMIT, n=k),
                 c.ints("weights", -CODE_WEIGHT_LIMIT, CODE_WEIGHT_LIMIT, n=k),
                 c.ints("steps", 0, k - 1, n=k) if c.raw("steps", None) is not None else ())
    code = Code(*(tuple(v) for v in code_args))
    return GatePop(name, shape, code, bias, scale, start, o.str("activation"), tensor, _fit(o),
                   o.int("compartments", 1, MAX_DIM, default=1))


def _fit(o: _Obj):
    """A segmented gate's fit: what ``inspect`` prints and decoding needs, with JSON types
    checked here and shapes (segments, slopes, offset) by GatePop."""
    if o.raw("fit", None) is None:
        return None
    f = o.obj("fit")
    f.str("fn")
    lo, hi = (float(v) for v in f.nums("range", 2))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise f.bad("range", "two finite numbers", f.raw("range"))
    f.int("segments", 1, MAX_DIM)
    f.int("bits", 1, MAX_BITS)
    f.int("neurons_per_element", 1, MAX_DIM)
    f.int("channels", 1, MAX_DIM, default=1)
    for key in ("max_err", "mean_err"):
        if not math.isfinite(f.num(key)):
            raise f.bad(key, "a finite number", f.raw(key))
    slopes = f.raw("slopes")
    rows = slopes if isinstance(slopes, list) and slopes and all(isinstance(r, list) for r in slopes) else [slopes]
    for r in rows:
        if not (isinstance(r, list) and all(_is_number(x) for x in r)):
            raise f.bad("slopes", "a list of numbers or a list of such lists", slopes)
    offset = f.raw("offset")
    if not (_is_number(offset) or isinstance(offset, list) and all(_is_number(x) for x in offset)):
        raise f.bad("offset", "a number or a list of numbers", offset)
    return f.d


def _projection(i: int, d, archive) -> Projection:
    where = _where("projection", i, d)
    o = _Obj(d, where)
    name, source, target = o.name("name"), o.name("source"), o.name("target")
    kind = o.choice("kind", PROJECTION_KINDS)
    in_shape, out_shape = o.shape("in_shape"), o.shape("out_shape")
    exp = np.asarray(o.ints("exp", -32, 31, n=out_shape[0]), np.int64)
    attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in o.obj("attrs", {}).d.items()}
    if kind == "sparse":
        w = o.obj("weight")
        pre = w.str("sparse")
        rows, cols = w.shape("shape", rank=2)
        weight = _csr(where, *(archive.array(pre + part + ".npy", f"{where} sparse {part}", n)
                               for part, n in (("data", rows * cols), ("indices", rows * cols),
                                               ("indptr", rows + 1))), rows, cols)
    else:
        dense = math.prod(in_shape) * math.prod(out_shape) if kind == "dense" else None
        weight = archive.array(o.str("weight"), f"{where} field 'weight'", dense)
        rank = 4 if kind == "conv" else 2
        if weight.dtype != np.int8 or weight.ndim != rank:
            raise _Invalid(f"{where}: a {kind} weight must be an int8 {rank}-D array, got {weight.dtype} "
                           f"{weight.shape}")
    return Projection(name, source, target, kind, weight, exp, in_shape, out_shape, attrs)


def _csr(where: str, data, indices, indptr, rows: int, cols: int) -> sp.csr_matrix:
    """A CSR matrix from arrays checked completely first: scipy trusts indptr and indices
    (out-of-range ones crash it or silently read other columns)."""
    for part, a in (("data", data), ("indices", indices), ("indptr", indptr)):
        if a.ndim != 1:
            raise _Invalid(f"{where}: sparse {part} must be 1-D, got shape {a.shape}")
    if data.dtype != np.int8:
        raise _Invalid(f"{where}: sparse data must be int8, got {data.dtype}")
    nnz = data.shape[0]
    if indices.shape[0] != nnz:
        raise _Invalid(f"{where}: sparse indices has {indices.shape[0]} entries, data has {nnz}")
    if indptr.shape[0] != rows + 1:
        raise _Invalid(f"{where}: sparse indptr has {indptr.shape[0]} entries; {rows} rows need {rows + 1}")
    ip, ix = _int64(where, "indptr", indptr), _int64(where, "indices", indices)
    if ip[0] != 0 or ip[-1] != nnz:
        raise _Invalid(f"{where}: sparse indptr must run from 0 to nnz = {nnz}, got {ip[0]} .. {ip[-1]}")
    if np.any(ip[1:] < ip[:-1]):
        row = int(np.argmax(ip[1:] < ip[:-1]))
        raise _Invalid(f"{where}: sparse indptr decreases at row {row} ({ip[row]} -> {ip[row + 1]})")
    if nnz:
        bad = (ix < 0) | (ix >= cols)
        if bad.any():
            raise _Invalid(f"{where}: sparse column index {int(ix[bad][0])} outside [0, {cols})")
    index = np.int32 if max(rows, cols, nnz) < 2**31 else np.int64
    return sp.csr_matrix((data, ix.astype(index), ip.astype(index)), shape=(rows, cols))


def _int64(where: str, part: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise _Invalid(f"{where}: sparse {part} has a value beyond int64")
    return a.astype(np.int64)
