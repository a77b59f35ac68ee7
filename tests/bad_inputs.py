"""Bad inputs for every command: fixture files, tiny base command lines, edge values, and a runner.

Shared by ``test_fuzz_inputs.py`` (a bounded hypothesis sample) and by the exhaustive pass
(``PYTHONPATH=src python tests/bad_inputs.py``, or with prunelab installed; ``--help`` for subsets),
which tries every numeric flag of every command with every edge
value, a list of hostile specs, checkpoints and pickles, and prints the counts: inputs tried, runs,
clean errors (one line on stderr, exit 2) and everything else (tracebacks, several lines, hangs).

Every base command line is tiny (digits, one or two optimiser steps, small models), so a value that is
valid runs in about a second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

T = ["--epochs", "1", "--max-steps", "1", "--batch-size", "64", "--device", "cpu"]

#: edge values for integer flags: overflow, sign, zero, non-numbers, and large values that are valid
INT_VALUES = ["0", "-1", "1", "3", "1000000000000", "9223372036854775807", "9223372036854775808",
              "-9223372036854775809", "1180591620717411303424", "nan", "inf", "3.5", "1e3", "", "abc"]
#: edge values for float flags: non-finite, overflow to inf, signed zero, subnormal, huge, non-numbers
FLOAT_VALUES = ["nan", "inf", "-inf", "1e400", "-1e400", "0", "-0", "-1", "1e-320", "0.5", "0.999", "1", "2",
                "1e30", "1e308", "abc", ""]

#: base command lines per command (placeholders: {ckpt} {masked} {wrn} {plan} {wrnplan} {yaml} {out})
BASES: dict[str, list[list[str]]] = {
    "info": [["info", "cnn"], ["info", "{ckpt}"]],
    "train": [["train", "cnn", "--data", "digits", *T, "--out", "{out}.pt"]],
    "prune": [
        ["prune", "cnn", "--data", "digits", "--sparsity", "0.5", "--pretrain-epochs", "0", *T, "--out", "{out}.pt"],
        ["prune", "cnn", "--data", "digits", "--sparsity", "0.5", "--prune-schedule", "gradual", *T,
         "--out", "{out}.pt"],
        ["prune", "{ckpt}", "--data", "digits", "--sparsity", "0.5", "--prune-schedule", "iterative", "--rounds", "2",
         *T, "--out", "{out}.pt"],
        ["prune", "{ckpt}", "--data", "digits", "--sparsity", "0.5", "--method", "snip", "--snip-batch", "16", *T,
         "--out", "{out}.pt"],
        ["prune", "{wrn}", "--structured", "--data", "digits", "--target-channels", "24", "--prune-every", "1",
         "--channels-per-prune", "4", *T, "--max-steps", "3", "--out", "{out}.pt"],
        ["prune", "{wrn}", "--structured", "--oneshot", "--criterion", "l1", "--data", "digits", "--target-params",
         "3000", *T, "--out", "{out}.pt"],
    ],
    "reduce": [["reduce", "cnn", "--data", "digits", "--mode", "width", "--target-params", "8000", *T, "--out",
                "{out}"]],
    "scratch": [["scratch", "{plan}", "--budget", "E", "--data", "digits", *T, "--out", "{out}"]],
    "copy-profile": [["copy-profile", "{wrnplan}", "--alpha", "0.5", "--data", "digits", *T, "--out", "{out}"]],
    "pfs": [["pfs", "cnn", "--data", "digits", "--target-macs-ratio", "0.5", "--tol", "0.1", "--gate-epochs", "1",
             "--gate-batch-size", "256", *T, "--out", "{out}"]],
    "bench": [["bench", "cnn", "--batch-sizes", "1", "--warmup", "0", "--repeats", "1", "--min-time", "0",
               "--threads", "1"]],
    "export": [["export", "{masked}", "--format", "sparse", "--policy", "dense", "--batch-size", "1", "--threads", "1",
                "--out", "{out}.pt"],
               ["export", "{ckpt}", "--format", "onnx", "--out", "{out}.onnx"]],
    "study": [["study", "run", "{yaml}", "--out", "{out}", "--quiet"]],
}

#: which base command lines of a command a flag is tried on (by index into BASES[command]); a flag not
#: listed is tried on the first one. Flags of one pruning mode or schedule go to the bases of that mode.
_STRUCTURED = ("--channels-per-prune", "--target-latency-ms", "--latency-batch-size", "--latency-threads",
               "--fisher-beta", "--round-to", "--finetune-steps", "--checkpoint-every-prunes", "--target-channels",
               "--target-params", "--target-macs")
FLAG_BASES: dict[str, dict[str, tuple[int, ...]]] = {
    "info": {"--num-classes": (0, 1)},
    "prune": {"--prune-start": (1,), "--prune-end": (1,), "--prune-every": (1, 4), "--initial-sparsity": (1,),
              "--rounds": (2,), "--rewind-epoch": (2,), "--snip-batch": (3,), "--mt": (0,), "--mt-percent": (0,),
              "--sparsity": (0, 2), **{f: (4, 5) for f in _STRUCTURED},
              **{f: (0, 4) for f in ("--epochs", "--max-steps", "--batch-size", "--pretrain-epochs", "--lr")}},
    "export": {"--opset": (1,)},
}
#: flags whose value is a number written as text (they take 1e4, 2.5M-style counts)
NUMBER_TEXT_FLAGS = {"reduce": ("--target-params", "--target-macs", "--target-latency-ms"),
                     "copy-profile": ("--target-params", "--target-macs"),
                     "pfs": ("--target-macs",)}

#: (command, flag): values whose runs are valid but long by design are left out of the fuzz, where the
#: flag asks for that much work; bench's time flags belong to the benchmark's own bounds
LONG_BY_DESIGN = {("bench", "--repeats"), ("bench", "--warmup"), ("bench", "--min-time")}


def make_fixtures(folder: Path) -> dict[str, str]:
    """The files the base command lines read: dense, masked and WRN checkpoints, plans, a study spec."""
    from prunelab.io import save_checkpoint
    from prunelab.models import ArchSpec, create, resolve
    from prunelab.prune.structured.groups import find_groups
    from prunelab.prune.structured.plan import make_plan
    from prunelab.prune.unstructured import prune_global

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cnn = resolve("cnn", in_channels=1)
    save_checkpoint(folder / "cnn.pt", arch=cnn.to_dict(), state_dict=create(cnn).state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    masked = create(cnn)
    prune_global(masked, 0.5)
    save_checkpoint(folder / "masked.pt", arch=cnn.to_dict(), state_dict=masked.state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    wrn = ArchSpec("wrn", {"depth": 10, "widths": [4, 8, 16, 16], "in_channels": 1, "num_classes": 10})
    save_checkpoint(folder / "wrn.pt", arch=wrn.to_dict(), state_dict=create(wrn).state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    for name, spec in (("plan", cnn), ("wrnplan", ArchSpec("wrn", {"depth": 16, "widen_factor": 1, "in_channels": 1,
                                                                  "num_classes": 10}))):
        groups = find_groups(create(spec), (1, 8, 8), "internal", spec=spec)
        keep = {g.name: list(range(max(1, g.width // 2))) for g in groups}
        (folder / f"{name}.json").write_text(json.dumps(make_plan(groups, keep, spec.to_dict())))
    (folder / "ok.yaml").write_text(OK_SPEC)
    return {"ckpt": str(folder / "cnn.pt"), "masked": str(folder / "masked.pt"), "wrn": str(folder / "wrn.pt"),
            "plan": str(folder / "plan.json"), "wrnplan": str(folder / "wrnplan.json"),
            "yaml": str(folder / "ok.yaml")}


OK_SPEC = "name: t\ndata: {name: digits}\ntrain: {epochs: 1, max_steps: 1, batch_size: 64}\nmodels: [mlp]\n" \
          "methods: [dense]\n"


def numeric_flags(command: str) -> list[tuple[str, str]]:
    """``(flag, "int" | "float")`` for every integer and float option of a command (read from its parser)."""
    from prunelab.cli import build_parser

    out: list[tuple[str, str]] = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    if name == command or parser.prog.endswith(command):
                        walk(child)
            elif action.option_strings and getattr(action.type, "__name__", None) in _KINDS:
                flag = (action.option_strings[-1], _KINDS[action.type.__name__])
                if flag not in out:
                    out.append(flag)

    walk(build_parser(command))
    return out + [(f, "float") for f in NUMBER_TEXT_FLAGS.get(command, ())]


#: argparse type names -> the edge values they get (``seed`` and ``_count`` are integer types)
_KINDS = {"int": "int", "float": "float", "seed": "int", "_count": "int"}


class Hang(BaseException):
    """A command ran past its time limit."""


@dataclass
class Outcome:
    argv: list[str]
    code: int | None
    err: str
    error: str | None = None  # an exception that escaped main(), with its traceback

    @property
    def clean_error(self) -> bool:
        """Exit 2 with one ``error:`` line (warnings printed before it, one line each, are fine)."""
        lines = [line for line in self.err.strip().splitlines() if ": warning: " not in line]
        return self.code == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in self.err \
            and self.error is None

    @property
    def ran(self) -> bool:
        return self.code in (0, 1) and self.error is None and "Traceback" not in self.err

    @property
    def ok(self) -> bool:
        return self.ran or self.clean_error


def run_cli(argv: list[str], cwd: Path, timeout_s: int = 120) -> Outcome:
    """``prunelab.cli.main(argv)`` in this process, in ``cwd``, with stderr captured and a time limit."""
    from prunelab.cli import main

    try:
        import prunelab.train.progress as progress
    except ImportError:  # a prunelab before stage lines (the pass can run against older code)
        progress = argparse.Namespace(LOG_AFTER_S=None)
    err, out = io.StringIO(), io.StringIO()
    log_after = progress.LOG_AFTER_S
    progress.LOG_AFTER_S = 1e6  # stage lines of slow stages are not what is looked at here
    previous = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(timeout_s)
    here = os.getcwd()
    os.chdir(cwd)
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
        return Outcome(argv, code, err.getvalue())
    except Hang:
        return Outcome(argv, None, err.getvalue(), f"ran past {timeout_s} s")
    except BaseException:  # noqa: BLE001 -- anything escaping main() is what this looks for
        return Outcome(argv, None, err.getvalue(), traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(here)
        torch.set_num_threads(threads)
        progress.LOG_AFTER_S = log_after


def _raise_hang(signum, frame):
    raise Hang()


def fill(argv: list[str], files: dict[str, str], out: str) -> list[str]:
    return [a.format(out=out, **files) if "{" in a else a for a in argv]


# ----------------------------------------------------------------------------- hostile files

def hostile_specs() -> dict[str, str]:
    """Study specs that must each be one line: YAML bombs, depth, size, names, plugins, folders."""
    base = OK_SPEC
    names = "abcdefghi"
    chain = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    chain += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    specs = {
        "alias-bomb": base + "description: {" + ", ".join(chain) + "}\n",
        "deep-flow": base + "description: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep-block": base + "description:\n" + "".join(" " * i + "- \n" for i in range(2000)),
        "recursive-alias": base + "description: &x [*x]\n",
        "many-aliases": base + "description: [&a 1, " + ",".join(["*a"] * 2000) + "]\n",
        "many-items": base + "description: [" + ",".join(["1"] * 60_000) + "]\n",
        "big-file": base + "description: |\n" + "  x\n" * 200_000,
        "merge-bomb": base + "train: &t {epochs: 1}\nx: {<<: *t}\n",
        "name-dotdot": base.replace("name: t", "name: '..'"),
        "name-dot": base.replace("name: t", "name: ."),
        "name-slash": base.replace("name: t", "name: a/b"),
        "name-abs": base.replace("name: t", "name: /tmp/x"),
        "name-hidden": base.replace("name: t", "name: .hidden"),
        "name-nul": base.replace("name: t", 'name: "a\\0b"'),
        "name-long": base.replace("name: t", "name: " + "a" * 300),
        "name-list": base.replace("name: t", "name: [a]"),
        "cache-proc": base + "cache: /proc/self\n",
        "cache-sys": base + "cache: /sys/kernel\n",
        "cache-dev": base + "cache: /dev\n",
        "cache-file": base + "cache: /etc/hostname\n",
        "cache-number": base + "cache: 5\n",
        "plugin-missing": base + "plugins: [prunelab_no_such_plugin_anywhere]\n",
        "seeds-huge": base + "seeds: 1180591620717411303424\n",
        "seeds-list-huge": base + "seeds: [1180591620717411303424]\n",
        "seeds-negative": base + "seeds: [-1]\n",
        "seeds-nan": base + "seeds: [.nan]\n",
        "lr-nan": base.replace("batch_size: 64}", "batch_size: 64, lr: .nan}"),
        "lr-inf": base.replace("batch_size: 64}", "batch_size: 64, lr: .inf}"),
        "milestones-nan": base.replace("batch_size: 64}", "batch_size: 64, milestones: [.nan]}"),
        "epochs-huge": base.replace("epochs: 1", "epochs: 1180591620717411303424"),
        "batch-huge": base.replace("batch_size: 64", "batch_size: 1180591620717411303424"),
        "measure-min-time": base + "measure: {latency: true, min_time_s: 1.0e9}\n",
        "measure-repeats": base + "measure: {latency: true, repeats: 1000000000000}\n",
        "measure-batch-huge": base + "measure: {latency: true, batch_sizes: [1180591620717411303424]}\n",
        "runs-huge": base.replace("methods: [dense]", "methods: [dense]\nseeds: 10000\ntargets: [none]") +
        "models: [mlp, cnn]\n".replace("models:", "x:"),
        "kwargs-huge-width": base.replace("models: [mlp]", "models: [{name: cnn, kwargs: {widths: [1000000000]}}]"),
        "not-a-mapping": "[1, 2, 3]\n",
        "empty": "",
        "binary": "\x00\x01\x02",
        "tabs": "name: t\n\tdata: x\n",
        "tag-python": base + "description: !!python/object/apply:os.system ['true']\n",
        "tag-unknown": base + "description: !weird 1\n",
        "key-list": base + "? [a, b]\n: 1\n",
        "duplicate-key": base + "name: u\n",
        "float-key": base + "1.5: x\n",
    }
    return specs


def hostile_checkpoints(folder: Path) -> dict[str, Path]:
    """Weights-only checkpoints (and files posing as them) that must each be one line or a warning."""
    from prunelab.io import CHECKPOINT_FORMAT
    from prunelab.models import create, resolve

    folder.mkdir(parents=True, exist_ok=True)
    cnn = resolve("cnn", in_channels=1)
    state = create(cnn).state_dict()
    out: dict[str, Path] = {}

    def save(name: str, payload) -> None:
        out[name] = folder / f"{name}.pt"
        torch.save(payload, out[name])

    good = {"format": CHECKPOINT_FORMAT, "version": 1, "arch": cnn.to_dict(), "plan": None, "state_dict": state,
            "meta": {"input_shape": [1, 8, 8]}}
    save("widths-huge", {**good, "arch": {"family": "wrn", "kwargs": {"depth": 10, "widths": [100000] * 4}}})
    save("classes-huge", {**good, "arch": {"family": "cnn", "kwargs": {"num_classes": 10**12}}})
    save("depth-huge", {**good, "arch": {"family": "resnet_cifar", "kwargs": {"depth": 6 * 10**7 + 2}}})
    save("widths-negative", {**good, "arch": {"family": "cnn", "kwargs": {"widths": [-5, 3, 3]}}})
    save("widths-string", {**good, "arch": {"family": "cnn", "kwargs": {"widths": "abc"}}})
    save("widths-float", {**good, "arch": {"family": "cnn", "kwargs": {"widths": [1e300, 2, 2]}}})
    save("kwargs-list", {**good, "arch": {"family": "cnn", "kwargs": [1, 2]}})
    save("arch-list", {**good, "arch": ["cnn"]})
    save("arch-family-number", {**good, "arch": {"family": 5}})
    save("family-unknown", {**good, "arch": {"family": "nosuch"}})
    save("state-list", {**good, "state_dict": list(state.values())})
    save("state-none", {**good, "state_dict": None})
    save("state-int-keys", {**good, "state_dict": {i: v for i, v in enumerate(state.values())}})
    save("state-strings", {**good, "state_dict": {k: "x" for k in state}})
    save("state-wrong-shape", {**good, "state_dict": {k: torch.zeros(3) for k in state}})
    save("state-empty", {**good, "state_dict": {}})
    save("shape-huge", {**good, "meta": {"input_shape": [100000, 100000, 100000]}})
    save("shape-negative", {**good, "meta": {"input_shape": [-1, 8, 8]}})
    save("shape-string", {**good, "meta": {"input_shape": "1x8x8"}})
    save("shape-many-dims", {**good, "meta": {"input_shape": [1] * 1000}})
    save("shape-floats", {**good, "meta": {"input_shape": [1.5, 8, 8]}})
    save("meta-list", {**good, "meta": [1]})
    save("plan-list", {**good, "plan": [1]})
    save("plan-garbage", {**good, "plan": {"format": "prunelab-channel-plan", "groups": "x"}})
    save("no-format", {k: v for k, v in good.items() if k != "format"})
    save("no-arch", {k: v for k, v in good.items() if k != "arch"})
    save("not-a-dict", [1, 2, 3])
    save("a-tensor", torch.zeros(3))
    nan_state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in state.items()}
    save("nan-weights", {**good, "state_dict": nan_state})
    (folder / "random-bytes.pt").write_bytes(os.urandom(4096))
    out["random-bytes"] = folder / "random-bytes.pt"
    (folder / "empty.pt").write_bytes(b"")
    out["empty"] = folder / "empty.pt"
    blob = (folder / "widths-huge.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    out["truncated"] = folder / "truncated.pt"
    return out


class _System:
    """Unpickling calls os.system with a command that would leave a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _Exec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Subprocess:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return (subprocess.call, (["touch", str(self.marker)],))


