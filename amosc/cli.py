"""The ``amosc`` command line."""

from __future__ import annotations

import functools
import os
import sys

import click
import numpy as np

from .errors import AmoscError


def _errors(fn):
    """Print AmoscErrors as one line and exit 2; a KeyboardInterrupt exits 130."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except AmoscError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def _backend_option(default="reference"):
    from .backends.base import backend_names
    return click.option("--backend", default=default, show_default=True,
                        help=f"Backend to run on ({', '.join(backend_names())}; see `amosc backends`).")


_limit_option = click.option("--limit", type=click.IntRange(1), default=None,
                             help="Use only the first LIMIT inputs (and labels).")


def _save_npy(path, arr):
    from .ir.serialize import atomic_write
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


@click.group()
@click.version_option(package_name="amosc")
def main():
    """Compile ONNX image classifiers to AMOS spiking networks and run them."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, type=click.Path(dir_okay=False),
              help="Calibration inputs, float .npy shaped (N, *input_shape).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output .amos file [default: MODEL with .amos suffix].")
@click.option("--bits", "-K", default=8, show_default=True, type=click.IntRange(1, 16),
              help="K: time steps (units) per AMOS gate.")
@click.option("--calibration", type=click.Choice(["percentile", "max", "mse"]), default="mse",
              show_default=True, help="How each layer's scale is set from the calibration data: mse = the range with the least K-bit quantization error (per channel), percentile = --percentile of the values, max.")
@click.option("--percentile", default=99.99, show_default=True, type=click.FloatRange(0, 100, min_open=True),
              help="Percentile of a layer's activations used as its scale.")
@click.option("--rounding", type=click.Choice(["round", "floor"]), default="round", show_default=True,
              help="ADC rounding: round to nearest (half-step offset) or truncate as in the paper.")
@click.option("--granularity", type=click.Choice(["channel", "layer"]), default="channel", show_default=True,
              help="One output scale per channel or per layer.")
@click.option("--weight-bits", type=click.Choice(["8", "16"]), default="16", show_default=True,
              help="16: a second set of 8-bit synapses carries each weight's rounding residue (twice the synapses); 8: one set.")
@click.option("--maxpool", type=click.Choice(["tree", "lipool"]), default="tree", show_default=True,
              help="MaxPool circuit: tree = exact max(p, q) = q + relu(p - q) units (any input, log2(window) layers deep); lipool = lateral-inhibition pooling, one unit per output joining one compartment per window tap by max (ReLU-family inputs only; needs max-join compartments, so not the lava-loihi backend).")
@click.option("--fit-tolerance", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fitted units (SiLU, GELU, sigmoid, ...): largest chord error in output steps of the K-bit grid. Smaller: more segments (neurons), fewer bits each (shallower), closer to an ideal K-bit unit.")
@_errors
def compile(model, calib, output, bits, calibration, percentile, rounding, granularity, weight_bits,  # noqa: A001
            maxpool, fit_tolerance):
    """Compile an ONNX MODEL into an AMOS program (.amos)."""
    from .compiler.calibrate import load_array
    from .compiler.importer import graph_input, load_model, normalize
    from .compiler.pipeline import compile_model
    from .compiler.quantize import Options
    from .ir.text import describe

    opts = Options(bits=bits, calibration=calibration, percentile=percentile, rounding=rounding,
                   granularity=granularity, weight_bits=int(weight_bits), maxpool=maxpool, fit_tolerance=fit_tolerance)
    m, _ = load_model(model)
    _, shape, _ = graph_input(normalize(m, model), model)
    x = load_array(calib, shape, "calibration data")
    program = compile_model(model, x, opts)
    output = output or os.path.splitext(model)[0] + ".amos"
    program.save(output)
    t = describe(program)["totals"]
    click.echo(f"wrote {output}: {len(program.populations)} populations, {t['neurons']} neurons, "
               f"{t['synapses']} synapses, latency {t['latency_steps']} steps, K={bits}")


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_errors
def inspect(program, fmt):
    """Print a compiled PROGRAM: populations, projections, codes, timing, totals."""
    from .ir.serialize import load
    from .ir.text import describe, render, to_json
    d = describe(load(program))
    click.echo(to_json(d) if fmt == "json" else render(d), nl=False)


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "inp", required=True, type=click.Path(dir_okay=False),
              help="Inputs, float .npy shaped (N, *input_shape).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Logits .npy (N, classes).")
