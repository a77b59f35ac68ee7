"""``prunelab train``: train a zoo model (or continue a checkpoint) on a dataset and save it.

    prunelab train --model resnet20 --data cifar10 --data-root ~/data --epochs 160 --out r20.pt

The model is built with the dataset's number of classes; if its input shape differs from the data's
and it cannot run on the data's inputs, the command stops with both shapes named. The checkpoint
(``--out``) holds the architecture spec, the weights and the training summary; ``--json`` prints the
summary (accuracy, parameters, MACs, history) as JSON. A pruned checkpoint keeps its masks: the
trainer holds every pruned weight at zero. A run whose loss or weights go NaN or infinite stops with
one line and writes nothing (``--on-nonfinite warn`` trains on instead).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from prunelab.cli.common import (
    add_data_arguments,
    add_model_argument,
    add_tracker_arguments,
    add_train_arguments,
    check_recorded_classes,
    check_tracker_args,
    data_from_args,
    data_meta,
    data_options_from_args,
    emit_json,
    fit_overrides,
    model_from_args,
    track_command,
    train_config_from_args,
)
from prunelab.errors import PrunelabError
from prunelab.train.progress import stage


def add_arguments(parser) -> None:
    add_model_argument(parser, "zoo name (see `prunelab models`) or a checkpoint to continue training")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="PATH", help="where to write the trained checkpoint")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_tracker_arguments(parser)
    add_train_arguments(parser)


def _shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def check_model_fits(model: torch.nn.Module, expected_shape: tuple[int, ...], data, name: str) -> None:
    """Raise a one-line error when ``model`` cannot classify ``data``'s inputs.

    Models whose declared input shape matches the data's pass; otherwise one sample is run through
    the model (many families are size-agnostic) and its output must be ``(1, num_classes)``.
    """
    if tuple(expected_shape) == tuple(data.input_shape):
        return
    problem = f"model {name} expects input {_shape(expected_shape)} but dataset {data.name} gives " \
              f"{_shape(data.input_shape)}"
    from prunelab.data import Feed

    sample = Feed(data).take("train", [0])[0] if len(data.train) else torch.zeros(1, *data.input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample.to(next(model.parameters()).device))
    except (RuntimeError, ValueError, IndexError, TypeError):
        raise PrunelabError(problem) from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise PrunelabError(problem)


def _counts(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    try:
        from prunelab.measure import count_macs, count_params
    except ImportError:
        return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad), "macs": None}
    counts = count_params(model)
    return {"params": int(counts.params), "conv_linear_weights": int(counts.conv_linear_weights),
            "macs": int(count_macs(model, input_shape))}


def run(args) -> int:
    from prunelab.checkpoint import is_checkpoint_path, model_or_checkpoint
    from prunelab.io import save_checkpoint
    from prunelab.models import input_shape_of
    from prunelab.train import Trainer

    model_from_args(args)
    config = train_config_from_args(args)
    check_tracker_args(args)
    data = data_from_args(args, seed=0)
    torch.manual_seed(config.seed)
    is_zoo_name = not is_checkpoint_path(args.model)
    loaded = model_or_checkpoint(args.model, **(fit_overrides(args.model, data) if is_zoo_name else {}))
    model, spec = loaded.model, loaded.spec
    check_recorded_classes(loaded, data, args.model)
    # the shape a checkpoint was trained on, where it says; else the architecture's declared one
    trained_on = (loaded.meta or {}).get("input_shape") if not is_zoo_name else None
    check_model_fits(model, tuple(trained_on) if trained_on else input_shape_of(spec), data, args.model)
    trainer = Trainer(model, data, config)
    if trainer.world_size > 1:
        sys.stdout.write(f"data-parallel on {trainer.world_size} processes: global batch {trainer.global_batch_size} "
                         f"({config.batch_size} per process), {trainer.feed.n_per_rank} samples per process per "
                         f"epoch\n")
        sys.stdout.flush()
    with stage(f"training {args.model} on {data.name}"):
        result = trainer.fit()
    model = model.cpu().eval()
    final = result.final
    summary: dict[str, Any] = {
        "model": args.model,
        "arch": spec.to_dict(),
        "data": data.name,
        "data_options": data_options_from_args(args),
        **data_meta(data),
        "num_classes": data.num_classes,
        **_counts(model, tuple(data.input_shape)),
        "val_acc": final.get("val_acc"),
        "test_acc": final.get("test_acc"),
        "val_loss": final.get("val_loss"),
        "test_loss": final.get("test_loss"),
        "epochs": final.get("epoch"),
        "steps": final.get("step"),
        "time_s": final.get("time"),
        "train": config.to_dict(),
        "history": result.history,
        "out": str(args.out),
    }
    meta = {k: v for k, v in summary.items() if k not in ("arch", "out")}
    save_checkpoint(args.out, arch=spec.to_dict(), state_dict=model.state_dict(), plan=loaded.plan, meta=meta)
    metrics = {"acc": final.get("test_acc"), "loss": final.get("test_loss"), "val_acc": final.get("val_acc"),
               "val_loss": final.get("val_loss"), "params": summary.get("params"), "macs": summary.get("macs"),
               "steps": final.get("step"), "time_s": final.get("time")}
    track_command(args, Path(args.out).stem, {k: v for k, v in summary.items() if k != "history"}, result.history,
                  metrics)
    if args.json:
        emit_json(summary)
    else:
        val = "n/a" if final.get("val_acc") is None else f"{final['val_acc']:.4f}"
        macs = "n/a" if summary.get("macs") is None else f"{summary['macs']:,}"
        sys.stdout.write(f"{args.model} on {data.name}: test acc {final.get('test_acc'):.4f}, val acc {val}, "
                         f"params {summary['params']:,}, MACs {macs}, {final.get('step')} steps in "
                         f"{final.get('time'):.1f}s -> {args.out}\n")
    return 0
