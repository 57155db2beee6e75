"""The `fastrnn` command: convert checkpoints to fastrnn's native file, and describe models.

    fastrnn convert CHECKPOINT -o MODEL.fastrnn [--prefix P] [--kind K] [--[no-]batch-first]
                    [--trust-pickle]
    fastrnn info MODEL [--prefix P] [--kind K] [--[no-]batch-first] [--trust-pickle]
    fastrnn warmup [--dtype float32 float64] [--quiet]

CHECKPOINT is a PyTorch state dict file (.pt, .pth, .safetensors) or an ONNX model (.onnx),
which convert to a fastrnn.Model, or a whole model, a Keras 3 (.keras) or Neural Amp Modeler
(.nam) file, which converts to a fastrnn.Chain (fastrnn.from_keras / fastrnn.from_nam) and is
written with Chain.save. --prefix, --kind, --batch-first and --trust-pickle are for torch
checkpoints only; any other file refuses them. A chain is first written to a trial file that must
load back to the same chain (fingerprint), else nothing is written. A whole torch model converts
from a live module (fastrnn.from_torch(module)) or, with --trust-pickle, from a module pickled
with torch.save(module), to a chain as well; a state dict holds weights, not an architecture, so
from a state dict only a recurrent module is read.
`info` reads a .fastrnn file (a Model's or a Chain's), or converts a checkpoint in memory, and
describes the result; a chain is described the same way from its file as converted in memory.
A state dict cannot tell a plain RNN's nonlinearity or its input layout: what was assumed for
those is a warning on stderr (convert) and a line of the description (info), until --kind and
--batch-first/--no-batch-first state them.
`warmup` compiles every CPU kernel ahead of the first answer (fastrnn.compiles), into the cache
FASTRNN_CACHE_DIR names, for a container build.
A user's mistake (a missing file, a wrong prefix, an unsupported graph) is one line on stderr and
exit status 1; usage errors are argparse's, status 2. Tracebacks are kept for fastrnn's own bugs.
"""

import argparse
import sys
import warnings
from pathlib import Path

TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")
ONNX_SUFFIXES = (".onnx",)
CHAIN_SUFFIXES = (".keras", ".nam")   # whole models: they convert to a fastrnn.Chain
CHECKPOINT_SUFFIXES = TORCH_SUFFIXES + ONNX_SUFFIXES + CHAIN_SUFFIXES
# Where the files that take no torch options get their architecture and layout from.
_OWN_ARCHITECTURE = {".onnx": "an ONNX model's cell and layout come from its graph",
                     ".keras": "a Keras model's layers and layout come from the file",
                     ".nam": "a .nam file's layers and layout come from the file"}
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")

# Errors that describe the user's input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, TypeError, OSError, NotImplementedError)


class CommandError(Exception):
    """A mistake in how the command was called, found after argument parsing."""


