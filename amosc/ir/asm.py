"""The integer IR as text (``.air``): :func:`dumps` prints a complete program, :func:`parses`
reads it back (grammar: docs/ir.md#text-form).

The text is a line-oriented rendering of the ``.amos`` manifest and its arrays
(:func:`amosc.ir.serialize.to_manifest`): one header line per population and projection
with its scalar fields, indented lines for its codes, scales, biases, weights and fits,
every value in JSON (object keys sorted, floats as Python's shortest round-trip ``repr``,
so bit-exact) and
integer arrays in decimal (runs as ``value*count``) or, when long, as labelled
zlib-compressed base64 of their little-endian bytes. :func:`parses` rebuilds the manifest
and hands it to :func:`amosc.ir.serialize.from_parts`, the same validation ``load``
applies to a file; every problem is one :class:`~amosc.errors.ArtifactError` naming the
line. ``parses(dumps(p))`` is a program whose ``dumps`` is the same text and whose
integers are those of ``p``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import zlib

import numpy as np

from ..errors import AmoscError, ArtifactError
from .nodes import Program
from .serialize import MAX_RANK, _check_json, from_parts, max_artifact_bytes, to_manifest

MAGIC = "amos-ir"
#: The version of the text grammar (``amos-ir 1`` on the first line).
TEXT_VERSION = 1
#: Arrays of at most this many decimal tokens (runs counted once) are printed in decimal;
#: longer ones compressed (``dumps(inline=None)``: always decimal).
INLINE = 256
#: Runs of at least this many equal values print as ``value*count``.
RUN = 3
DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")

#: The fields of each element: on its header line, then on its own indented lines, in
#: the order dumps prints them. ``weight``, ``bias`` hold integer arrays.
HEADER = {"input": ("shape", "start", "bits", "scale", "zero_point"),
          "gate": ("shape", "start", "activation", "tensor", "compartments"),
          "readout": ("shape", "start", "tensor"),
          "projection": ("source", "target", "kind", "in_shape", "out_shape", "attrs")}
BODY = {"input": (), "gate": ("code", "scale", "bias", "fit"), "readout": ("scale", "bias"),
        "projection": ("exp", "weight")}
ARRAY_FIELDS = ("bias", "weight")
#: Fields dumps leaves out at these values (the manifest's defaults).
DEFAULTS = {"attrs": {}, "tensor": ""}
SPARSE_PARTS = ("data", "indices", "indptr")
#: Manifest fields that are not printed as fields: the element's keyword and name.
_POSITIONAL = ("name", "kind")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARRAY = re.compile(r"(" + "|".join(DTYPES) + r")\[([0-9,]*)\](?: (.*))?")
_CSR = re.compile(r"csr\[([0-9]+),([0-9]+)\]")
_TOKEN = re.compile(r"(-?[0-9]{1,20})(?:\*([0-9]{1,20}))?")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_JSON = json.JSONDecoder()


def _json(v) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _key(k: str) -> str:
    return k if _KEY.fullmatch(k) else _json(k)


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------

def dumps(program: Program, inline: int | None = INLINE) -> str:
    """The program as text: complete (every field, every array), one element per
    paragraph, populations in program order and then projections. ``inline``: the most
    decimal tokens an array is printed with before it is compressed (None: never)."""
    manifest, arrays = to_manifest(program)
    out = [f"{MAGIC} {TEXT_VERSION}", f"program input={_json(manifest['input'])} output={_json(manifest['output'])}"]
    out += [f"option {_key(k)}={_json(v)}" for k, v in sorted(manifest["options"].items())]
    out += [f"provenance {_key(k)}={_json(v)}" for k, v in sorted(manifest["provenance"].items())]
    for d in manifest["populations"]:
        out += _element(d["kind"], d, arrays, inline)
    for d in manifest["projections"]:
        out += _element("projection", d, arrays, inline)
    return "\n".join(out) + "\n"


def _element(kind: str, d: dict, arrays: dict, inline) -> list:
    unknown = set(d) - set(HEADER[kind]) - set(BODY[kind]) - set(_POSITIONAL)
    if unknown:  # to_manifest gained a field this grammar does not know: a bug, not data
        raise AmoscError(f"amosc.ir.asm cannot print field(s) {sorted(unknown)} of a {kind}")
    head = [kind, _json(d["name"])]
    head += [f"{k}={_json(d[k])}" for k in HEADER[kind] if k in d and not (k in DEFAULTS and d[k] == DEFAULTS[k])]
    lines = ["", " ".join(head)]
    for k in BODY[kind]:
        if k not in d:
            continue
        v = d[k]
        if k not in ARRAY_FIELDS:
            lines.append(f"  {k} {_json(v)}")
        elif isinstance(v, dict):  # a CSR weight: its shape, then its three arrays
            lines.append(f"  {k} csr[{v['shape'][0]},{v['shape'][1]}]")
            lines += [f"  {k}.{part} {_array(arrays[v['sparse'] + part + '.npy'], inline)}"
                      for part in SPARSE_PARTS]
        else:
            lines.append(f"  {k} {_array(arrays[v], inline)}")
    return lines


def _array(a: np.ndarray, inline) -> str:
    a = np.asarray(a)
    head = f"{a.dtype.name}[{','.join(map(str, a.shape))}]"
    flat = a.reshape(-1)
    if flat.size == 0:
        return head
    cut = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], cut])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    tokens = []
    for v, n in zip(flat[starts].tolist(), counts.tolist()):
        tokens += [f"{v}*{n}"] if n >= RUN else [str(v)] * n
        if inline is not None and len(tokens) > inline:
            raw = np.ascontiguousarray(flat, dtype=a.dtype.newbyteorder("<")).tobytes()
            return f"{head} zlib:{base64.b64encode(zlib.compress(raw, 9)).decode('ascii')}"
    return f"{head} {' '.join(tokens)}"


def equal(p: Program, q: Program) -> bool:
    """Whether two programs are the same program: every field and array equal, floats
    bit for bit (their texts are equal)."""
    return dumps(p) == dumps(q)


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

class _Error(Exception):
    """A problem at a line (its message is complete)."""

    def __init__(self, line: int, msg: str):
        super().__init__(msg)
        self.line = line


class _Element:
    def __init__(self, kind: str, index: int, line: int, d: dict):
        self.kind, self.index, self.line, self.d = kind, index, line, d
        self.lines: dict[str, int] = {}  # field -> the line it is on


class _Parser:
    def __init__(self, budget: int):
        self.budget = budget  # bytes of arrays still allowed
        self.manifest: dict = {"options": {}, "provenance": {}, "populations": [], "projections": []}
        self.arrays: dict[str, np.ndarray] = {}
        self.elements: list[_Element] = []
        self.program_line = 0

    def parse(self, text: str) -> None:
        current = None
        for n, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip(" ")
            stripped = line.lstrip(" ")
            if "\t" in line or "\r" in line:
                raise _Error(n, "tabs and carriage returns are not allowed (indent with spaces)")
            if not stripped or stripped.startswith("#"):
                continue
            if not self.program_line and not line.startswith(MAGIC):
                raise _Error(n, f"an IR text starts with '{MAGIC} {TEXT_VERSION}'")
            if line[0] == " ":
                if current is None:
                    raise _Error(n, "an indented line must follow a population or projection header")
                self.body(current, stripped, n)
            else:
                current = self.statement(line, n)
        if not self.program_line:
            raise _Error(0, f"empty: an IR text starts with '{MAGIC} {TEXT_VERSION}'")
        if "input" not in self.manifest:
            raise _Error(0, "no 'program input=... output=...' line")
        for el in self.elements:
            w = el.d.get("weight")
            parts = [p for p in SPARSE_PARTS if f"weight.{p}" in el.lines]
            if isinstance(w, dict) and len(parts) < 3:
                missing = [p for p in SPARSE_PARTS if p not in parts]
                raise _Error(el.lines["weight"], f"a csr weight needs lines weight.{', weight.'.join(missing)}")
            if parts and not isinstance(w, dict):
                raise _Error(el.lines[f"weight.{parts[0]}"], "weight.data, weight.indices and weight.indptr "
                             "belong to a 'weight csr[ROWS,COLS]' line")

    def statement(self, line: str, n: int):
        word, _, rest = line.partition(" ")
        if word == MAGIC:
            if self.program_line or self.elements:
                raise _Error(n, f"'{MAGIC}' appears twice")
            if not re.fullmatch(r"[0-9]{1,9}", rest):
                raise _Error(n, f"expected '{MAGIC} {TEXT_VERSION}', got {line!r:.80}")
            if int(rest) != TEXT_VERSION:
                newer = " (newer than this amosc reads; upgrade amosc)" if int(rest) > TEXT_VERSION else ""
                raise _Error(n, f"text version {int(rest)}{newer}; this amosc reads version {TEXT_VERSION}")
            self.program_line = n
            return None
        if word == "program":
            if "input" in self.manifest:
                raise _Error(n, "a second 'program' line")
            f = _fields(rest, n)
            if set(f) != {"input", "output"}:
                raise _Error(n, f"'program' takes input=NAME output=NAME, got {sorted(f)}")
            self.manifest.update(f)
            self.program_line = n
            return None
        if word in ("option", "provenance"):
            target = self.manifest["options" if word == "option" else "provenance"]
            for k, v in _fields(rest, n).items():
                if k in target:
                    raise _Error(n, f"{word} {k!r} given twice")
                target[k] = v
            return None
        if word in HEADER:
            name, end = _value(rest, 0, n, "a name")
            if not isinstance(name, str):
                raise _Error(n, f"a {word} name is a JSON string such as \"g0\", got {_json(name):.60}")
            f = _fields(rest[end:], n)
            bad = [k for k in f if k not in HEADER[word]]
            if bad:
                where = " (it goes on its own indented line)" if bad[0] in BODY[word] else ""
                raise _Error(n, f"a {word} has no header field {bad[0]!r}{where}; its header fields are "
                                f"{', '.join(HEADER[word])}")
            d = {"name": name, **({} if word == "projection" else {"kind": word}), **f}
            group = "projections" if word == "projection" else "populations"
            el = _Element(word, len(self.manifest[group]), n, d)
            el.lines = {k: n for k in f}
            self.manifest[group].append(d)
            self.elements.append(el)
            return el
        raise _Error(n, f"unknown statement {word!r:.40}; expected {MAGIC}, program, option, provenance, "
                        f"{', '.join(HEADER)} or an indented field line")

    def body(self, el: _Element, text: str, n: int) -> None:
        key, _, value = text.partition(" ")
        base, dot, part = key.partition(".")
        if base not in BODY[el.kind] or (dot and (base != "weight" or part not in SPARSE_PARTS)):
            where = " (it goes on the header line)" if key in HEADER[el.kind] else ""
            known = ", ".join(BODY[el.kind]) or "none"
            raise _Error(n, f"a {el.kind} has no field line {key!r:.40}{where}; its field lines are {known}"
                            + (" (and weight.data, weight.indices, weight.indptr after 'weight csr[...]')"
                               if el.kind == "projection" else ""))
        if key in el.lines:
            raise _Error(n, f"field {key!r} given twice for {el.kind} {el.d['name']!r:.80} (line {el.lines[key]})")
        el.lines[key] = n
        prefix = f"{'proj' if el.kind == 'projection' else 'pop'}/{el.index}/"
        if base not in ARRAY_FIELDS:
            v, end = _value(value, 0, n, f"the value of {key!r}")
            if end != len(value):
                raise _Error(n, f"unexpected text after the value of {key!r}: {value[end:]!r:.40}")
            el.d[key] = v
        elif key == "weight" and value.startswith("csr"):
            m = _CSR.fullmatch(value)
            if not m:
                raise _Error(n, f"expected 'weight csr[ROWS,COLS]', got {value!r:.60}")
            el.d["weight"] = {"sparse": prefix, "shape": [int(m.group(1)), int(m.group(2))]}
        else:
            member = prefix + (part if dot else key) + ".npy"
            self.arrays[member] = self.array(value, n, key)
            if not dot:
                el.d[key] = member

    def array(self, text: str, n: int, key: str) -> np.ndarray:
        m = _ARRAY.fullmatch(text)
        if not m:
            raise _Error(n, f"{key} must be an integer array: DTYPE[SHAPE] VALUES (e.g. int32[2,2] 1 0*3) or "
                            f"DTYPE[SHAPE] zlib:BASE64, DTYPE one of {', '.join(DTYPES)}; got {text!r:.60}")
        dtype = np.dtype(m.group(1))
        dims = m.group(2)
        if dims and not re.fullmatch(r"[0-9]{1,12}(,[0-9]{1,12})*", dims):
            raise _Error(n, f"{key}: shape [{dims:.40}] must be integers separated by commas")
        shape = tuple(int(v) for v in dims.split(",")) if dims else ()
        if len(shape) > MAX_RANK:
            raise _Error(n, f"{key}: shape {list(shape)} has more than {MAX_RANK} axes")
        size = math.prod(shape)
        nbytes = size * dtype.itemsize
        if nbytes > self.budget:
            raise _Error(n, f"{key}: a {dtype} array {list(shape)} takes the program's arrays past "
                            f"{max_artifact_bytes()} bytes (AMOSC_MAX_ARTIFACT_BYTES)")
        self.budget -= nbytes
        payload = m.group(3) or ""
        if payload.startswith("zlib:"):
            return _inflate(payload[5:], dtype, shape, n, key)
        return _decimal(payload, dtype, shape, n, key)


def _value(text: str, pos: int, n: int, what: str):
    """The JSON value at ``pos`` and the position after it, which must be the end or a space;
    no string in it may hold control characters (names and provenance are printed)."""
    try:
        v, end = _JSON.raw_decode(text, pos)
        _check_json(v)
    except AmoscError as exc:
        raise _Error(n, f"{what}: {str(exc).replace('manifest.json ', '')}") from None
    except (ValueError, RecursionError) as exc:
        raise _Error(n, f"{what} is not valid JSON at column {pos + 1}: {text[pos:pos + 40]!r}"
                        f" ({str(exc).split(':')[0]})") from None
    if end < len(text) and text[end] != " ":
        raise _Error(n, f"expected a space after {what} at column {end + 1}: {text[end:end + 40]!r}")
    return v, end


def _fields(text: str, n: int) -> dict:
    """``KEY=VALUE`` fields separated by single or more spaces; KEY an identifier or a JSON
    string, VALUE JSON."""
    out: dict = {}
    pos = 0
    while True:
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos == len(text):
            return out
        if text[pos] == '"':
            key, pos = _quoted_key(text, pos, n)
        else:
            m = _KEY.match(text, pos)
            if not m:
                raise _Error(n, f"expected a field NAME=VALUE at column {pos + 1}: {text[pos:pos + 40]!r}")
            key, pos = m.group(), m.end()
        if text[pos:pos + 1] != "=":
            raise _Error(n, f"expected '=' after field {key!r} at column {pos + 1}")
        if key in out:
            raise _Error(n, f"field {key!r} given twice")
        out[key], pos = _value(text, pos + 1, n, f"the value of {key!r}")


def _quoted_key(text: str, pos: int, n: int):
    try:
        key, end = _JSON.raw_decode(text, pos)
    except (ValueError, RecursionError):
        key = None
    if not isinstance(key, str):
        raise _Error(n, f"a quoted field name at column {pos + 1} is not a JSON string")
    return key, end


def _decimal(payload: str, dtype: np.dtype, shape: tuple, n: int, key: str) -> np.ndarray:
    size = math.prod(shape)
    values, counts = [], []
    total = 0
    for tok in payload.split():
        m = _TOKEN.fullmatch(tok)
        if not m:
            raise _Error(n, f"{key}: {tok!r:.30} is not an integer or a run VALUE*COUNT")
        c = int(m.group(2)) if m.group(2) else 1
        if c < 1:
            raise _Error(n, f"{key}: run {tok!r} has a count below 1")
        values.append(int(m.group(1)))
        counts.append(c)
        total += c
        if total > size:
            break
    if total != size:
        got = f"more than {size}" if total > size else str(total)
        raise _Error(n, f"{key}: {got} values; a {dtype} array {list(shape)} has {size}")
    info = np.iinfo(dtype)
    lo, hi = min(values, default=0), max(values, default=0)
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise _Error(n, f"{key}: value {bad} outside {dtype} [{info.min}, {info.max}]")
    return np.repeat(np.array(values, dtype), counts).reshape(shape)


def _inflate(text: str, dtype: np.dtype, shape: tuple, n: int, key: str) -> np.ndarray:
    need = math.prod(shape) * dtype.itemsize
    if not _B64.fullmatch(text):
        raise _Error(n, f"{key}: zlib: data is not base64")
    try:
        packed = base64.b64decode(text, validate=True)
        z = zlib.decompressobj()
        raw = z.decompress(packed, need + 1)
        complete = z.eof and not z.unused_data and not z.unconsumed_tail
    except (ValueError, zlib.error) as exc:
        raise _Error(n, f"{key}: zlib: data is damaged ({exc})") from None
    if len(raw) != need or not complete:
        got = f"{len(raw)}{'+' if len(raw) > need else ''}" if complete or len(raw) > need else \
            f"{len(raw)} (truncated stream)"
        raise _Error(n, f"{key}: zlib: data holds {got} bytes; a {dtype} array {list(shape)} needs {need}")
    return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)


_MENTION = re.compile(r"\b(population|projection) ([0-9]+)\b")
_FIELD = re.compile(r"field '([A-Za-z_]+)'|\b(code|scale|bias|weight|exp|fit)\b")


def _locate(msg: str, p: _Parser) -> int:
    """The line a validation message is about: the element it names (by index, as the
    manifest checks do, or by name, as the nodes and the verifier do), the field's own
    line when it names one, else the program line."""
    by_index = {("projection" if e.kind == "projection" else "population", e.index): e for e in p.elements}
    found = None
    m = _MENTION.search(msg)
    if m:
        found = (m.start(), by_index.get((m.group(1), int(m.group(2)))))
    for e in p.elements:
        what = "projection" if e.kind == "projection" else "population"
        at = msg.find(f"{what} {e.d.get('name')!r}")
        if at >= 0 and (found is None or at < found[0]):
            found = (at, e)
    if found is None or found[1] is None:
        return p.program_line
    el = found[1]
    f = _FIELD.search(msg, found[0])
    return el.lines.get(f.group(1) or f.group(2), el.line) if f else el.line


def parses(text: str, name: str = "<text>") -> Program:
    """The program of an IR text, validated as :func:`amosc.load` validates a file and
    verified. Raises ArtifactError ``NAME:LINE: message`` on any problem."""
    p = _Parser(max_artifact_bytes())
    try:
        p.parse(text)
    except _Error as exc:
        raise ArtifactError(f"{name}:{exc.line}: {exc}" if exc.line else f"{name}: {exc}") from None
    try:
        return from_parts(p.manifest, p.arrays.__getitem__)
    except AmoscError as exc:
        msg = " ".join(str(exc).split())
        line = _locate(msg, p)
        raise ArtifactError(f"{name}:{line}: {msg}" if line else f"{name}: {msg}") from None


def read(path) -> Program:
    """The program of an IR text file (UTF-8), as :func:`parses`; the file at most
    AMOSC_MAX_ARTIFACT_BYTES long."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such file")
    limit = max_artifact_bytes()
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path}: too large: more than {limit} bytes (AMOSC_MAX_ARTIFACT_BYTES)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parses(text, path)
