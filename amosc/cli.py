"""The ``amosc`` command line."""

from __future__ import annotations

import os
import sys

import click
import numpy as np

from .errors import AmoscError


#: exit codes: 0 success, 1 a check failed (validate), 2 a user error (bad input, option,
#: file or resource; one ``error:`` line), 70 an internal error (a bug in amosc), 130 interrupted
EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 70, 130
_debug = False


def _debugging() -> bool:
    return _debug or os.environ.get("AMOSC_DEBUG", "") not in ("", "0")


def _fail(msg: str, code: int = EXIT_USAGE):
    click.echo(msg, err=True)
    sys.exit(code)


class _Cli(click.Group):
    """The command group; one exit contract for every command (docs/architecture.md#exit-codes):
    a failure the user can cause prints one ``error: ...`` line and exits 2; anything else is a
    bug, one ``internal error`` line and exit 70, with the traceback under --debug."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _debug
        _debug = False
        try:
            rv = super().main(args, prog_name or "amosc", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(f"error: {exc.format_message()}{where}")
        except click.ClickException as exc:
            _fail(f"error: {exc.format_message()}")
        except AmoscError as exc:
            _fail(f"error: {exc}")
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", EXIT_INTERRUPTED)
        except MemoryError:
            _fail("error: out of memory; lower --max-memory so amosc refuses early, or use a smaller "
                  "model, fewer inputs or fewer --bits")
        except OSError as exc:
            name = exc.filename if exc.filename is not None else ""
            _fail(f"error: {name}{': ' if name else ''}{exc.strerror or exc}")
        except Exception as exc:  # a bug in amosc
            if _debugging():
                import traceback
                traceback.print_exc()
            first = (str(exc).splitlines() or [""])[0]
            _fail(f"internal error: {type(exc).__name__}: {first} -- a bug in amosc; rerun with --debug "
                  "(or AMOSC_DEBUG=1) for the traceback and report it", EXIT_INTERNAL)
        sys.exit(rv if isinstance(rv, int) else 0)


def _backend_option(default="reference"):
    from .backends.base import backend_names
    return click.option("--backend", default=default, show_default=True,
                        help=f"Backend to run on ({', '.join(backend_names())}; see `amosc backends`).")


def _model_and_calib(f):
    """The MODEL argument and --calib option shared by explore and compare."""
    f = click.option("--calib", required=True, type=click.Path(dir_okay=False), help="Calibration inputs .npy.")(f)
    return click.argument("model", type=click.Path(dir_okay=False))(f)


_bias_correction_option = click.option(
    "--bias-correction", default=32, show_default=True, type=click.IntRange(0), metavar="N",
    help="Compensate, in every neuron's bias, the mean of what the integer plane floors drop, measured "
         "on the first N calibration inputs (the correct_floor_bias pass, docs/optimizer.md); 0: off.")

_limit_option = click.option("--limit", type=click.IntRange(1), default=None,
                             help="Use only the first LIMIT inputs (and labels).")


def _save_npy(path, arr):
    from .fileio import atomic_write
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def _size(text: str) -> int:
    """A byte count: 123, 512M, 4G, 1.5GiB."""
    import re
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size such as 4G or 512M")
    unit = 1024 ** ("kmgt".index(m.group(2).lower()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * unit)


@click.group(cls=_Cli)
@click.version_option(package_name="amosc")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (also AMOSC_DEBUG=1).")
def main(debug):
    """Compile ONNX image classifiers to AMOS spiking networks and run them.

    Exit status: 0 success, 1 a validation check failed, 2 bad input (one 'error:' line),
    70 an internal error (a bug in amosc), 130 interrupted."""
    global _debug
    _debug = debug


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
@click.option("--relu-split", is_flag=True,
              help="Build a ReLU-like fitted unit (SiLU, GELU, softplus, ELU, hardswish) as a K-bit ReLU ADC plus "
                   "segments of the small residual f - relu where that takes fewer neurons: about half the neurons "
                   "at K=8, about half a step more error (docs/onnx-support.md).")
@click.option("--product", type=click.Choice(["squares", "gated"]), default="squares", show_default=True,
              help="A product x * s with s one value per channel (squeeze-excitation): squares = two fitted square "
                   "units, x s = u^2 - v^2; gated = s's K binary digits gate K ADCs of x (K^2 neurons per element, "
                   "K more steps on s's path; docs/onnx-support.md).")
@click.option("--fitted-units", type=click.IntRange(0, 24), default=0, show_default=True, metavar="N",
              help="N > 0: build every fitted activation (SiLU, GELU, sigmoid, tanh, ...; not a product's squares) as "
                   "one N-neuron fitted AMOS unit per element, its thresholds, resets and output weights fitted by "
                   "least squares on the calibration data (the FS-neuron code), instead of K-bit segment ADCs: N "
                   "neurons and N steps per element, error set by the fit (docs/onnx-support.md). 0: segments.")
@_bias_correction_option
@click.option("--max-neurons", default=None, type=click.IntRange(1), show_default="16777216",
              help="Refuse (before building it) a program with more neurons than this.")
@click.option("--max-memory", default=None, type=_size, show_default="3/4 of this machine's memory",
              help="Refuse a compile estimated to need more memory than this (e.g. 8G).")
@click.option("--strict", is_flag=True, help="Make calibration warnings (integer, constant or out-of-distribution "
              "data, gates that never fire) errors.")
@click.option("--latency-budget", type=click.IntRange(1), default=None, metavar="STEPS",
              help="Choose each ADC gate's structure (SAR, radix-2^r, flash) for the fewest neurons whose "
                   "latency is at most STEPS, at the same precision (docs/optimizer.md). Refused, before "
                   "anything is written, when no choice meets it.")
@click.option("--neuron-budget", type=click.IntRange(1), default=None, metavar="N",
              help="Choose structures for the lowest latency with at most N neurons (refused when even "
                   "the smallest program has more). With --val-input (and no --max-drop): first choose each "
                   "layer's K (at most --bits) for the highest measured top-1 agreement with the float model "
                   "(accuracy with --labels) within N neurons (docs/optimizer.md).")
@click.option("--max-drop", type=click.FloatRange(0), default=None, metavar="POINTS",
              help="Per-layer precision: lower some gates' K below --bits where it costs least, keeping "
                   "top-1 accuracy on --val-input/--labels within POINTS percentage points of the float "
                   "model's (measured per layer, then on the chosen program; docs/optimizer.md). Refused when "
                   "even uniform --bits loses more.")
@click.option("--val-input", type=click.Path(dir_okay=False), default=None,
              help="Validation inputs (.npy, N x input shape) for --max-drop, or for --neuron-budget's per-layer K.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Integer class labels (.npy, N) of --val-input, for --max-drop (required) or --neuron-budget (optional: accuracy instead of agreement).")
@click.option("--dump-after", "dump_after", multiple=True, metavar="PASS",
              help="Print the IR after PASS (repeatable; 'all': after every pass) to stderr, or into --dump-dir. "
                   "Passes: import, drop_dead_gates, relay_input (only when a fitted unit's input does not fit the "
                   "accumulator), expand_products, expand_fitted (tensor IR); lower, fold_constant_populations, "
                   "drop_dead_populations, schedule_asap, choose_structures (with a budget), correct_floor_bias (integer IR, in the text "
                   "form `amosc assemble` reads).")
@click.option("--dump-dir", type=click.Path(file_okay=False),
              help="Write each --dump-after IR to DIR/NN-PASS.air (integer IR) or DIR/NN-PASS.tir (tensor IR), "
                   "NN the pass's position in the pipeline, instead of stderr.")
def compile(model, calib, output, bits, calibration, percentile, rounding, granularity, weight_bits,  # noqa: A001
            maxpool, fit_tolerance, relu_split, product, fitted_units, bias_correction, max_neurons, max_memory, strict, latency_budget, neuron_budget, max_drop,
            val_input, labels, dump_after, dump_dir):
    """Compile an ONNX MODEL into an AMOS program (.amos)."""
    import warnings
    from .compiler.calibrate import read_npy
    from .compiler.pipeline import compile_model
    from .compiler.quantize import Options
    from .compiler.resources import Limits
    from .errors import CalibrationWarning, PrecisionWarning
    from .fileio import check_output
    from .ir.text import describe

    opts = Options(bits=bits, calibration=calibration, percentile=percentile, rounding=rounding,
                   granularity=granularity, weight_bits=int(weight_bits), maxpool=maxpool, fit_tolerance=fit_tolerance,
                   relu_split=relu_split, product=product, fitted_units=fitted_units,
                   bias_correction=bias_correction)
    limits = Limits(**{k: v for k, v in (("max_neurons", max_neurons), ("max_memory", max_memory)) if v})
    output = output or os.path.splitext(model)[0] + ".amos"
    check_output(output, [model, calib])
    if max_drop is not None and not (val_input and labels):
        raise click.BadParameter("--max-drop needs --val-input and --labels (the data the accuracy is "
                                 "measured on)", param_hint="'--max-drop'")
    fit = max_drop is None and neuron_budget is not None and val_input   # per-layer K within the budget
    if max_drop is None and not fit and (val_input or labels):
        raise click.BadParameter("--val-input and --labels are used only with --max-drop, or --val-input "
                                 "(and optionally --labels) with --neuron-budget",
                                 param_hint="'--val-input'" if val_input else "'--labels'")
    dump = _dumper(dump_after, dump_dir)
    x = read_npy(calib, "calibration data")
    validation = None
    if max_drop is not None or fit:
        from .compiler.calibrate import load_labels
        xv = read_npy(val_input, "validation input")
        validation = (xv, load_labels(labels, len(xv))[:len(xv)] if labels else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        warnings.simplefilter("always", PrecisionWarning)
        try:
            program = compile_model(model, x, opts, limits=limits, strict=strict, calib_name=calib, dump=dump,
                                    latency_budget=latency_budget, neuron_budget=neuron_budget,
                                    max_drop=max_drop, validation=validation,
                                    log=lambda line: click.echo(line, err=True))
        finally:
            for w in caught:
                if issubclass(w.category, (CalibrationWarning, PrecisionWarning)):
                    click.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    program.save(output)
    t = describe(program)["totals"]
    click.echo(f"wrote {output}: {len(program.populations)} populations, {t['neurons']} neurons, "
               f"{t['synapses']} synapses, latency {t['latency_steps']} steps, K={bits}")


def _dumper(names, directory):
    """compile_model's ``dump`` callback for --dump-after NAMES (None without any)."""
    if not names:
        if directory:
            raise click.BadParameter("--dump-dir needs --dump-after PASS", param_hint="'--dump-dir'")
        return None
    from .compiler.pipeline import PASS_NAMES
    unknown = [n for n in names if n != "all" and n not in PASS_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown pass {unknown[0]!r}; the passes are all, {', '.join(PASS_NAMES)}",
                                 param_hint="'--dump-after'")
    wanted = set(PASS_NAMES) if "all" in names else set(names)
    if directory:
        from .fileio import check_output
        os.makedirs(directory, exist_ok=True)
        for name in wanted:  # refuse a directory in the way before compiling
            for ext in (".air", ".tir"):
                check_output(os.path.join(directory, f"{PASS_NAMES.index(name):02d}-{name}{ext}"))

    def dump(name, ir):
        if name not in wanted:
            return
        from .ir import asm, tensor
        from .ir.nodes import Program
        integer = isinstance(ir, Program)
        text = asm.dumps(ir) if integer else tensor.dumps(ir)
        if directory:
            from .fileio import atomic_write
            path = os.path.join(directory, f"{PASS_NAMES.index(name):02d}-{name}{'.air' if integer else '.tir'}")
            atomic_write(path, lambda f: f.write(text.encode()))
        else:
            click.echo(f"# ---- IR after {name} ----", err=True)
            click.echo(text, err=True, nl=False)
    return dump


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "ir"]), default="text", show_default=True,
              help="text: a summary; json: the same as JSON; ir: the complete program in the IR text form "
                   "(docs/ir.md#text-form), which `amosc assemble` reads back.")
