"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import os
import sys
from typing import Any

from prunelab.errors import PrunelabError

#: dimensions of an input without its batch: CxHxW images, TxF sequences, F vectors (DxHxW volumes)
MAX_INPUT_DIMS = 4


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``3x32x32`` or ``3,32,32`` into a shape tuple (1 to :data:`MAX_INPUT_DIMS` positive sizes)
    whose one sample fits in memory."""
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise PrunelabError(f"input size {text!r} must look like 3x32x32") from None
    if not dims or any(d < 1 for d in dims) or len(dims) > MAX_INPUT_DIMS:
        raise PrunelabError(f"input size {text!r} must be 1 to {MAX_INPUT_DIMS} positive integers like 3x32x32")
    check_input(dims)
    return dims


def check_input(shape: tuple[int, ...], batch: int = 1) -> None:
    """Refuse an input batch (float32) of ``batch`` x ``shape`` that would not fit in memory, before any
    tensor of it is made (see :mod:`prunelab.resources`)."""
    from prunelab.resources import check_tensor

    check_tensor(f"an input batch {'x'.join(str(int(d)) for d in (batch, *shape))}", (batch, *shape))


class _DeprecatedAlias:
    """Marker base; see :func:`add_alias`."""


def add_alias(container, old: str, new: str) -> None:
    """Accept the old spelling ``old`` of the option ``new`` (already added to ``container``): it stores
    into the same destination and leaves a note in ``args.deprecated_notes`` (the CLI prints each as one
    line naming the new spelling). Hidden from --help."""
    import argparse

    target = container._option_string_actions[new]

    class Alias(argparse.Action, _DeprecatedAlias):
        def __call__(self, parser, namespace, values, option_string=None):
            notes = getattr(namespace, "deprecated_notes", None) or []
            namespace.deprecated_notes = [*notes, f"{option_string} is deprecated; use {new}"]
            if target.nargs == 0:
                values = target.const if target.const is not None else True
            setattr(namespace, self.dest, values)

    container.add_argument(old, dest=target.dest, action=Alias, nargs=target.nargs, type=target.type,
                           choices=target.choices, metavar=target.metavar, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (plain data without importing torch; tensors and NaN through
    :func:`prunelab.io.to_json`)."""
    import json

    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except (TypeError, ValueError):
        from prunelab.io import to_json

        text = to_json(obj)
    sys.stdout.write(text + "\n")


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def add_model_argument(parser, help: str) -> None:
    """The model as ``MODEL`` (positional, as in prune, bench, info and export) or ``--model MODEL``."""
    parser.add_argument("model", nargs="?", metavar="MODEL", default=None, help=help)
    parser.add_argument("--model", dest="model_option", metavar="MODEL", default=None, help="the same, as an option")


def model_from_args(args, checkpoints: bool = True) -> str:
    """The one model named by :func:`add_model_argument`'s two spellings (``checkpoints``: whether the
    command also takes a checkpoint path there)."""
    given = [m for m in (args.model, args.model_option) if m is not None]
    if not given:
        raise PrunelabError("missing MODEL: give a zoo name (see 'prunelab models')"
                            + (" or a checkpoint path" if checkpoints else ""))
    if len(given) == 2 and given[0] != given[1]:
        raise PrunelabError(f"two models given ({given[0]!r} and --model {given[1]!r}); give one")
    args.model = given[0]
    return given[0]


def add_data_arguments(parser, required: bool = True) -> None:
    """``--data NAME`` and ``--data-root PATH`` (for real formats read from disk)."""
    parser.add_argument("--data", required=required, metavar="NAME",
                        help="dataset: digits, mnist1d, cifar10, cifar100, imagefolder, har, synthetic, tokens")
    parser.add_argument("--data-root", "--data-path", dest="data_root", metavar="PATH", default=None,
                        help="where a real-format dataset lives (CIFAR archive or folder, image folders, UCI-HAR; "
                             "--data tokens: the token file)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, repeatable (e.g. val_size=5000, binary=true, size=64, shape=3x32x32)")
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help="share of the training data held out for validation (default: the dataset's)")
    add_plugin_argument(parser)


def add_hf_arguments(parser) -> None:
    """``--hf DIR`` (a local Hugging Face model folder, in place of MODEL) and ``--seq-len N``."""
    parser.add_argument("--hf", metavar="FOLDER", default=None,
                        help="a local Hugging Face model folder (config.json + weights; nothing is downloaded) "
                             "instead of MODEL: sequence classification, image classification or causal LM")
    parser.add_argument("--seq-len", type=int, default=None, metavar="T",
                        help="--hf text models: sequence length of the example inputs (default: min(128, the "
                             "model's positions))")