def main(argv=None):
    """Run the command line; returns the exit status (0 on success)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ImportError as error:
        if getattr(error, "name", None) == "keras":
            _fail(f"{error}. Reading a .keras file needs Keras 3: pip install keras (fastrnn "
                  f"runs it on the torch backend unless KERAS_BACKEND names another)")
        else:
            _fail(f"{error}. The converters need their framework: pip install 'fastrnn[torch]' "
                  f"or 'fastrnn[onnx]'")
    except (CommandError, *USER_ERRORS) as error:
        # A KeyError's str() is its repr; its one argument is the message.
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        _fail(message or type(error).__name__)
    return 1


def _fail(message):
    print(f"fastrnn: error: {message}", file=sys.stderr)


def _parser():
    from fastrnn.version import __version__
    parser = argparse.ArgumentParser(
        prog="fastrnn", description="Fast inference for trained LSTM, GRU and RNN models.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert a PyTorch, ONNX, Keras 3 or NAM model to a .fastrnn file",
        description="Convert a PyTorch state dict (.pt, .pth, .safetensors) or an ONNX model "
                    "(.onnx) to fastrnn's native file; a Keras 3 model (.keras) or a Neural "
                    "Amp Modeler model (.nam) to the fastrnn.Chain it becomes, in the same "
                    "file format.")
    convert.add_argument("checkpoint", type=Path, help="the file to convert")
    convert.add_argument("-o", "--output", type=Path,
                         help="where to write the model (default: CHECKPOINT with the suffix "
                              ".fastrnn)")
    convert.add_argument("--prefix", default="",
                         help="torch: the key prefix of the recurrent module in the state dict, "
                              "e.g. 'model.encoder.rnn'")
    convert.add_argument("--kind", choices=KINDS,
                         help="torch: the cell, where shapes cannot tell (a plain RNN's "
                              "nonlinearity: rnn_relu)")
    convert.add_argument("--batch-first", action=argparse.BooleanOptionalAction,
                         help="torch: the model takes (B, T, I) inputs, as nn.LSTM(batch_first="
                              "True) does; --no-batch-first: time-major (T, B, I). A state dict "
                              "cannot tell: time-major is assumed, with a warning")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="torch: unpickle a .pt/.pth file that holds a whole module rather "
                              "than a state dict. Only for files you trust: unpickling can run "
                              "code from the file")
    convert.set_defaults(run=_convert)

    info = commands.add_parser(
        "info", help="describe a model: architecture, sizes, dtype, parameters, file version",
        description="Describe a .fastrnn file, or a checkpoint converted in memory.")
    info.add_argument("model", type=Path, help="a .fastrnn file, or a checkpoint to convert")
    info.add_argument("--prefix", default="", help="torch checkpoints: as for convert")
    info.add_argument("--kind", choices=KINDS, help="torch checkpoints: as for convert")
    info.add_argument("--batch-first", action=argparse.BooleanOptionalAction,
                      help="torch checkpoints: as for convert")
    info.add_argument("--trust-pickle", action="store_true",
                      help="torch checkpoints: as for convert")
    info.set_defaults(run=_info)

    warmup = commands.add_parser(
        "warmup", help="compile every CPU kernel now, into the disk cache",
        description="Compile (or load from Numba's disk cache) every CPU kernel a model of these "
                    "dtypes can use, so that a later process answers without compiling. The "
                    "cache goes to FASTRNN_CACHE_DIR when it is set, else next to the installed "
                    "package (or Numba's user cache directory when that is read-only).")
    warmup.add_argument("--dtype", nargs="+", choices=("float32", "float64"),
                        default=["float32", "float64"], dest="dtypes",
                        help="the model dtypes to compile for (default: both)")
    warmup.add_argument("-q", "--quiet", action="store_true",
                        help="no progress lines on stderr")
    warmup.set_defaults(run=_warmup)
    return parser


def convert_checkpoint(path, *, prefix="", kind=None, batch_first=None, trust_pickle=False):
    """The Model in a torch or ONNX checkpoint, or the Chain a Keras 3 or NAM file becomes,
    chosen by its suffix.

    What the torch converter assumed is in model.assumptions, not warned about: the commands say
    it in their own terms (see assumptions_note). A chain assumes nothing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise CommandError(f"{path} is a directory; expected a checkpoint file{_files_in(path)}")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES + CHAIN_SUFFIXES:
        given = [name for name, value in (("--prefix", prefix or None), ("--kind", kind),
                                          ("--batch-first", batch_first),
                                          ("--trust-pickle", trust_pickle or None))
                 if value is not None]
        if given:
            raise CommandError(f"{', '.join(given)} apply to torch checkpoints; "
                               f"{_OWN_ARCHITECTURE[suffix]}")
        import fastrnn
        if suffix == ".keras":
            import zipfile
            if not zipfile.is_zipfile(path):   # Keras itself says "File not found" for these
                raise CommandError(f"{path} is not a Keras 3 .keras file: model.save writes a "
                                   f"zip archive, and this file is not one")
            return fastrnn.from_keras(path)
        if suffix == ".nam":
            return fastrnn.from_nam(path)
        return fastrnn.from_onnx(str(path))
    if suffix in TORCH_SUFFIXES:
        from fastrnn.converters.pytorch import AssumptionWarning, from_torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AssumptionWarning)
            return from_torch(path, prefix=prefix, kind=kind, batch_first=batch_first,
                              trust_pickle=trust_pickle)
    raise CommandError(f"{path}: unknown checkpoint type {suffix or '(no suffix)'!r}; expected "
                       f"a file ending in one of {', '.join(CHECKPOINT_SUFFIXES)} "
                       f"(rename it if it is one of those)")


def _files_in(directory):
    """A hint naming the model files a directory holds, if any."""
    suffixes = CHECKPOINT_SUFFIXES + (".fastrnn",)
    try:
        found = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in suffixes)
    except OSError:
        found = []
    if not found:
        return f" ({', '.join(suffixes)})"
    return f"; it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}: pass one of those"


# How each assumption reads, the option a model that differs needs, and the options that state it.
_ASSUMED = {
    "kind": ("a plain RNN's nonlinearity: {value}",
             "nn.RNN(nonlinearity='relu') needs --kind rnn_relu", "--kind"),
    "batch_first": ("{layout} inputs",
                    "a module built with batch_first=True needs --batch-first",
                    "--batch-first or --no-batch-first"),
}


def _assumed(assumptions):
    layouts = {False: "time-major (T, B, I)", True: "batch-first (B, T, I)"}
    return ", and ".join(_ASSUMED[name][0].format(value=str(value).removeprefix("rnn_"),
                                                  layout=layouts.get(value))
                         for name, value in assumptions.items())


