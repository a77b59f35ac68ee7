"""``prunelab models``: list the model zoo with family, parameters, MACs and input shape."""

from __future__ import annotations

import torch

from prunelab.cli.common import emit_json
from prunelab.errors import check_choice


def add_arguments(parser) -> None:
    parser.add_argument("--family", default=None, help="list only this family's models")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def zoo_rows(family: str | None = None) -> list[dict]:
    """One row per registered model: name, family, params, conv+linear weights, MACs at its default
    input shape (batch 1, the :mod:`prunelab.measure` convention), input shape and description.

    Models are built on PyTorch's ``meta`` device (shapes only, no memory or initialisation cost)
    where that works, else on the CPU.
    """
    from prunelab.measure import count_macs
    from prunelab.measure.counting import WEIGHT_TYPES
    from prunelab.models import create, get_entry, input_shape_of, list_families, list_models

    if family is not None:
        check_choice("model family", family, list_families())
    rows = []
    for name in list_models():
        entry = get_entry(name)
        if family is not None and entry.family != family:
            continue
        shape = input_shape_of(entry.spec)
        try:
            with torch.device("meta"):
                model = create(entry.spec)
            macs = count_macs(model, shape)
        except (RuntimeError, NotImplementedError):
            model = create(entry.spec)
            macs = count_macs(model, shape)
        params = sum(p.numel() for p in model.parameters())
        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, WEIGHT_TYPES))
        rows.append({"name": name, "family": entry.family, "params": params, "conv_linear_weights": weights,
                     "macs": macs, "input_shape": list(shape), "num_classes": entry.num_classes, "doc": entry.doc})
    return rows


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def run(args) -> int:
    rows = zoo_rows(args.family)
    if args.json:
        emit_json(rows)
        return 0
    header = ("model", "family", "params", "MACs", "input", "description")
    table = [header] + [(r["name"], r["family"], f"{r['params']:,}", human(r["macs"]),
                         "x".join(str(d) for d in r["input_shape"]), r["doc"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [c.rjust(w) if i in (2, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]).rstrip())
    return 0
