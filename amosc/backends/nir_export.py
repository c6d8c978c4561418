"""``amosc export --target nir``: a compiled program as a NIR graph (docs/nir.md).

NIR (the Neuromorphic Intermediate Representation, PyPI ``nir`` 1.0) describes a network as
nodes joined by instantaneous edges; a node's input is the sum of its incoming edges. amosc
writes the program so that stepping the graph with forward Euler at dt = 1 (one IR time step
per integration step, nodes in topological order) gives the IR's integer dynamics exactly,
spike for spike (docs/nir.md has the derivation):

- unit k of a population is a ``LIF`` node with tau = 1, r = 1, v_leak = 0, so
  ``v[t] = v[t-1] + (0 - v[t-1] + I[t]) = I[t]``: memoryless, as the IR's units; its
  threshold is ``T_k - 1/2`` (``v > T - 1/2`` is ``v >= T`` on integers);
- latency lives only in ``Delay`` nodes: a source unit j's spikes wait ``start(P) - start(S) - j``
  steps before their synapses (so every source's code arrives at the target's step start(P))
  and the summed input ``y`` of the target waits k more steps before unit k;
- unit j inhibits unit k > j through ``Scale(-h_j)`` and ``Delay(k - j)``;
- the gated bias comes from a second input, ``clock`` (1 at each step an input enters), delayed
  to start(P) and spread over the population by a ``Linear`` or a padded ``Conv2d``;
- synapses are ``Conv2d`` / ``Linear`` nodes with float weights ``d_j * M * 2^e`` (exact); the
  IR floors every plane's sum (``floor(d_j (M @ z_j) 2^e)``, Loihi's weight exponent), which
  no NIR linear node does, so each plane whose weights are not integers gets a *floor
  correction*: ``Threshold`` nodes that compute ``u mod D`` of its residue sum ``u = R @ z_j``
  (a combinational binary search) and subtract ``(u mod D) / D``;
- the readout is an ``LI`` node with tau = 1 (``v[t] = I[t]``) read at step start(readout).

Max-join compartments (``--maxpool lipool``) have no NIR primitive and are refused by name.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import scipy.sparse as sp

from ..errors import AmoscError
from ..ir.nodes import GatePop, InputPop, ReadoutPop
from ..ir.semantics import conv_output_hw

FORMAT = "amosc-nir"
FORMAT_VERSION = 1
#: Parameter dtype. Every parameter written is a dyadic rational with at most 24 significant
#: bits (8-bit mantissas times code weights and powers of two, thresholds below 2^17 minus 1/2),
#: so float32 holds it exactly; :func:`_exact` checks each array.
DTYPE = np.float32
#: A sparse projection is written as a dense matrix (NIR 1.0 has no sparse weights) up to this
#: many entries per plane; dense and sparse maps into a spatial population always are.
DENSE_LIMIT = 1 << 22


class NIRExportError(AmoscError):
    """The program uses something a NIR graph cannot carry (named in the message)."""


def import_nir():
    try:
        import nir
    except ImportError:
        raise NIRExportError("--target nir needs the 'nir' package: pip install 'nir>=1.0,<1.1' "
                             "(or the amosc[nir] extra; scripts/setup.sh installs it)") from None
    return nir


def _exact(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` in DTYPE, checked to be exactly representable."""
    a64 = np.asarray(a, dtype=np.float64)
    out = a64.astype(DTYPE)
    if not np.array_equal(out.astype(np.float64), a64):
        raise NIRExportError(f"{name}: a parameter is not exactly representable in {np.dtype(DTYPE).name}")
    return out


def _tag(name: str) -> str:
    t = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    return t or "pop"