def _stating(assumptions):
    return " and ".join(_ASSUMED[name][2] for name in assumptions)


def assumptions_note(assumptions):
    """The warning `fastrnn convert` prints for what the converter assumed."""
    differs = ", and ".join(_ASSUMED[name][1] for name in assumptions)
    them = "them" if len(assumptions) > 1 else "it"
    return (f"the checkpoint cannot tell, so fastrnn assumed {_assumed(assumptions)}; "
            f"{differs}. State {them} with {_stating(assumptions)} to silence this warning")


def _convert(args):
    output = args.output or args.checkpoint.with_suffix(".fastrnn")
    # The output is checked first, so that a long conversion is not lost to a wrong -o.
    if output.is_dir():
        raise CommandError(f"the output {output} is a directory; give a file name")
    if not output.parent.is_dir():
        raise CommandError(f"the output directory {output.parent} does not exist; create it "
                           f"(mkdir -p {output.parent}) or give -o a file in an existing "
                           f"directory")
    from fastrnn.chain import Chain
    model = convert_checkpoint(args.checkpoint, prefix=args.prefix, kind=args.kind,
                               batch_first=args.batch_first, trust_pickle=args.trust_pickle)
    if output.exists() and output.resolve() == args.checkpoint.resolve():
        raise CommandError(f"the output {output} would overwrite the checkpoint")
    if isinstance(model, Chain):
        _save_chain(model, output, args.checkpoint)
        note = _nam_note(model, args.checkpoint)
        if note:
            print(f"fastrnn: warning: {note}", file=sys.stderr)
        print(f"wrote {output}: {_chain_summary(model)}")
        return 0
    if model.assumptions:
        print(f"fastrnn: warning: {assumptions_note(model.assumptions)}", file=sys.stderr)
    model.save(output)
    print(f"wrote {output}: {_summary(model)}")
    return 0


def _save_chain(chain, output, checkpoint):
    """chain.save(output), once a trial write elsewhere has loaded back to the same chain: a
    chain whose file fastrnn.load cannot read is refused, and nothing is written."""
    import re
    import tempfile

    from fastrnn.model import load
    with tempfile.TemporaryDirectory(prefix="fastrnn-convert-") as scratch:
        trial = Path(scratch) / output.name
        chain.save(trial)
        try:
            loaded = load(trial)
        except ValueError as error:
            detail = str(error).split("malformed chain header: ", 1)[-1].replace(str(trial), "")
            index = re.match(r"layer (\d+)\b", detail)
            if index and int(index.group(1)) < len(chain.layers):
                detail += f"; layer {index.group(1)} is {chain.layers[int(index.group(1))]!r}"
            raise CommandError(f"{checkpoint} converts to a chain that fastrnn's chain file "
                               f"cannot hold yet ({detail}), so nothing was written; "
                               f"fastrnn.from_{checkpoint.suffix.lower()[1:]} in Python runs "
                               f"it") from None
        if loaded.fingerprint() != chain.fingerprint():   # fastrnn's bug, not the user's
            raise RuntimeError(f"the chain file written for {checkpoint} loads back to other "
                               f"weights or settings than the chain that was saved")
    chain.save(output)


def _nam_note(chain, checkpoint):
    """The warning for what a .nam file holds beside its weights, which the chain file drops."""
    nam = getattr(chain, "nam", None) or {}
    kept = [what for what, key in (("sample rate", "sample_rate"), ("metadata", "metadata"))
            if nam.get(key) is not None]
    if not kept:
        return None
    rate = nam.get("sample_rate")
    return (f"the .fastrnn file holds the chain, not the {' or '.join(kept)} of {checkpoint} "
            f"(fastrnn.from_nam(path).nam has {'them' if len(kept) > 1 else 'it'})"
            + (f"; fastrnn does not resample: feed the model {rate} Hz audio" if rate else ""))


def _info(args):
    from fastrnn import fileformat
    from fastrnn.chain import Chain
    from fastrnn.model import load
    path = args.model
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise CommandError(f"{path} is a directory; expected a model file{_files_in(path)}")
    is_native = path.suffix.lower() == fileformat.SUFFIX or (
        fileformat.starts_with_magic(path))  # reads the first bytes only
    if is_native:
        version, header, _ = fileformat.read_header(path)
        model = load(path)
        source = (f"fastrnn model file, format version {version} (written by fastrnn "
                  f"{header.get('fastrnn_version', 'unknown')})")
    else:
        model = convert_checkpoint(path, prefix=args.prefix, kind=args.kind,
                                   batch_first=args.batch_first, trust_pickle=args.trust_pickle)
        source = "checkpoint, converted in memory (fastrnn convert writes it as a .fastrnn file)"
    if isinstance(model, Chain):
        suffix = path.suffix.lower()
        if is_native:
            source += ", a whole chain"
        elif suffix == ".keras":
            source = "Keras 3 model, " + source.removeprefix("checkpoint, ")
        elif suffix == ".nam":
            source = (f"Neural Amp Modeler model, version {model.nam['version']}, sample rate "
                      f"{model.nam['sample_rate'] or 'not given'}, "
                      + source.removeprefix("checkpoint, "))
        else:   # a whole torch module, unpickled with --trust-pickle
            source = "pickled torch module (a whole model), " + source.removeprefix("checkpoint, ")
        print(describe_chain(model, path, source))
    else:
        print(describe(model, path, source, native=is_native))
    return 0


