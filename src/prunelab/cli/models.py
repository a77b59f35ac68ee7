"""``prunelab models``: list the model zoo with family, parameters, MACs and input shape.

Counting every zoo model takes seconds (each is built and run once, on PyTorch's ``meta`` device
where possible), and importing torch alone takes about a second, so the listing and ``prunelab
info NAME`` (for a zoo name with its defaults) read the counts from ``zoo_counts.json`` beside this
file when it was computed from the current sources: a SHA-1 of the model families, the counting
code and ``info``'s report (:mod:`prunelab.cli.zoo_cache` reads it). Anything else, or a file from
older sources, is computed live (same numbers, slower). Regenerate the file after changing a model family with::

    python -m prunelab.cli.models --write-cache
"""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.cli.common import emit_json, human
from prunelab.cli.zoo_cache import CACHE, cached_counts, sources_digest
from prunelab.errors import unknown_choice


def write_cache(path: Path = CACHE) -> Path:
    """Compute every zoo model's listing row and ``info`` report and write them (atomically)."""
    from prunelab.cli.info import describe
    from prunelab.io import atomic_write_text

    rows = live_zoo_rows()
    info = {r["name"]: describe(r["name"], use_cache=False) for r in rows}
    lines = ['{"sources": ' + json.dumps(sources_digest()) + ",", ' "rows": [']
    lines += ["  " + json.dumps(r) + ("," if i < len(rows) - 1 else "") for i, r in enumerate(rows)]
    lines += [" ],", ' "info": {']
    names = list(info)
    lines += [f"  {json.dumps(n)}: " + json.dumps(info[n]) + ("," if i < len(names) - 1 else "")
              for i, n in enumerate(names)]
    lines += [" }", "}"]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def add_arguments(parser) -> None:
    parser.add_argument("--family", default=None, help="list only this family's models")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def zoo_rows(family: str | None = None) -> list[dict]:
    """One row per registered model (see :func:`live_zoo_rows`), from the cache when it is current."""
    data = cached_counts()
    if data is None:
        return live_zoo_rows(family)
    rows = data["rows"]
    if family is not None and family not in {r["family"] for r in rows}:
        raise unknown_choice("model family", family, sorted({r["family"] for r in rows}))
    return [r for r in rows if family is None or r["family"] == family]


def live_zoo_rows(family: str | None = None) -> list[dict]:
    """One row per registered model: name, family, params, conv+linear weights, MACs at its default
    input shape (batch 1, the :mod:`prunelab.measure` convention), input shape and description.

    Models are built on PyTorch's ``meta`` device (shapes only, no memory or initialisation cost)
    where that works, else on the CPU.
    """
    import torch

    from prunelab.errors import check_choice
    from prunelab.measure import count_macs
    from prunelab.measure.counting import WEIGHT_TYPES
    from prunelab.models import create, get_entry, input_shape_of, input_spec_of, list_families, list_models

    if family is not None:
        check_choice("model family", family, list_families())
    rows = []
    for name in list_models():
        entry = get_entry(name)
        if family is not None and entry.family != family:
            continue
        shape, inputs = input_shape_of(entry.spec), input_spec_of(entry.spec)
        try:
            with torch.device("meta"):
                model = create(entry.spec)
            macs = count_macs(model, inputs)
        except (RuntimeError, NotImplementedError):
            model = create(entry.spec)
            macs = count_macs(model, inputs)
        params = sum(p.numel() for p in model.parameters())
        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, WEIGHT_TYPES))
        rows.append({"name": name, "family": entry.family, "params": params, "conv_linear_weights": weights,
                     "macs": macs, "input_shape": list(shape), "num_classes": entry.num_classes, "doc": entry.doc})
    return rows


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


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-cache"]:
        raise SystemExit("usage: python -m prunelab.cli.models --write-cache")
    print(f"wrote {write_cache()}")