def check_hf_args(args) -> None:
    """``--seq-len`` without ``--hf`` is refused (it would be ignored)."""
    if getattr(args, "hf", None) is None and getattr(args, "seq_len", None) is not None:
        raise PrunelabError("--seq-len applies to --hf models only")


def hf_from_args(args):
    """The :class:`~prunelab.models.hf.HFModel` of ``--hf`` (None without it). MODEL and ``--hf``
    together are refused; ``--seq-len`` applies to ``--hf`` only."""
    check_hf_args(args)
    folder = getattr(args, "hf", None)
    if folder is None:
        return None
    named = getattr(args, "model", None) or getattr(args, "checkpoint", None)
    if isinstance(named, list):
        named = named[0] if named else None
    if named:
        raise PrunelabError(f"give MODEL ({named!r}) or --hf {folder}, not both")
    from prunelab.export.hf import load_hf

    return load_hf(folder, seq_len=getattr(args, "seq_len", None))


def check_hf_fits(data, loaded) -> None:
    """The data's inputs must be what the folder's model takes (token ids within its vocabulary, or
    images of its size), and its labels what its loss reads."""
    spec = loaded.inputs
    if spec.vocab_size is not None:
        vocab = (data.info or {}).get("vocab_size")
        if data.task != "tokens":
            raise PrunelabError(f"--hf {loaded.path} takes token ids; data set {data.name!r} holds "
                                f"{'x'.join(map(str, data.input_shape))} {data.task} inputs (use --data tokens "
                                f"--data-path FILE)")
        if vocab is not None and int(vocab) > spec.vocab_size:
            raise PrunelabError(f"data set {data.name!r} holds token ids up to {int(vocab) - 1}; the model's "
                                f"vocabulary has {spec.vocab_size}")
        from prunelab.models.hf import max_positions

        limit = max_positions(loaded.model.config)
        if limit is not None and data.input_shape[-1] > limit:
            raise PrunelabError(f"data set {data.name!r} holds sequences of {data.input_shape[-1]} tokens; the "
                                f"model takes at most {limit}")
    elif tuple(data.input_shape) != tuple(spec.shape):
        raise PrunelabError(f"--hf {loaded.path} takes inputs {'x'.join(map(str, spec.shape))}; data set "
                            f"{data.name!r} holds {'x'.join(map(str, data.input_shape))}")
    labels = getattr(loaded.model.config, "num_labels", None)
    if loaded.loss == "cross-entropy" and labels is not None and data.num_classes != labels:
        raise PrunelabError(f"--hf {loaded.path} has {labels} labels; data set {data.name!r} has "
                            f"{data.num_classes} classes")


def add_plugin_argument(parser) -> None:
    """``--plugin MODULE`` (repeatable): imported before the command loads anything (see
    :func:`import_plugins_from_args`), as a study's ``plugins:`` are."""
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): it may register model families "
                             "(prunelab.models.register_family, so their checkpoints load), datasets "
                             "(prunelab.data.register_dataset), losses, criteria or trackers")


