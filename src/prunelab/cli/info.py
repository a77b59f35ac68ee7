"""``prunelab info MODEL``: parameters, non-zeros and MACs of a zoo model or a checkpoint.

Conventions are those of :mod:`prunelab.measure.counting`: MACs at batch 1 (not FLOPs), Conv and
Linear weights plus average-pool numel; sparse-aware MACs use each weight's non-zero count.
"""

from __future__ import annotations

import inspect
import math

from prunelab.cli.common import emit_json, human, parse_shape
from prunelab.errors import PrunelabError


def add_arguments(parser) -> None:
    from prunelab.cli.common import add_hf_arguments

    parser.add_argument("model", metavar="MODEL", nargs="?", default=None,
                        help="a zoo name (see 'prunelab models') or a checkpoint path (or --hf FOLDER)")
    add_hf_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (zoo names only)")
    parser.add_argument("--input-size", metavar="SHAPE", default=None,
                        help="input shape without the batch, e.g. 3x32x32 or 128x9 (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    from prunelab.cli.common import add_plugin_argument

    add_plugin_argument(parser)


def _fit_input(spec, shape: tuple[int, ...]):
    """Set a zoo spec's input channels / features from ``shape`` where its constructor takes them."""
    from prunelab.models import get_family

    params = inspect.signature(get_family(spec.family).build).parameters
    overrides = {}
    if "in_channels" in params and len(shape) >= 2:
        overrides["in_channels"] = shape[0]
    if "input_size" in params and len(shape) >= 2:
        overrides["input_size"] = shape[-1]
    if "in_features" in params:
        overrides["in_features"] = math.prod(shape)
    return spec.with_kwargs(**overrides) if overrides else spec


def is_user_family(family: str) -> bool:
    """A family registered outside prunelab (a plugin's), whose layers the counting conventions may miss."""
    from prunelab.models import get_family

    return not getattr(get_family(family).build, "__module__", "").startswith("prunelab.")


def describe(model_arg: str, num_classes: int | None = None, input_size: str | None = None, *,
             use_cache: bool = True) -> dict:
    """The report ``prunelab info`` prints, as a dict (a zoo name with its defaults from the counts
    cache of :mod:`prunelab.cli.zoo_cache` when that is current)."""
    import os

    path_like = os.path.sep in model_arg or model_arg.endswith((".pt", ".pth")) or os.path.isfile(model_arg)
    if use_cache and num_classes is None and input_size is None and not path_like:
        from prunelab.cli.zoo_cache import cached_counts

        data = cached_counts()
        if data is not None and model_arg in data["info"]:
            return data["info"][model_arg]
    from prunelab.checkpoint import LoadedModel, is_checkpoint_path, model_or_checkpoint
    from prunelab.measure import count_params, layer_table
    from prunelab.models import create, input_shape_of, input_spec_of, resolve

    shape = parse_shape(input_size)
    loaded = model_or_checkpoint(model_arg) if is_checkpoint_path(model_arg) else None
    if loaded is not None:
        if num_classes is not None:
            raise PrunelabError("--num-classes applies to zoo names; a checkpoint keeps its own classifier")
        meta_shape = loaded.meta.get("input_shape")
        shape = shape or (tuple(int(d) for d in meta_shape) if meta_shape else input_shape_of(loaded.spec))
    else:
        if num_classes is not None and num_classes < 1:
            raise PrunelabError(f"--num-classes must be >= 1, got {num_classes}")
        spec = resolve(model_arg, **({"num_classes": num_classes} if num_classes is not None else {}))
        if shape is not None:
            spec = _fit_input(spec, shape)
        loaded = LoadedModel(create(spec), spec)
        shape = shape or input_shape_of(spec)
    # a family that takes token ids (the zoo's LM) is counted on its own example inputs
    inputs = input_spec_of(loaded.spec) if tuple(shape) == input_shape_of(loaded.spec) else shape
    counts = count_params(loaded.model)
    rows = layer_table(loaded.model, inputs)
    if is_user_family(loaded.spec.family):  # conventions written for the zoo: check them on a user's model
        from prunelab.measure import warn_if_miscounted

        warn_if_miscounted(loaded.model, inputs)
    dense = sum(r.macs_dense for r in rows)
    sparse = sum(r.macs_sparse for r in rows)
    cl = counts.conv_linear_weights
    return {
        "model": model_arg,
        "family": loaded.spec.family,
        "arch": loaded.spec.to_dict(),
        "structured_plan": loaded.plan is not None,
        "input_shape": list(shape),
        **counts.to_dict(),
        "sparsity": 1.0 - counts.nonzero_conv_linear / cl if cl else 0.0,
        "macs": dense,
        "macs_sparse": sparse,
        "layers": [r.to_dict() for r in rows],
    }


def describe_hf(args) -> dict:
    """The report of ``prunelab info --hf FOLDER``: counts on the folder's example inputs (token ids
    of ``--seq-len``, or images of the config's size), with the MACs checked against
    ``torch.utils.flop_counter`` (a disagreement beyond 1% is a warning naming the modules)."""
    from prunelab.cli.common import hf_from_args
    from prunelab.measure import count_params, layer_table, warn_if_miscounted

    if args.num_classes is not None or args.input_size is not None:
        raise PrunelabError("--num-classes and --input-size apply to zoo names and checkpoints; an --hf folder "
                            "keeps its config (its sequence length: --seq-len)")
    loaded = hf_from_args(args)
    model, spec = loaded.model, loaded.inputs
    counts = count_params(model)
    rows = layer_table(model, spec)
    check = warn_if_miscounted(model, spec)
    cl = counts.conv_linear_weights
    return {
        "model": args.hf,
        "family": f"hf:{type(model).__name__}",
        "arch": {"hf": str(args.hf), "architecture": type(model).__name__, "head": loaded.head},
        "structured_plan": False,
        "input_shape": list(spec.shape),
        "inputs": spec.to_dict(),
        "loss": loaded.loss,
        **counts.to_dict(),
        "sparsity": 1.0 - counts.nonzero_conv_linear / cl if cl else 0.0,
        "macs": sum(r.macs_dense for r in rows),
        "macs_sparse": sum(r.macs_sparse for r in rows),
        "flop_counter_macs": check.reference,
        "layers": [r.to_dict() for r in rows],
    }


def run(args) -> int:
    if args.hf is None and args.model is None:
        raise PrunelabError("missing MODEL: give a zoo name (see 'prunelab models'), a checkpoint path or --hf FOLDER")
    report = describe_hf(args) if args.hf is not None else describe(args.model, args.num_classes, args.input_size)
    if args.json:
        emit_json(report)
        return 0
    shape = "x".join(str(d) for d in report["input_shape"])
    if report.get("inputs"):
        from prunelab.models.inputs import InputSpec

        shape = InputSpec.from_dict(report["inputs"]).describe()
    print(f"{report['model']} ({report['family']}), input {shape}, batch 1")
    print(f"parameters           {report['params']:>15,}   non-zero {report['nonzero']:,}")
    print(f"conv+linear weights  {report['conv_linear_weights']:>15,}   non-zero {report['nonzero_conv_linear']:,}"
          f"   sparsity {100 * report['sparsity']:.2f}%")
    print(f"MACs                 {report['macs']:>15,}   ({human(report['macs'])}; sparse-aware "
          f"{report['macs_sparse']:,}, {human(report['macs_sparse'])})")
    print()
    header = ("layer", "kind", "weights", "non-zero", "MACs", "sparse MACs")
    table = [header] + [(r["name"], r["kind"], f"{r['weight_numel']:,}", f"{r['nonzero']:,}",
                         f"{r['macs_dense']:,}", f"{r['macs_sparse']:,}") for r in report["layers"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return 0