def inspect(program, fmt):
    """Print a compiled PROGRAM: populations, projections, codes, timing, totals."""
    from .ir.serialize import load
    from .ir.text import describe, render, to_json
    prog = load(program)
    if fmt == "ir":
        from .ir.asm import dumps
        click.echo(dumps(prog), nl=False)
        return
    d = describe(prog)
    click.echo(to_json(d) if fmt == "json" else render(d), nl=False)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output .amos file [default: SOURCE with .amos suffix].")
def assemble(source, output):
    """Read a program in the IR text form (SOURCE, e.g. from `amosc inspect --format ir`),
    validate and verify it as a loaded .amos file is, and save it as an .amos program."""
    from .fileio import check_output
    from .ir.asm import read
    output = output or os.path.splitext(source)[0] + ".amos"
    check_output(output, [source])
    program = read(source)
    program.save(output)
    click.echo(f"wrote {output}: {len(program.populations)} populations, {len(program.projections)} projections")


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
def run(program, inp, output, backend, interval, probabilities, limit):
    """Run PROGRAM on inputs and write the decoded logits."""
    from .compiler.calibrate import load_array
    from .fileio import check_output
    from .ir.serialize import load
    check_output(output, [program, inp])
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
@click.option("--backend", default=None,
              help="Spiking backend to check (see `amosc backends`); any but 'reference' is compared with the "
                   "reference simulator spike for spike. Default: without --onnx, 'lava' (Lava's fast style, an "
                   "independent implementation of the IR's dynamics); with --onnx, 'reference' (onnxruntime "
                   "and the level-1 integer check).")