@_backend_option()
@click.option("--interval", default=0, show_default=True, type=click.IntRange(0),
              help="Pipeline: a new input every INTERVAL steps in one lane (0: every input its own lane).")
@click.option("--probabilities", is_flag=True, help="Apply the model's dropped final Softmax to the output.")
@_limit_option
@_errors
def run(program, inp, output, backend, interval, probabilities, limit):
    """Run PROGRAM on inputs and write the decoded logits."""
    from .compiler.calibrate import load_array
    from .ir.serialize import load
    prog = load(program)
    x = load_array(inp, prog.input_pop.shape, "input")[:limit]
    res = prog.run(x, backend=backend, interval=interval)
    y = res.logits
    if probabilities:
        e = np.exp(y - y.max(1, keepdims=True))
        y = e / e.sum(1, keepdims=True)
    _save_npy(output, y.astype(np.float32))
    spikes = sum(v.sum() for v in res.spikes.values()) / x.shape[0]
    click.echo(f"wrote {output}: {y.shape[0]}x{y.shape[1]}; latency {res.latency} steps, "
               f"{res.steps} steps simulated, {spikes:.0f} spikes per input", err=True)


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="The float ONNX model: compare with onnxruntime (accuracy, agreement, per-layer error).")
@click.option("--input", "-i", "inp", required=True, type=click.Path(dir_okay=False))
@click.option("--labels", type=click.Path(dir_okay=False), help="Integer labels .npy (N,).")
@_backend_option()
@click.option("--interval", default=1, show_default=True, type=click.IntRange(1),
              help="Steps between inputs when comparing a backend with the reference spike for spike.")
@click.option("--min-agreement", default=0.99, show_default=True, type=click.FloatRange(0, 1),
              help="Fail (exit 1) when top-1 agreement with onnxruntime is below this.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@_limit_option
@_errors
def validate(program, onnx_path, inp, labels, backend, interval, min_agreement, json_out, limit):
    """Check PROGRAM: against onnxruntime (--onnx) and, for a backend other than the
    reference, against the reference simulator spike for spike. Exits 1 on failure."""
    import dataclasses
    import json
    from .api import run_program
    from .compiler.calibrate import load_array
    from .ir.serialize import atomic_write, load
    from .validate import compare_spikes, validate as run_validation
    if not onnx_path and backend == "reference":
        raise AmoscError("nothing to validate: give --onnx MODEL, or a --backend other than 'reference' "
                         "to compare it with the reference spike for spike")
    prog = load(program)
    x = load_array(inp, prog.input_pop.shape, "input")[:limit]
    y = None
    if labels:
        if not os.path.isfile(labels):
            raise AmoscError(f"{labels}: no such file")
        y = np.load(labels, allow_pickle=False)[:limit]
    report, ok = {}, True
    result = None
    if backend != "reference":
        result = run_program(prog, x, backend=backend, record=True, interval=interval)
        ref = run_program(prog, x, backend="reference", record=True, interval=interval)
        spikes = compare_spikes(prog, result, ref, backend)
        click.echo(spikes.render(), nl=False)
        report["spikes"] = dataclasses.asdict(spikes)
        ok &= spikes.equal
    if onnx_path:
        rep = run_validation(prog, onnx_path, x, labels=y, backend=backend, min_agreement=min_agreement,
                             result=result)
        click.echo(rep.render(), nl=False)
        report["onnx"] = {**dataclasses.asdict(rep), "passed": rep.passed}
        ok &= rep.passed
    if json_out:
        body = json.dumps({**report, "passed": ok}, indent=1).encode()
        atomic_write(json_out, lambda f: f.write(body))
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["lava"]), default="lava", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory to create (must not exist or be empty).")
@_errors
def export(program, target, output):
    """Export PROGRAM as a runnable program for TARGET (Lava: standard processes)."""
    from .backends.lava.export import export_lava
    from .ir.serialize import load
    files = export_lava(load(program), output)
    click.echo(f"wrote {output}/: {', '.join(files)}; run: python {output}/network.py --input x.npy -o logits.npy")


@main.command()
@_errors
def backends():
    """List the available backends (built-in and registered through entry points)."""
    from .backends.base import backend_names, get_backend
    for name in backend_names():
        try:
            b = get_backend(name)
            click.echo(f"{name:<12} {b.description}")
        except AmoscError as exc:
            click.echo(f"{name:<12} unavailable: {exc}")


if __name__ == "__main__":  # pragma: no cover
    main()
