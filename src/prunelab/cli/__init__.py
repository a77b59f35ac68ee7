"""The ``prunelab`` command line: a thin layer over the Python API.

Each sub-command lives in its own module ``prunelab.cli.<module>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when invoked, so
``prunelab --help`` stays fast. Every :class:`~prunelab.errors.PrunelabError` becomes one line on
stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import warnings

from prunelab.errors import PrunelabError, PrunelabWarning

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list the model zoo with parameter counts"),
    "info": ("info", "parameters and MACs of a model or checkpoint"),
    "train": ("train", "train a model on a dataset and save a checkpoint"),
    "prune": ("prune", "prune a model (unstructured, or --structured channels) and save it"),
    "reduce": ("reduce", "build a reduced network hitting a parameter or MACs target and train it"),
    "scratch": ("scratch", "train a pruned architecture from scratch (Scratch-E / Scratch-B)"),
    "copy-profile": ("copy_profile", "scale a pruned width profile into a family of networks"),
    "pfs": ("pfs", "Pruning from Scratch: learn gates on a random network, pick a structure, train it"),
    "bench": ("bench", "measure inference latency of a model or checkpoint"),
    "export": ("export", "export a checkpoint to its deploy form, to ONNX or to sparse inference form"),
    "study": ("study", "run a study (models x methods x targets x protocols x seeds)"),
    "results": ("results", "print a study's results table"),
    "report": ("report", "write a study's Markdown/HTML report with plots"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser(command: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog="prunelab", description=__doc__.splitlines()[0])
    from prunelab import __version__

    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"prunelab.cli.{module}").add_arguments(p)
            _check_numbers(p)
    return parser


#: integers a flag takes: what torch and NumPy hold in 64 bits
INT_RANGE = (-(2**63), 2**63 - 1)


def _int64(text: str) -> int:
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise argparse.ArgumentTypeError(f"{text} is out of range; integers go from {INT_RANGE[0]} to {INT_RANGE[1]}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


_int64.__name__, _finite.__name__ = "int", "float"  # argparse names the type in "invalid int value: 'x'"


def _check_numbers(parser: argparse.ArgumentParser) -> None:
    """Every ``type=int`` option of a command (its sub-actions included) takes 64-bit integers only and
    every ``type=float`` option finite numbers only: nan, inf and 1e400 (which float() reads as inf)
    are refused by argparse as one line, whatever the option."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _check_numbers(child)
        elif action.type is int:
            action.type = _int64
        elif action.type is float:
            action.type = _finite


def given_options(command: str | None, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line (not left at their defaults), so a
    command can refuse a flag that does not apply even when its value equals the default."""

    def suppress(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    suppress(child)
            elif action.option_strings:
                action.default = argparse.SUPPRESS
        p._defaults.clear()

    parser = build_parser(command)
    suppress(parser)
    return set(vars(parser.parse_args(argv)))


#: options naming where a command writes; checked before any work (folders when their metavar is DIR)
OUTPUT_OPTIONS = ("--out", "--output", "--state")


def _output_actions(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The output-path actions of the sub-command (and sub-action) that ``args`` selects."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                yield from _output_actions(action.choices[chosen], args)
        elif any(flag in OUTPUT_OPTIONS for flag in action.option_strings):
            yield action


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail fast, before loading data or training, on an output path that cannot be written
    (missing or read-only folder, a file where a folder is expected, or the reverse)."""
    for action in _output_actions(parser, args):
        value = getattr(args, action.dest, None)
        if isinstance(value, str) and value:
            from prunelab.io import check_writable  # imported only when needed: it imports torch

            # prune --hf writes a model folder to --out (save_pretrained)
            folder = action.metavar == "DIR" or (action.dest == "out" and bool(getattr(args, "hf", None)))
            check_writable(value, folder=folder)


def _os_error_line(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{exc.strerror or exc}: {where}"


class _OneLineWarnings(warnings.catch_warnings):
    """Show :class:`PrunelabWarning` as ``prunelab CMD: warning: ...`` (one line); other warnings as usual."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __enter__(self):
        result = super().__enter__()
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, PrunelabWarning):
                sys.stderr.write(f"{self.prefix}: warning: {' '.join(str(message).split())}\n")
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return result


def _out_of_memory_line(exc: BaseException) -> str | None:
    """One line for an allocation the machine could not satisfy (the guards estimate what inputs claim
    before allocating; this catches what no estimate foresaw, e.g. the activations of a huge input), or
    for a setting torch cannot hold in float32; None for any other error."""
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller inputs, batch sizes or widths"
    text = str(exc)
    if "without overflow" in text:  # torch turning a Python number into float32 (lr x gamma**k, a huge scale)
        return f"a number the work computed from the settings overflows float32 ({text.strip().splitlines()[0]}); " \
               f"use smaller values (e.g. --lr, --gamma, --weight-decay)"
    m = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if m is None and "out of memory" not in text.lower():
        return None
    from prunelab.resources import available_memory, human_bytes

    asked = f" (one allocation of {human_bytes(int(m.group(1)))})" if m else ""
    room = available_memory()
    have = f" with {human_bytes(room)} available" if room is not None else ""
    return f"out of memory{asked}{have}; use smaller inputs, batch sizes or widths"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        sys.stderr.write(f"prunelab: error: unknown command {command!r}; valid choices: {', '.join(COMMANDS)}\n")
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    args.given = given_options(command, argv)
    if os.environ.get("RANK", "0") != "0":
        # Under torchrun every rank runs the command; only rank 0 speaks on stdout.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"prunelab.cli.{COMMANDS[args.command][0]}")
    try:
        check_outputs(parser, args)
        from prunelab.cli.common import check_hf_args, import_plugins_from_args
        from prunelab.train.progress import reporting

        import_plugins_from_args(args)  # before anything is loaded: a plugin may register the model's family
        check_hf_args(args)

        # stage lines for the commands that take --quiet (those that train or prune), from one rank only
        report = hasattr(args, "quiet") and not args.quiet and os.environ.get("RANK", "0") == "0"
        with _OneLineWarnings(f"prunelab {args.command}"), reporting(f"prunelab {args.command}", enabled=report):
            return int(module.run(args) or 0)
    except PrunelabError as exc:
        sys.stderr.write(f"prunelab {args.command}: error: {exc}\n")
        return 2
    except (MemoryError, RuntimeError) as exc:
        line = _out_of_memory_line(exc)
        if line is None:  # not an allocation the machine refused: a real fault, keep its traceback
            raise
        sys.stderr.write(f"prunelab {args.command}: error: {line}\n")
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a real fault, keep its traceback
            raise
        sys.stderr.write(f"prunelab {args.command}: error: {_os_error_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