@click.option("--interval", default=1, show_default=True, type=click.IntRange(1),
              help="Steps between inputs when comparing a backend with the reference spike for spike.")
@click.option("--min-agreement", default=0.99, show_default=True, type=click.FloatRange(0, 1),
              help="Fail (exit 1) when top-1 agreement with onnxruntime is below this.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--spike-check", default=64, show_default=True, type=click.IntRange(0),
              help="With --onnx: every input is evaluated with the integer semantics (level 1); this many "
                   "are also run on the spiking backend, which must equal it integer for integer.")
@_limit_option
def validate(program, onnx_path, inp, labels, backend, interval, min_agreement, json_out, spike_check, limit):
    """Check PROGRAM: against onnxruntime (--onnx) and, for a backend other than the
    reference, against the reference simulator spike for spike. Exits 1 on failure."""
    import dataclasses
    import json
    from .api import run_program
    from .compiler.calibrate import load_array, load_labels
    from .fileio import atomic_write, check_output
    from .ir.serialize import load
    from .validate import compare_spikes, validate as run_validation
    if backend is None:
        backend = "reference" if onnx_path else "lava"
    if not onnx_path and backend == "reference":
        raise AmoscError("nothing to validate: give --onnx MODEL, or a --backend other than 'reference' "
                         "to compare it with the reference spike for spike")
    if json_out:
        check_output(json_out, [program, onnx_path, inp, labels], "--json")
    prog = load(program)
    x = load_array(inp, prog.input_pop.shape, "input")[:limit]
    y = load_labels(labels, x.shape[0])[:x.shape[0]] if labels else None
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
                             result=result, spike_check=spike_check)
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
@click.option("--target", type=click.Choice(["lava", "nir"]), default="lava", show_default=True,
              help="lava: a runnable Lava program (a directory); nir: a NIR graph file (HDF5, docs/nir.md).")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="lava: the directory to create (must not exist or be empty); nir: the .nir file to write.")