class _Builder:
    """Nodes and edges of the graph being written, with shared (memoized) delay nodes."""

    def __init__(self, nir):
        self.nir = nir
        self.nodes: dict = {}
        self.edges: list = []
        self._edge_set: set = set()
        self.shapes: dict = {}  # node name -> output shape

    def add(self, name: str, node, shape) -> str:
        if name in self.nodes:
            raise AssertionError(f"NIR node {name!r} written twice")
        self.nodes[name] = node
        self.shapes[name] = tuple(int(s) for s in shape)
        return name

    def edge(self, a: str, b: str) -> None:
        if (a, b) in self._edge_set:
            raise AssertionError(f"NIR edge {a} -> {b} written twice")
        self._edge_set.add((a, b))
        self.edges.append((a, b))

    def delay(self, src: str, steps: int) -> str:
        """``src`` delayed by ``steps`` (one shared Delay node per source and delay)."""
        if steps < 0:
            raise AssertionError(f"negative delay {steps} after {src}")
        if steps == 0:
            return src
        name = f"{src}_d{steps}"
        if name not in self.nodes:
            shape = self.shapes[src]
            self.add(name, self.nir.Delay(np.full(shape, steps, DTYPE)), shape)
            self.edge(src, name)
        return name

    def flat(self, src: str) -> str:
        """``src`` flattened to one dimension (shared)."""
        shape = self.shapes[src]
        if len(shape) == 1:
            return src
        name = f"{src}_flat"
        if name not in self.nodes:
            self.add(name, self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                     (int(np.prod(shape)),))
            self.edge(src, name)
        return name

    def scale(self, name: str, src: str, values: np.ndarray) -> str:
        self.add(name, self.nir.Scale(_exact(name, values)), values.shape)
        if src is not None:
            self.edge(src, name)
        return name

    # -- linear maps ------------------------------------------------------------------

    def conv(self, name: str, src: str, w: np.ndarray, attrs: dict, out_shape: tuple) -> str:
        """ONNX Conv (pads top, left, bottom, right) as a NIR Conv2d (symmetric padding): an
        asymmetric padding becomes the larger symmetric one with zero kernel rows/columns."""
        in_shape = self.shapes[src]
        (sh, sw), (pt, pl, pb, pr) = attrs["strides"], attrs["pads"]
        (dh, dw), groups = attrs["dilations"], int(attrs["groups"])
        if (pt, pl) != (pb, pr):
            co, ci, kh, kw = w.shape
            full = np.zeros((co, ci, (kh - 1) * dh + 1, (kw - 1) * dw + 1), w.dtype)
            full[:, :, ::dh, ::dw] = w
            ph, pw = max(pt, pb), max(pl, pr)
            w = np.zeros((co, ci, full.shape[2] + 2 * ph - pt - pb, full.shape[3] + 2 * pw - pl - pr), w.dtype)
            w[:, :, ph - pt:ph - pt + full.shape[2], pw - pl:pw - pl + full.shape[3]] = full
            (pt, pl), (dh, dw) = (ph, pw), (1, 1)
        if groups > 1:
            w = _ungroup(name, w, groups)
        hw = conv_output_hw(in_shape[1:], w.shape[2:], (sh, sw), (pt, pl, pt, pl), (dh, dw))
        if (w.shape[0], *hw) != tuple(out_shape):
            raise AssertionError(f"{name}: conv output {(w.shape[0], *hw)} != {out_shape}")
        node = self.nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=_exact(name, w),
                               stride=(int(sh), int(sw)), padding=(int(pt), int(pl)),
                               dilation=(int(dh), int(dw)), groups=1,
                               bias=np.zeros(w.shape[0], DTYPE))
        self.add(name, node, out_shape)
        self.edge(src, name)
        return name

    def matrix(self, name: str, src: str, mat: np.ndarray, out_shape: tuple, what: str) -> str:
        """A dense (F_out, F_in) map from ``src``: Flatten + Linear into a flat population; into a
        spatial one (NIR 1.0 has no reshape), a Conv2d whose kernel covers the whole source, giving
        the outputs as channels, shape (F_out, 1, 1) (the population's columns, see
        :meth:`unflatten`)."""
        in_shape = self.shapes[src]
        if len(out_shape) == 1:
            self.add(name, self.nir.Linear(_exact(name, mat)), out_shape)
            self.edge(self.flat(src), name)
            return name
        if len(out_shape) != 3 or len(in_shape) != 3:
            raise NIRExportError(f"{what}: a dense/sparse map from shape {in_shape} into shape {out_shape} "
                                 "has no NIR 1.0 form (no reshape node)")
        f_out = mat.shape[0]
        node = self.nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]),
                               weight=_exact(name, mat.reshape((f_out, *in_shape))), stride=(1, 1),
                               padding=(0, 0), dilation=(1, 1), groups=1, bias=np.zeros(f_out, DTYPE))
        self.add(name, node, (f_out, 1, 1))
        self.edge(src, name)
        return name

    def unflatten(self, name: str, src: str, out_shape: tuple, what: str) -> str:
        """Columns (F, 1, 1) back to (C, H, W): channel f = c*H*W + i*W + j reaches output channel c
        through the one kernel tap that lands on (i, j) of an (H-1, W-1)-padded 1x1 input."""
        c, h, w = out_shape
        f_out = c * h * w
        if c * f_out * h * w > DENSE_LIMIT:
            raise NIRExportError(f"{what}: unflattening {f_out} values into {tuple(out_shape)} takes a "
                                 f"{c * f_out * h * w}-weight kernel (limit {DENSE_LIMIT})")
        unflat = np.zeros((c, f_out, h, w), DTYPE)
        f = np.arange(f_out)
        unflat[f // (h * w), f, h - 1 - (f % (h * w)) // w, w - 1 - f % w] = 1
        node = self.nir.Conv2d(input_shape=(1, 1), weight=unflat, stride=(1, 1), padding=(h - 1, w - 1),
                               dilation=(1, 1), groups=1, bias=np.zeros(c, DTYPE))
        self.add(name, node, out_shape)
        self.edge(src, name)
        return name

    def projection_map(self, name: str, src: str, proj, weight, what: str) -> str:
        """``weight`` in the projection's layout (conv kernel, dense or CSR matrix), from src."""
        if proj.kind == "conv":
            return self.conv(name, src, weight, proj.attrs, proj.out_shape)
        if sp.issparse(weight):
            entries = weight.shape[0] * weight.shape[1]
            if entries > DENSE_LIMIT:
                raise NIRExportError(
                    f"{what}: NIR 1.0 has no sparse weights and this sparse map {weight.shape} "
                    f"({weight.nnz} synapses) written dense would take {entries} weights per plane, "
                    f"over the limit of {DENSE_LIMIT}")
            weight = weight.toarray()
        if len(proj.out_shape) == 3 and weight.shape[0] * weight.shape[1] > DENSE_LIMIT:
            raise NIRExportError(f"{what}: a dense map {weight.shape} into the spatial population "
                                 f"{proj.out_shape} would be written as a {weight.size}-weight kernel "
                                 f"(limit {DENSE_LIMIT})")
        return self.matrix(name, src, weight, tuple(proj.out_shape), what)


def _ungroup(name: str, w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv kernel (C_out, C_in/g, kh, kw) as an ungrouped block-diagonal one: nir 1.0
    infers a Conv2d's input channels as weight.shape[1] whatever its groups, so a grouped node
    fails the type check of nir.read."""
    co, cig, kh, kw = w.shape
    if co * cig * groups * kh * kw > DENSE_LIMIT:
        raise NIRExportError(f"{name}: a grouped convolution (groups = {groups}) is written ungrouped "
                             f"(nir 1.0 types a Conv2d's input as weight.shape[1] channels) and would take "
                             f"{co * cig * groups * kh * kw} weights (limit {DENSE_LIMIT})")
    full = np.zeros((co, cig * groups, kh, kw), w.dtype)
    cog = co // groups
    for g in range(groups):
        full[g * cog:(g + 1) * cog, g * cig:(g + 1) * cig] = w[g * cog:(g + 1) * cog]
    return full


def _plane_weights(proj, d: int):
    """Plane weights of source code weight d: the float weight w = d M 2^e, and for the floor
    the integer residue R = (d M) mod 2^-e in [0, D) with D = 2^-e per output channel (D = 1,
    R = 0 where e >= 0), so that floor(w @ z) = w @ z - ((R @ z) mod D) / D. Returns
    (w, R or None, D (C,), largest floor(R-row sum / D) per channel)."""
    e = proj.exp.astype(np.int64)
    D = np.where(e < 0, 2.0 ** np.maximum(-e, 0), 1.0)
    c_out = proj.out_shape[0]
    if sp.issparse(proj.weight):
        m = proj.weight.tocsr().astype(np.int64) * int(d)
        rows = m.shape[0]
        ch = np.repeat(np.arange(rows) // (rows // c_out), np.diff(m.indptr))
        w = m.astype(np.float64)
        w.data = m.data * 2.0 ** e[ch]
        r = m.copy()
        r.data = np.mod(m.data, D[ch].astype(np.int64))
        if not r.data.any():
            return w, None, D, None
        r.eliminate_zeros()
        sums = np.asarray(r.sum(axis=1)).ravel()
        qmax = np.zeros(c_out, np.int64)
        np.maximum.at(qmax, np.arange(rows) // (rows // c_out), sums.astype(np.int64))
        return w, r.astype(np.float64), D, qmax // D.astype(np.int64)
    m = proj.weight.astype(np.int64) * int(d)
    shape = (-1,) + (1,) * (m.ndim - 1)
    # the output channel of each weight row (a conv kernel's rows are its output channels)
    per = np.arange(m.shape[0]) // (m.shape[0] // c_out)
    w = m * (2.0 ** e[per]).reshape(shape)
    r = np.mod(m, D[per].astype(np.int64).reshape(shape))
    if not r.any():
        return w, None, D, None
    sums = r.reshape(r.shape[0], -1).sum(axis=1)
    qmax = np.zeros(c_out, np.int64)
    np.maximum.at(qmax, per, sums)
    return w, r.astype(np.float64), D, qmax // D.astype(np.int64)


def _check(program) -> None:
    for pop in program.populations:
        m = getattr(pop, "compartments", 1)
        if m != 1:
            raise NIRExportError(
                f"population {pop.name!r}: max-join compartments (m = {m}, lateral-inhibition pooling "
                "from --maxpool lipool) have no NIR primitive: NIR sums a node's inputs, it cannot take "
                "their max; compile with --maxpool tree to export to NIR")
        if getattr(getattr(pop, "code", None), "steps", ()):
            raise NIRExportError(f"population {pop.name!r} is a radix/flash ADC (several units fire in one "
                                 "step); NIR export writes sequential AMOS codes only: compile without "
                                 "--latency-budget / --neuron-budget to export to NIR")
        if len(pop.shape) not in (1, 3):
            raise NIRExportError(f"population {pop.name!r}: shape {pop.shape}; NIR export handles "
                                 "(features,) and (channels, height, width) populations")


def _units(b: _Builder, tag: str, pop, code, y: str, first_delay: int) -> list:
    """The K LIF units of a code reading the summed input ``y`` (unit k after first_delay + k
    steps) with the inhibition of the earlier units; returns the unit node names."""
    nir, shape = b.nir, tuple(pop.shape)
    ones, zeros = np.ones(shape, DTYPE), np.zeros(shape, DTYPE)
    names = []
    for k in range(code.bits):
        name = f"{tag}__u{k}"
        lif = nir.LIF(tau=ones.copy(), r=ones.copy(), v_leak=zeros.copy(),
                      v_threshold=_exact(name, np.full(shape, code.thresholds[k] - 0.5)),
                      v_reset=zeros.copy(),
                      metadata={"population": pop.name, "unit": k, "step": int(pop.start + k),
                                "code_weight": int(code.weights[k])})
        b.add(name, lif, shape)
        b.edge(b.delay(y, first_delay + k), name)
        names.append(name)
    for j in range(code.bits - 1):
        if code.resets[j] == 0:
            continue
        inh = b.scale(f"{names[j]}_inh", names[j], np.full(shape, -float(code.resets[j])))
        for k in range(j + 1, code.bits):
            b.edge(b.delay(inh, k - j), names[k])
    return names


def _bias(b: _Builder, tag: str, pop, clock_shape: tuple, into: str) -> None:
    """The gated bias: the clock, delayed to the population's start, times the bias."""
    bias = pop.bias.astype(np.float64)
    if not bias.any():
        return
    clock = b.delay("clock", int(pop.start))
    name = f"{tag}__bias"
    if len(pop.shape) == 1:
        b.add(name, b.nir.Linear(_exact(name, bias.reshape(-1, 1))), pop.shape)
        b.edge(b.flat(clock), name)
    else:
        c, h, w = pop.shape
        # a (h-1, w-1)-padded h x w kernel on the 1x1 clock: out[c, i, j] = kernel[c, 0, h-1-i, w-1-j]
        kernel = bias[:, ::-1, ::-1].reshape(c, 1, h, w)
        b.add(name, b.nir.Conv2d(input_shape=(1, 1), weight=_exact(name, np.ascontiguousarray(kernel)),
                                 stride=(1, 1), padding=(h - 1, w - 1), dilation=(1, 1), groups=1,
                                 bias=np.zeros(c, DTYPE)), pop.shape)
        b.edge(clock, name)
    b.edge(name, into)


def _floor_correction(b: _Builder, name: str, src: str, proj, r, D, qmax, into: str, what: str) -> int:
    """Subtract ((R @ z) mod D) / D from ``into``: u = R @ z (u >= 0) through a binary search
    of Threshold nodes, bit i: [x_i >= 2^i D] with x_i = u - sum over higher bits of 2^i' D."""
    res = b.projection_map(f"{name}_res", src, proj, r, what)
    shape = b.shapes[res]  # the target's shape, or its columns (F, 1, 1)
    rows = int(np.prod(shape))
    d_full = D[np.arange(rows) // (rows // len(D))].reshape(shape)
    bits = int(qmax.max()).bit_length()
    feedback = []
    for i in reversed(range(bits)):
        t = f"{name}_t{i}"
        b.add(t, b.nir.Threshold(_exact(t, 2.0 ** i * d_full - 0.5)), shape)
        b.edge(res, t)
        for f in feedback:
            b.edge(f, t)
        feedback.append(b.scale(f"{name}_f{i}", t, -(2.0 ** i) * d_full))
    frac = b.scale(f"{name}_frac", res, -1.0 / d_full)
    for f in feedback:
        b.edge(f, frac)
    b.edge(frac, into)
    return bits


def to_nir(program, *, floor_correction: bool = True):
    """The program as a ``nir.NIRGraph`` (docs/nir.md). With ``floor_correction=False`` the
    per-plane floors are left out: a plain float network that is not bit-exact."""
    nir = import_nir()
    _check(program)
    b = _Builder(nir)
    pops = program.populations
    tags, seen = {}, set()
    for i, pop in enumerate(pops):
        t = _tag(pop.name)
        if t in seen or t in ("input", "clock", "output"):
            t = f"{t}_{i}"
        seen.add(t)
        tags[pop.name] = t
    spatial = any(len(p.shape) == 3 for p in pops)
    clock_shape = (1, 1, 1) if spatial else (1,)
    if any(p.bias.any() for p in pops if not isinstance(p, InputPop)):
        b.add("clock", nir.Input(np.array(clock_shape)), clock_shape)
    info = []
    floors = 0
    for pop in pops:
        tag = tags[pop.name]
        entry = {"name": pop.name, "kind": type(pop).__name__, "shape": list(pop.shape), "start": int(pop.start)}
        if isinstance(pop, InputPop):
            b.add("input", nir.Input(np.array(pop.shape)), pop.shape)
            entry["units"] = _units(b, tag, pop, pop.code, "input", int(pop.start))
            entry.update(bits=pop.bits, scale=float(pop.scale), zero_point=float(pop.zero_point))
            info.append(entry)
            continue
        shape = tuple(pop.input_shape)
        if isinstance(pop, ReadoutPop):
            y = f"{tag}__y"
            z = np.zeros(shape, DTYPE)
            b.add(y, nir.LI(tau=np.ones(shape, DTYPE), r=np.ones(shape, DTYPE), v_leak=z,
                            metadata={"population": pop.name, "read_step": int(pop.start)}), shape)
        else:
            y = b.scale(f"{tag}__y", None, np.ones(shape))
        _bias(b, tag, pop, clock_shape, y)
        cols = []  # matrix maps into a spatial population sum as columns (F, 1, 1), unflattened once

        def sink(node):
            if b.shapes[node] == shape:
                return y
            if not cols:
                cols.append(b.scale(f"{tag}__ycols", None, np.ones(b.shapes[node])))
                b.edge(b.unflatten(f"{tag}__yunflat", cols[0], shape, f"population {pop.name!r}"), y)
            return cols[0]

        for i, proj in enumerate(program.incoming(pop.name)):
            src = program.pop(proj.source)
            what = f"projection {proj.name!r} (population {pop.name!r})"
            for j, d in enumerate(src.code.weights):
                if d == 0:
                    continue
                z = b.delay(f"{tags[src.name]}__u{j}", int(pop.start - src.start - j))
                w, r, D, qmax = _plane_weights(proj, d)
                name = f"{tag}__w{i}_z{j}"
                main = b.projection_map(name, z, proj, w, what)
                b.edge(main, sink(main))
                if r is not None and floor_correction:
                    _floor_correction(b, name + "_floor", z, proj, r, D, qmax, sink(main), what)
                    floors += 1
        if isinstance(pop, GatePop):
            entry["units"] = _units(b, tag, pop, pop.code, y, 0)
            entry.update(bits=pop.code.bits, scale=pop.scale.tolist(), activation=pop.activation,
                         tensor=pop.tensor, fit=pop.fit)
        else:
            b.add("output", nir.Output(np.array(shape)), shape)
            b.edge(y, "output")
            entry.update(node=y, scale=pop.scale.tolist(), tensor=pop.tensor)
        entry["code"] = ({"thresholds": list(map(int, pop.code.thresholds)),
                          "resets": list(map(int, pop.code.resets)),
                          "weights": list(map(int, pop.code.weights))} if not isinstance(pop, ReadoutPop) else None)
        info.append(entry)
    meta = _metadata(program, info, clock_shape if "clock" in b.nodes else None, floor_correction, floors)
    n_nodes, n_edges = len(b.nodes), len(b.edges)
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta, type_check=True)
    if len(graph.nodes) != n_nodes or len(graph.edges) != n_edges:  # type inference added Input/Output
        raise AssertionError("NIR type inference changed the graph: a node without inputs or outputs")
    return graph


def _metadata(program, info, clock_shape, floor_correction, floors) -> dict:
    import nir
    from .. import __version__ as amosc_version
    ip, out = program.input_pop, program.output_pop
    prov = dict(program.provenance)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "amosc_version": str(amosc_version), "nir_version": str(getattr(nir, "version", "?")),
        "time": {"dt": 1.0, "unit": "one IR time step",
                 "integration": "forward Euler at dt = 1; nodes in topological order; edges are "
                                "instantaneous, latency is only in Delay nodes (docs/nir.md)",
                 "latency": int(program.latency)},
        "input": {"node": "input", "shape": np.array(ip.shape), "bits": int(ip.bits),
                  "scale": float(ip.scale), "zero_point": float(ip.zero_point), "start": int(ip.start),
                  "encoding": "feed c = clip(round((x - zero_point) / scale), 0, 2^bits - 1) (round half "
                              "to even) at the step the input enters, 0 at every other step"},
        "readout": {"node": "output", "read_step": int(out.start), "shape": np.array(out.shape),
                    "scale": np.asarray(out.scale, np.float64),
                    "decode": "logits = scale * y, y read from the output at read_step after the input "
                              "entered; a dropped final softmax: " + str(prov.get("softmax", "none"))},
        "exact": int(bool(floor_correction)), "floor_corrections": int(floors),
        "populations": json.dumps(info, default=_json_default),
        "provenance": json.dumps(prov, default=str),
        "options": json.dumps(program.options, default=str),
    }
    if clock_shape is not None:
        meta["clock"] = {"node": "clock", "shape": np.array(clock_shape),
                         "drive": "1 at the step each input enters, 0 at every other step"}
    return meta


def _json_default(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def write_nir(graph, path) -> int:
    """Write a NIR graph to ``path`` (HDF5, atomically: amosc.fileio.atomic_write); returns its
    size in bytes."""
    from ..fileio import atomic_write
    nir = import_nir()
    buf = io.BytesIO()
    nir.write(buf, graph)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def export_nir(program, path, *, floor_correction: bool = True) -> dict:
    """Write the program's NIR graph to ``path``; returns a summary (nodes, edges, bytes, ...)."""
    nir = import_nir()
    graph = to_nir(program, floor_correction=floor_correction)
    size = write_nir(graph, path)
    kinds: dict = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    return {"nodes": len(graph.nodes), "edges": len(graph.edges), "bytes": size, "kinds": kinds,
            "floor_corrections": int(graph.metadata["floor_corrections"]), "latency": int(program.latency),
            "read_step": int(program.output_pop.start),
            "inputs": sorted(k for k, v in graph.nodes.items() if isinstance(v, nir.Input))}