def data_options_from_args(args) -> dict[str, Any]:
    """``--data-option KEY=VALUE`` pairs as a dict; values are read as YAML scalars (5000, true, 0.1)."""
    import yaml

    from prunelab.study.yaml_limits import safe_load

    options: dict[str, Any] = {}
    for item in getattr(args, "data_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PrunelabError(f"--data-option {item!r} must look like KEY=VALUE")
        try:
            parsed = safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        options[key.strip().replace("-", "_")] = value if isinstance(parsed, dict) else parsed
    return options


def data_from_args(args, seed: int = 0):
    """Load the dataset named by ``--data`` with ``--data-root``, ``--val-fraction`` and ``--data-option``."""
    from prunelab.data import load

    import_plugins_from_args(args)
    return load(args.data, root=getattr(args, "data_root", None), val_fraction=getattr(args, "val_fraction", None),
                seed=seed, **data_options_from_args(args))


def add_tracker_arguments(parser) -> None:
    """``--tracker NAME`` and ``--tracker-dir DIR``: log the run to TensorBoard or MLflow (local folders)."""
    parser.add_argument("--tracker", default=None, metavar="NAME",
                        help="log the training curve, pruning trajectory and final metrics: tensorboard or mlflow")
    parser.add_argument("--tracker-dir", default=None, metavar="DIR",
                        help="the tracker's folder (default: runs/ for tensorboard, mlruns/ for mlflow)")


def check_tracker_args(args) -> None:
    """Fail before any work when ``--tracker`` names an unknown tracker or one whose extra is missing."""
    if getattr(args, "tracker", None) is not None:
        from prunelab.track import check_tracker

        check_tracker(args.tracker)


def track_command(args, run_name: str, config: dict[str, Any], curves, metrics: dict[str, Any], steps=()) -> None:
    """Log one command's run to ``--tracker`` (nothing without it; only rank 0 under torchrun)."""
    import os

    if getattr(args, "tracker", None) is None or os.environ.get("RANK", "0") != "0":
        return
    from prunelab.track import log_run, open_tracker

    tracker = open_tracker(args.tracker, args.tracker_dir)
    try:
        log_run(tracker, run_name, config, curves, metrics, steps)
    finally:
        tracker.close()


def import_plugins_from_args(args) -> None:
    """Import the ``--plugin`` modules (each once), so the names they register can be used."""
    from prunelab.study.tasks import import_plugins

    import_plugins(getattr(args, "plugin", None) or [])


def add_train_arguments(parser, defaults: dict[str, Any] | None = None) -> None:
    """Training settings shared by train, prune (fine-tuning), reduce, scratch, copy-profile and pfs.

    Each flag maps one-to-one onto a :class:`prunelab.train.config.TrainConfig` field, and takes its
    type, choices, default and help from that field's declaration (:mod:`prunelab.schema`).
    """
    from prunelab.schema import add_flags, specs
    from prunelab.train.config import MAX_SEED, TrainConfig
    from prunelab.train.distributed import BATCH_SCALINGS

    d = TrainConfig().to_dict()
    d.update(defaults or {})
    table = specs(TrainConfig)
    g = parser.add_argument_group("training")

    def flags(*names: str) -> None:
        add_flags(g, TrainConfig, names, defaults={n: d[n] for n in names if n in d})

    flags("epochs", "batch_size")
    g.add_argument("--batch-scaling", choices=BATCH_SCALINGS, default="keep-global",
                   help="under torchrun: keep-global splits --batch-size over the processes (the single-process "
                        "steps and learning rate); scale-lr gives every process --batch-size and multiplies --lr "
                        "by the world size (linear scaling rule)")
    flags("optimizer", "lr", "momentum", "nesterov", "weight_decay", "no_wd_bn_bias", "schedule")
    g.add_argument("--milestones", type=float, nargs="*", default=d["milestones"],
                   help="epochs, or fractions of --epochs when < 1")
    flags("gamma", "step_size", "lr_step", "warmup_epochs", "label_smoothing")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=d["augment"],
                   help=f"no {table['augment'][0].help}")
    flags("max_steps")
    g.add_argument("--seed", type=seed, default=d["seed"], help=f"random seed, 0 to {MAX_SEED} (default {d['seed']})")
    flags("device", "channels_last", "progress")
    g.add_argument("--quiet", action="store_true",
                   help="no progress: no training bar, and no stage lines (on a terminal, each stage's start and "
                        "time; in a log, a line for each stage that runs longer than 5 s)")
    flags("eval_every", "eval_batch_size", "drop_last")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=d["amp"], help=f"no {table['amp'][0].help}")
    flags("amp_dtype", "checkpoint", "checkpoint_every", "resume", "on_nonfinite")
    add_flags(g, TrainConfig, ["loss"], defaults={"loss": None})  # None: the data decides (loss_for_data)


def seed(text: str) -> int:
    """An argparse type: a seed torch and NumPy both take (0 to :data:`~prunelab.train.config.MAX_SEED`)."""
    import argparse

    from prunelab.train.config import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range; seeds go from 0 to {MAX_SEED}")
    return value


def train_config_from_args(args) -> Any:
    """Build a validated TrainConfig from the flags added by :func:`add_train_arguments`.

    On the command line a learning rate must be positive (the Python API also takes 0, which keeps the
    weights fixed while BatchNorm statistics move)."""
    from dataclasses import fields

    from prunelab.train.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if values.get("loss") is None:
        values.pop("loss", None)  # the data decides (see loss_for_data)
    if "progress" in values and not values["progress"] and not getattr(args, "quiet", False):
        from prunelab.train.progress import stderr_is_terminal

        values["progress"] = stderr_is_terminal() and os.environ.get("RANK", "0") == "0"
    if "lr" in values and not values["lr"] > 0:
        raise PrunelabError(f"--lr must be a positive number, got {values['lr']}")
    config = TrainConfig(**values).validate()
    from prunelab.train.distributed import env_world_size, scale_for_world

    world = env_world_size()
    if world <= 1:
        return config
    scaling = getattr(args, "batch_scaling", "keep-global")
    scaled = scale_for_world(config, world, scaling)
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"prunelab: distributed: world size {world}, per-process batch {scaled.batch_size}, global "
                         f"batch {scaled.batch_size * world}, lr {scaled.lr:g} (--batch-scaling {scaling})\n")
    return scaled