@click.option("--no-floor", is_flag=True,
              help="nir: leave out the per-plane floor corrections (Threshold nodes): a plain float network, "
                   "smaller, but not bit-exact (docs/nir.md).")
def export(program, target, output, no_floor):
    """Export PROGRAM for TARGET: a runnable Lava program (standard processes) or a NIR graph."""
    from .ir.serialize import load
    if target == "nir":
        from .backends.nir_export import export_nir, import_nir
        from .fileio import check_output
        check_output(output, [program])
        import_nir()
        info = export_nir(load(program), output, floor_correction=not no_floor)
        click.echo(f"wrote {output}: NIR graph, {info['nodes']} nodes, {info['edges']} edges, "
                   f"{info['bytes']} bytes, {'bit-exact' if not no_floor else 'not bit-exact (--no-floor)'} "
                   f"at dt = 1 step; feed {' and '.join(repr(i) for i in info['inputs'])}, read 'output' "
                   f"{info['read_step']} steps after an input enters (docs/nir.md)")
        return
    if no_floor:
        raise AmoscError("--no-floor applies to --target nir only")
    if os.path.exists(output) and not os.path.isdir(output):
        raise AmoscError(f"{output}: is a file; --target lava writes a directory")
    from .backends.lava.export import export_lava
    files = export_lava(load(program), output)
    click.echo(f"wrote {output}/: {', '.join(files)}; run: python {output}/network.py --input x.npy -o logits.npy")


