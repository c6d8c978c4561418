"""Readable, stable dump of a program (``amosc inspect``), as text or JSON.

:func:`describe` builds a plain dict (the JSON form); :func:`render` prints it.
Both list every population and projection in program order, so two dumps diff
line by line.
"""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp

from .nodes import GatePop, InputPop, Program
from .semantics import binary_params
from .verify import check_ranges


def _depths(program: Program) -> dict:
    depth = {}
    for pop in program.populations:
        ins = program.incoming(pop.name)
        depth[pop.name] = 0 if not ins else 1 + max(depth[p.source] for p in ins)
    return depth


def _is_readout(pop) -> bool:
    return not isinstance(pop, (InputPop, GatePop))


def unit_count(pop) -> int:
    n = int(np.prod(pop.shape))
    return n if _is_readout(pop) else n * pop.code.bits


def describe(program: Program) -> dict:
    depth = _depths(program)
    pops, projs = [], []
    total_syn = total_deployed = 0
    for pop in program.populations:
        d = {"name": pop.name, "kind": type(pop).__name__.replace("Pop", "").lower(),
             "shape": list(pop.shape), "neurons": unit_count(pop), "start": pop.start,
             "depth": depth[pop.name]}
        if isinstance(pop, InputPop):
            d.update(bits=pop.bits, scale=pop.scale, zero_point=pop.zero_point,
                     end=pop.start + pop.bits - 1)
        else:
            b = pop.bias
            d.update(scale=[float(pop.scale.min()), float(pop.scale.max())], tensor=pop.tensor,
                     bias_range=[int(b.min()), int(b.max())] if b.size else [0, 0],
                     input_range=list(check_ranges(program, pop.name).values()))
            if isinstance(pop, GatePop):
                c = pop.code
                d.update(activation=pop.activation, bits=c.bits, thresholds=list(c.thresholds),
                         resets=list(c.resets), weights=list(c.weights), end=pop.start + c.depth - 1)
                bp = binary_params(c)
                if bp:
                    d.update(theta=bp[0], offset=bp[1])
                if pop.compartments > 1:
                    d["compartments"] = pop.compartments
                if pop.fit is not None:
                    f = pop.fit
                    d["fit"] = {"fn": f["fn"], "range": list(f["range"]), "segments": f["segments"],
                                "bits": f["bits"], "max_err": f["max_err"], "mean_err": f["mean_err"],
                                "neurons_per_element": f["neurons_per_element"],
                                "channels": f.get("channels", 1),
                                "elements": int(np.prod(pop.shape)) // f["segments"]}
                    if f.get("structure") == "unit":
                        d["fit"].update(structure="unit", rms_err=f.get("rms_err"))
                    if f.get("relu"):
                        d["fit"]["relu"] = f["relu"]["population"]
                    if f.get("centred") is not None:   # in output steps of each channel's grid
                        steps = np.broadcast_to(np.asarray(f.get("steps", f.get("step", 1.0)), float), (len(f["centred"]),))
                        d["fit"]["centred_max_steps"] = float(np.max(np.abs(np.asarray(f["centred"], float)) / steps))
                inh = c.bits * (c.bits - 1) // 2 * int(np.prod(pop.shape))
                total_deployed += inh
            else:
                d.update(end=pop.start)
        pops.append(d)
    for pr in program.projections:
        src, tgt = program.pop(pr.source), program.pop(pr.target)
        ks = src.code.bits
        kt = 1 if _is_readout(tgt) else tgt.code.bits
        w = pr.weight.data if sp.issparse(pr.weight) else pr.weight
        gap = tgt.start - src.start
        syn = pr.synapses * ks
        total_syn += syn
        total_deployed += syn * kt
        d = {"name": pr.name, "source": pr.source, "target": pr.target, "kind": pr.kind,
             "weight_shape": list(pr.weight.shape), "weight_bits": 8, "exp": [int(pr.exp.min()), int(pr.exp.max())],
             "weight_range": [int(w.min()), int(w.max())] if w.size else [0, 0],
             "synapses": syn, "delay": [gap - ks, gap - 1 + kt - 1]}
        if pr.kind == "conv":
            d["attrs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in pr.attrs.items()}
        projs.append(d)
    out = program.output_pop
    return {
        "provenance": program.provenance, "options": program.options,
        "populations": pops, "projections": projs,
        "totals": {"neurons": sum(p["neurons"] for p in pops), "synapses": total_syn,
                   "synapses_deployed": total_deployed, "latency_steps": program.latency,
                   "depth": depth[out.name], "throughput_inputs_per_step": 1.0},
    }


def _span(v):
    return str(v[0]) if v[0] == v[1] else f"{v[0]}..{v[1]}"


def _fmt_list(v):
    if len(v) > 10:
        return "[" + ",".join(map(str, v[:4])) + ",...," + ",".join(map(str, v[-3:])) + "]"
    return "[" + ",".join(map(str, v)) + "]"


def render(desc: dict) -> str:
    lines = []
    pv, op = desc["provenance"], desc["options"]
    lines.append(f"amos program  source={pv.get('source', '?')}  sha256={pv.get('sha256', '?')[:16]}  "
                 f"amosc={pv.get('amosc', '?')}")
    lines.append("options  " + "  ".join(f"{k}={op[k]}" for k in sorted(op)))
    by_target: dict[str, list] = {}
    for pr in desc["projections"]:
        by_target.setdefault(pr["target"], []).append(pr)
    for p in desc["populations"]:
        shape = "x".join(map(str, p["shape"]))
        head = f"{p['kind']:<7} {p['name']}  [{shape}]  neurons={p['neurons']}  start={p['start']}  " \
               f"end={p['end']}  depth={p['depth']}"
        lines.append(head)
        if p["kind"] == "input":
            lines.append(f"    code K={p['bits']} binary  scale={p['scale']:.6g}  zero_point={p['zero_point']:.6g}")
        elif p["kind"] == "gate":
            extra = f"  theta={p['theta']} offset={p['offset']}" if "theta" in p else ""
            lines.append(f"    {p['activation']}  code K={p['bits']}{extra}  T={_fmt_list(p['thresholds'])}  "
                         f"h={_fmt_list(p['resets'])}  d={_fmt_list(p['weights'])}")
            lines.append(f"    scale=[{p['scale'][0]:.6g}, {p['scale'][1]:.6g}]  bias={p['bias_range']}  "
                         f"input_range={p['input_range']}  onnx={p['tensor']}")
            if "compartments" in p:
                lines.append(f"    lateral-inhibition pooling: max of {p['compartments']} input compartments "
                             "per unit")
            if "fit" in p:
                f = p["fit"]
                per = f" ({f['channels']} channel ranges)" if f.get("channels", 1) > 1 else ""
                if f.get("structure") == "unit":
                    lines.append(f"    fitted AMOS unit of {f['fn']}: {f['bits']} neurons/element, thresholds, resets "
                                 f"and output weights fitted on the calibration sample in [{f['range'][0]:.4g}, "
                                 f"{f['range'][1]:.4g}]  error rms={f['rms_err']:.4g} max={f['max_err']:.4g} "
                                 f"mean |e|={f['mean_err']:.4g}")
                    lines.append("    (a non-binary code: runs on reference, lava (fast style) and NIR; not on "
                                 "lava-loihi's standard processes)")
                else:
                    lines.append(f"    fitted {f['fn']} on [{f['range'][0]:.4g}, {f['range'][1]:.4g}]{per}: "
                                 f"{f['segments']} segments x {f['bits']} bits = {f['neurons_per_element']} "
                                 f"neurons/element  error max={f['max_err']:.4g} mean={f['mean_err']:.4g}")
                if f.get("relu"):
                    lines.append(f"    ReLU split: the unit is these segments of f - s relu plus s x {f['relu']}")
                if "centred_max_steps" in f:
                    lines.append(f"    centred: each channel's mean error on the calibration sample taken out of "
                                 f"its offset (at most {f['centred_max_steps']:.3g} steps)")
        else:
            lines.append(f"    scale=[{p['scale'][0]:.6g}, {p['scale'][1]:.6g}]  bias={p['bias_range']}  "
                         f"input_range={p['input_range']}  onnx={p['tensor']}")
        for pr in by_target.get(p["name"], []):
            attrs = ""
            if "attrs" in pr:
                a = pr["attrs"]
                attrs = f" strides={a['strides']} pads={a['pads']} dil={a['dilations']} groups={a['groups']}"
            lines.append(f"  <- {pr['source']}  {pr['kind']} {'x'.join(map(str, pr['weight_shape']))}{attrs}  "
                         f"int{pr['weight_bits']}{pr['weight_range']} exp={_span(pr['exp'])}  "
                         f"synapses={pr['synapses']}  delay={pr['delay'][0]}..{pr['delay'][1]}")
    t = desc["totals"]
    lines.append(f"totals  neurons={t['neurons']}  synapses={t['synapses']}  "
                 f"synapses_deployed={t['synapses_deployed']}  depth={t['depth']}  "
                 f"latency={t['latency_steps']} steps  throughput={t['throughput_inputs_per_step']:g} input/step")
    return "\n".join(lines) + "\n"


def to_json(desc: dict) -> str:
    return json.dumps(desc, indent=1, sort_keys=True) + "\n"