def _warmup(args):
    from fastrnn.compiles import cache_directory, warmup
    steps = warmup(dtypes=tuple(dict.fromkeys(args.dtypes)), progress=not args.quiet)
    print(f"warmed up {len(steps)} calls for {', '.join(dict.fromkeys(args.dtypes))} in "
          f"{sum(step.seconds for step in steps):.1f} s; cache: {cache_directory()}")
    return 0


def describe(model, path, source, native=False):
    """A multi-line description of `model`, as `fastrnn info` prints it."""
    config = model.config
    names = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)"}
    layout = "batch-first (B, T, I)" if config.batch_first else "time-major (T, B, I)"
    options = []
    if config.proj_size:
        options.append(f"proj_size={config.proj_size}")
    if config.kind == "lstm" and model.layers[0].peephole is not None:
        options.append("peepholes")
    if config.clip:
        options.append(f"clip={config.clip:g}")
    if config.input_forget:
        options.append("input_forget (coupled input-forget gate)")
    if config.kind == "gru":
        options.append("reset after the matmul (PyTorch, linear_before_reset=1)"
                       if config.linear_before_reset else
                       "reset before the matmul (linear_before_reset=0)")
    if config.activations:
        options.append("activations=" + ", ".join(
            f"{name}({alpha:g}, {beta:g})" if (alpha or beta) else name
            for name, alpha, beta in config.activations))
    rows = [
        ("file", f"{path}"),
        ("source", source),
        ("architecture", f"{names[config.kind]}, {config.num_layers} layer(s), "
                         f"{'bidirectional' if config.bidirectional else 'unidirectional'}"),
        ("input_size", config.input_size),
        ("hidden_size", config.hidden_size),
        ("output_size", f"{model.output_size} (y's last axis)"),
        ("layout", layout),
        ("dtype", model.dtype.name),
        ("parameters", f"{model.num_parameters:,} "
                       f"({_size(model.num_parameters * model.dtype.itemsize)})"),
        ("options", ", ".join(options) or "none"),
        ("assumed", _assumed_row(model.assumptions, native)),
    ]
    width = max(len(name) for name, _ in rows) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)


def describe_chain(chain, path, source):
    """A multi-line description of a fastrnn.Chain, as `fastrnn info` prints it for a .keras or
    .nam file (converted in memory) and for a .fastrnn file holding a chain alike."""
    count = _chain_parameters(chain)
    refusal = chain.stream_refusal()
    rows = [("file", f"{path}"),
            ("source", source),
            ("chain", repr(chain).replace("\n", "\n  ")),
            ("parameters", f"{count:,} ({_size(count * chain.dtype.itemsize)})"),
            ("streams", "yes" if refusal is None else f"no: {refusal}")]
    width = max(len(name) for name, _ in rows) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)


def _assumed_row(assumptions, native):
    if not assumptions:
        return "none recorded" if native else "none"
    one = len(assumptions) == 1
    return (f"{_assumed(assumptions)} (the checkpoint cannot tell; {_stating(assumptions)} "
            f"state{'s it' if one else ' them'})")


def _summary(model):
    config = model.config
    return (f"{config.kind}, {config.num_layers} layer(s)"
            f"{', bidirectional' if config.bidirectional else ''}, input_size="
            f"{config.input_size}, hidden_size={config.hidden_size}, {model.dtype.name}, "
            f"{model.num_parameters:,} parameters")


def _chain_parameters(chain):
    """Every number the chain's layers hold (Residuals' inner layers included)."""
    return sum(array.size for layer in chain.layers for array in layer.weights().values())


def _chain_summary(chain):
    names = ", ".join(type(layer).__name__ for layer in chain.layers)
    return (f"chain of {len(chain.layers)} layer(s) ({names}), {chain.in_features} -> "
            f"{chain.out_features} channels, {chain.input_layout} in, {chain.output_layout} out, "
            f"{chain.dtype.name}, {_chain_parameters(chain):,} parameters")


def _size(count):
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


if __name__ == "__main__":
    sys.exit(main())