@main.command()
@click.argument("program", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["loihi2", "loihi1"]), default="loihi2", show_default=True,
              help="Hardware profile for the core mapping and the energy estimate (docs/hardware.md).")
@click.option("--input", "-i", "inp", type=click.Path(dir_okay=False),
              help="Inputs .npy: measure spikes and synaptic operations per input on them (level-1 "
                   "integer semantics, equal to the spiking simulators) and estimate energy.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_limit_option
def report(program, target, inp, fmt, limit):
    """Cost of PROGRAM on TARGET: neurons, synapses, cores, chips, latency, throughput and,
    with --input, spikes, synaptic operations and an energy estimate per input."""
    import json
    from .compiler import cost
    from .compiler.calibrate import load_array
    from .compiler.hardware import PROFILES
    from .ir.serialize import load
    prog = load(program)
    x = load_array(inp, prog.input_pop.shape, "input")[:limit] if inp else None
    rep = cost.report(prog, PROFILES[target], x)
    click.echo(json.dumps(rep, indent=1) if fmt == "json" else cost.render(rep), nl=fmt == "json")


@main.command()
@_model_and_calib
@click.option("--val-input", "val_input", required=True, type=click.Path(dir_okay=False),
              help="Validation inputs .npy: agreement with onnxruntime is measured on them.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Validation labels .npy (adds accuracy).")
@click.option("--bits", "-K", default="8", show_default=True,
              help="Precision(s) to explore, e.g. 8 or 4,6,8 (one compile each; the first is the default).")
@click.option("--target", type=click.Choice(["loihi2", "loihi1"]), default="loihi2", show_default=True,
              help="Hardware profile for the cores column.")
@click.option("--max-points", default=8, show_default=True, type=click.IntRange(2),
              help="Most structure plans evaluated per K (spread evenly from the SAR program to the fastest).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Draw the front here (PNG, SVG or PDF by suffix; needs matplotlib).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the points as a JSON list.")
@click.option("--fit-tolerance", "fit_tolerances", default=None, metavar="T[,T...]",
              help="Also compile fitted units (SiLU, GELU, sigmoid, ...) at these chord tolerances (e.g. 0.1,0.5): "
                   "more neurons-vs-agreement points for models with fitted activations.")
@click.option("--relu-split", "relu_split", type=click.Choice(["off", "on", "both"]), default="off",
              show_default=True, help="Compile ReLU-like fitted units plain, split (ReLU ADC + residual), or both.")
@click.option("--product", "product", type=click.Choice(["squares", "gated", "both"]), default="squares",
              show_default=True, help="Compile per-channel products (squeeze-excitation) as square pairs, gated "
                                      "circuits, or both (see compile --product).")
@_bias_correction_option
@_limit_option
def explore(model, calib, val_input, labels, bits, target, max_points, output, json_out, fit_tolerances,
            relu_split, product, bias_correction, limit):
    """The latency / neurons / agreement front of MODEL over gate structures (and K): a table,
    a plot and a JSON list of points (docs/optimizer.md)."""
    import json
    from .compiler import explore as ex
    from .compiler.calibrate import load_labels, read_npy
    from .fileio import atomic_write, check_output
    ks = _int_list(bits, "--bits", 1, 16)
    tols = [None]
    if fit_tolerances:
        try:
            tols = [float(t) for t in fit_tolerances.split(",")]
        except ValueError:
            raise click.BadParameter(f"{fit_tolerances!r} is not a comma-separated list of numbers",
                                     param_hint="'--fit-tolerance'")
        if not all(0 < t <= 1 for t in tols):
            raise click.BadParameter(f"{fit_tolerances!r}: each tolerance must be in (0, 1]",
                                     param_hint="'--fit-tolerance'")
    splits = {"off": [None], "on": [True], "both": [None, True]}[relu_split]
    products = {"squares": [None], "gated": ["gated"], "both": [None, "gated"]}[product]
    variants = [{k: v for k, v in (("fit_tolerance", t), ("relu_split", r), ("product", q)) if v is not None}
                for t in tols for r in splits for q in products]
    for path, what in ((output, "-o"), (json_out, "--json")):
        if path:
            check_output(path, [model, calib, val_input, labels], what)
    x = read_npy(val_input, "validation input")[:limit]
    y = load_labels(labels, x.shape[0])[:x.shape[0]] if labels else None
    front = ex.explore(model, read_npy(calib, "calibration data"), x, y, bits=ks, target=target,
                       max_points=max_points, log=lambda m: click.echo(m, err=True), variants=variants,
                       bias_correction=bias_correction)
    click.echo(ex.render(front), nl=False)
    if json_out:
        body = json.dumps([p.to_dict() for p in front.points], indent=1).encode()
        atomic_write(json_out, lambda f: f.write(body))
        click.echo(f"wrote {json_out}: {len(front.points)} points", err=True)
    if output:
        ex.plot(front, output, title=os.path.basename(model))
        click.echo(f"wrote {output}", err=True)


def _int_list(text: str, option: str, lo: int, hi: int) -> tuple:
    """'4,6,8' -> (4, 6, 8), each in lo..hi, or a usage error naming ``option``."""
    try:
        vals = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=f"'{option}'")
    if not vals or any(not lo <= v <= hi for v in vals):
        raise click.BadParameter(f"{text!r}: each value must be in {lo}..{hi}", param_hint=f"'{option}'")
    return vals