def malicious_pickles(folder: Path) -> tuple[dict[str, Path], Path]:
    """Files whose unpickling would run code (each leaves ``marker`` if it runs), in torch's zip format
    and as raw pickles, plus pickled modules and classes. Returns the files and the marker path."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "PAYLOAD_RAN"
    out: dict[str, Path] = {}
    payloads = {"os-system": _System(marker), "eval": _Eval(marker), "exec": _Exec(marker),
                "subprocess": _Subprocess(marker), "module-object": sys.modules[__name__].__class__,
                "nn-module": torch.nn.Linear(2, 2), "class": _System, "builtin-open": open, "os-module": os}
    for name, payload in payloads.items():
        for wrapper in ("zip", "raw", "nested"):
            path = folder / f"{name}-{wrapper}.pt"
            try:
                if wrapper == "zip":
                    torch.save(payload, path)
                elif wrapper == "nested":
                    torch.save({"format": "prunelab-checkpoint", "arch": {"family": "cnn"}, "state_dict": {},
                                "meta": {"x": payload}}, path)
                else:
                    with open(path, "wb") as fh:
                        pickle.dump(payload, fh, protocol=2)
            except (TypeError, pickle.PicklingError, AttributeError):
                continue  # not picklable in this form
            out[f"{name}-{wrapper}"] = path
    return out, marker


# ----------------------------------------------------------------------------- the pass

def flag_cases(commands: list[str] | None = None) -> list[tuple[str, list[str], str, str]]:
    """``(command, base, flag, value)`` for every numeric flag of every command, every edge value and
    every base command line of that command."""
    cases = []
    for command, bases in BASES.items():
        if commands and command not in commands:
            continue
        for flag, kind in numeric_flags(command):
            for value in INT_VALUES if kind == "int" else FLOAT_VALUES:
                if (command, flag) in LONG_BY_DESIGN and value not in ("nan", "inf", "-1", "abc", "", "1e400",
                                                                      "9223372036854775808"):
                    continue
                for i in FLAG_BASES.get(command, {}).get(flag, (0,)):
                    cases.append((command, bases[i], flag, value))
    return cases


def file_cases(folder: Path) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` for the hostile specs, checkpoints and pickles (written into ``folder``)."""
    cases: list[tuple[str, list[str]]] = []
    specs = folder / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    for name, text in hostile_specs().items():
        path = specs / f"{name}.yaml"
        path.write_text(text, errors="surrogateescape")
        cases.append((f"spec {name}: validate", ["study", "validate", str(path)]))
        cases.append((f"spec {name}: run", ["study", "run", str(path), "--out", "{out}", "--quiet"]))
    for name, path in hostile_checkpoints(folder / "ckpts").items():
        p = str(path)
        cases += [(f"checkpoint {name}: {argv[0]}", argv) for argv in (
            ["info", p], ["bench", p, "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--min-time", "0"],
            ["export", p, "--format", "onnx", "--out", "{out}.onnx"],
            ["train", p, "--data", "digits", *T, "--out", "{out}.pt"],
            ["prune", p, "--data", "digits", "--sparsity", "0.5", *T, "--out", "{out}.pt"],
            ["scratch", p, "--budget", "E", "--data", "digits", *T, "--out", "{out}"])]
    pickles, _ = malicious_pickles(folder / "pickles")
    for name, path in pickles.items():
        p = str(path)
        cases += [(f"pickle {name}: {argv[0]}", argv) for argv in (
            ["info", p], ["export", p, "--format", "sparse", "--out", "{out}.pt"],
            ["train", p, "--data", "digits", *T, "--out", "{out}.pt"])]
    return cases