def load_model_and_data(args, seed: int):
    """The dataset of ``--data`` and the MODEL of ``args.model``: a zoo name built under ``seed`` and
    fitted to the data, or a checkpoint whose classes must be the data's; one forward pass shows the
    model takes the data. The first step of every command that trains or prunes a model (the tracker
    flags are checked before it). Returns ``(loaded, data, is_checkpoint)``."""
    import torch

    from prunelab.checkpoint import is_checkpoint_path, model_or_checkpoint

    check_tracker_args(args)
    data = data_from_args(args, seed=seed)
    torch.manual_seed(seed)
    is_checkpoint = is_checkpoint_path(args.model)
    loaded = model_or_checkpoint(args.model, **({} if is_checkpoint else fit_overrides(args.model, data)))
    check_fits(loaded.model, data, args.model)
    check_recorded_classes(loaded, data, args.model)
    return loaded, data, is_checkpoint


def check_fits(model, data, name: str) -> None:
    """One forward pass on a few test inputs: the model must accept the data and emit one logit per class."""
    import torch

    from prunelab.data import Feed

    split = "test" if len(data.test) else "train"
    x, _ = Feed(data).take(split, range(min(2, len(data.split(split)))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelabError(f"model {name} does not accept {data.name} inputs of shape "
                            f"{tuple(data.input_shape)}: {detail}") from None
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise PrunelabError(f"model {name} outputs shape {tuple(out.shape[1:])} but {data.name} has "
                            f"{data.num_classes} classes")


def print_written(command: str, *paths) -> None:
    """Say on stderr (rank 0 only; stdout stays for tables and ``--json``) which files a command wrote."""
    if paths and os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"prunelab {command}: wrote {', '.join(str(p) for p in paths)}\n")


def loss_for_data(config, data, args):
    """``config`` with the loss the data needs when ``--loss`` was not given (``next-token`` for a
    token set whose labels are its ids)."""
    from dataclasses import replace

    from prunelab.models.inputs import default_loss_of_data

    if getattr(args, "loss", None) is not None:
        return config
    return replace(config, loss=default_loss_of_data(data))


def data_meta(data) -> dict[str, Any]:
    """What a checkpoint records about its data so a later command can check it: the input shape and,
    where the dataset names them (image folders, tar shards), the class names."""
    from prunelab.models.inputs import input_meta, input_spec_of_data

    meta: dict[str, Any] = input_meta(input_spec_of_data(data))
    names = (data.info or {}).get("class_names")
    if names:
        meta["class_names"] = list(names)
    return meta


def check_recorded_classes(loaded, data, name: str) -> None:
    """A checkpoint's classes must be the data's: the class count of its architecture and, where both
    record them, the class names (an image folder with other or re-ordered classes)."""
    num_classes = loaded.spec.kwargs.get("num_classes")
    if num_classes is not None and int(num_classes) != data.num_classes:
        raise PrunelabError(f"checkpoint {name} has {num_classes} classes but dataset {data.name} has "
                            f"{data.num_classes}")
    recorded = (loaded.meta or {}).get("class_names")
    names = (data.info or {}).get("class_names")
    if recorded and names and list(recorded) != list(names):
        diff = next(i for i, (a, b) in enumerate(zip(recorded, names)) if a != b) if len(recorded) == len(names) \
            else min(len(recorded), len(names))
        raise PrunelabError(f"checkpoint {name} was trained on classes {_few(recorded)} but dataset {data.name} has "
                            f"{_few(names)} (they differ from class {diff} on)")


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} classes)" if len(names) > 5 else "")


def fit_overrides(name: str, data) -> dict[str, Any]:
    """Constructor keywords that fit zoo model ``name`` to ``data`` (classes, input channels / size)."""
    from prunelab.models import fit_spec, get_family, resolve

    spec = resolve(name)
    shape = tuple(data.input_shape)
    if get_family(spec.family).task == "sequence" and len(shape) == 2 and shape[0] == 1 and shape[1] > 1:
        from prunelab.data import get_dataset_entry

        hint = ("use --data-option layout=time" if "layout" in get_dataset_entry(data.name).options()
                else "give the data as (steps, features)")
        sys.stderr.write(f"prunelab: warning: {name} reads {data.name} {shape[0]}x{shape[1]} as one time step of "
                         f"{shape[1]} features; for a sequence of {shape[1]} steps {hint}\n")
    fitted = fit_spec(spec, data.num_classes, shape)
    return {k: v for k, v in fitted.kwargs.items() if spec.kwargs.get(k) != v}