@main.command()
@_model_and_calib
@click.option("--input", "x_path", required=True, type=click.Path(dir_okay=False),
              help="Test inputs .npy: agreement with onnxruntime is measured on them.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Their labels .npy (adds accuracy).")
@click.option("--codes", default=",".join(("rate", "burst", "ternary", "augmented")), show_default=True,
              help="Rate-family codes to run: rate, burst (2 spikes per step), burstG (G per step), ternary, "
                   "augmented; 'none' for AMOS only.")
@click.option("--steps", "-T", default="8,16,32,64,128,256", show_default=True,
              help="Time windows T at which the rate-family codes are read out.")
@click.option("--bits", "-K", default="4,6,8", show_default=True, help="AMOS precisions K to compile and run.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the rows as a JSON list.")
@_limit_option
def compare(model, calib, x_path, labels, codes, steps, bits, json_out, limit):
    """AMOS against the rate-family conversion codes (rate, burst, ternary, augmented spikes)
    on the same imported MODEL and inputs: agreement, accuracy, latency, spikes (docs/codes.md)."""
    import json
    from . import codes as cd
    from .compiler.calibrate import load_labels, read_npy
    from .fileio import atomic_write, check_output
    names = () if codes.strip() == "none" else tuple(c.strip() for c in codes.split(",") if c.strip())
    for c in names:
        cd.scheme(c)    # an unknown code is refused before any work
    ts, ks = _int_list(steps, "--steps", 1, 100000), _int_list(bits, "--bits", 1, 16)
    if json_out:
        check_output(json_out, [model, calib, x_path, labels], "--json")
    x = read_npy(x_path, "test input")[:limit]
    y = load_labels(labels, x.shape[0])[:x.shape[0]] if labels else None
    rows = cd.compare(model, read_npy(calib, "calibration data"), x, y, codes=names, steps=ts, bits=ks,
                      log=lambda m: click.echo(m, err=True))
    click.echo(cd.render(rows))
    if json_out:
        body = json.dumps([r.to_dict() for r in rows], indent=1).encode()
        atomic_write(json_out, lambda f: f.write(body))
        click.echo(f"wrote {json_out}: {len(rows)} rows", err=True)


@main.command()
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