def main(argv: list[str] | None = None) -> int:
    import tempfile
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", nargs="*", default=None, help="only these commands' numeric flags")
    parser.add_argument("--no-flags", action="store_true", help="skip the numeric flags")
    parser.add_argument("--no-files", action="store_true", help="skip the hostile specs, checkpoints and pickles")
    parser.add_argument("--timeout", type=int, default=120, help="seconds one command may run")
    parser.add_argument("--verbose", action="store_true", help="print every input and its outcome")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="prunelab-bad-inputs-"))
    files = make_fixtures(root / "fixtures")
    inputs: list[tuple[str, list[str]]] = []
    if not args.no_flags:
        inputs += [(f"{c} {flag} {v!r}", [*base, flag, v]) for c, base, flag, v in flag_cases(args.commands)]
    if not args.no_files:
        inputs += file_cases(root / "files")
    _, marker = malicious_pickles(root / "files" / "pickles") if not args.no_files else (None, None)
    counts = {"tried": 0, "ran": 0, "clean errors": 0, "tracebacks": 0, "several lines": 0, "hangs": 0}
    failures: list[str] = []
    start = time.perf_counter()
    for i, (label, case) in enumerate(inputs):
        work = root / f"w{i}"
        work.mkdir()
        outcome = run_cli(fill(case, files, str(work / "out")), work, args.timeout)
        counts["tried"] += 1
        if outcome.ran:
            counts["ran"] += 1
        elif outcome.clean_error:
            counts["clean errors"] += 1
        else:
            kind = "hangs" if outcome.error and outcome.error.startswith("ran past") else \
                "tracebacks" if outcome.error or "Traceback" in outcome.err else "several lines"
            counts[kind] += 1
            detail = (outcome.error or outcome.err).strip().splitlines()
            failures.append(f"{kind}: {label}: exit {outcome.code}: {' | '.join(detail[-3:])[:400]}")
        if args.verbose:
            print(f"[{i + 1}/{len(inputs)}] {label}: exit {outcome.code}: "
                  f"{(outcome.err.strip().splitlines() or [''])[-1][:160]}", flush=True)
    payload_ran = marker is not None and marker.exists()
    shutil.rmtree(root, ignore_errors=True)
    for line in failures:
        print(line)
    print(json.dumps({**counts, "pickle payloads that ran": int(payload_ran),
                      "seconds": round(time.perf_counter() - start)}))
    return 0 if not failures and not payload_ran else 1


if __name__ == "__main__":
    raise SystemExit(main())
