"""What a pruning step did: per-layer table, MACs, and layer-collapse diagnostics.

Weight sparsity is not FLOPs sparsity (Gupta et al. 2022: at 80% weight sparsity one-shot ResNet-50
loses only 72.4% of its FLOPs): Global MP prunes large late layers with few MACs per weight the
most. The report therefore gives, beside the weight sparsity, dense
MACs, sparse-aware MACs (sum over layers of nnz(W) x output positions, counted by
:mod:`prunelab.measure` under the PFS convention: Conv/Linear plus average pooling, batch 1) and
"FLOPs pruned" = 1 - sparse MACs / dense MACs.

Layer collapse (Gupta et al. 2022, sec. 3; Tanaka et al. 2020) is flagged two ways: a pruned layer
that keeps no weight at all, and a network whose output no longer depends on its input, found by
evaluating it on a few random inputs and checking which outputs change.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.models.inputs import InputSpec, call_model, logits_of
from prunelab.prune.unstructured.masks import get_mask
from prunelab.prune.unstructured.selection import PrunableLayer, candidate_layers


class LayerCollapseWarning(UserWarning):
    """A layer kept no weights, or no path from input to output survived."""


class RegrowWarning(UserWarning):
    """A target below the model's present sparsity: already-pruned weights were kept pruned."""


@dataclass
class LayerReport:
    """One Conv/Linear layer after pruning. ``pruned`` says whether the layer was selected."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    pruned: bool
    macs_dense: int | None = None
    macs_kept: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["sparsity"] = self.sparsity
        return d


@dataclass
class PruneReport:
    """Result of one pruning step (also the summary of a schedule's last step).

    ``total`` / ``kept`` / ``sparsity`` are over the *selected* weight tensors, the Global MP
    denominator; ``layers`` lists every Conv/Linear layer of the model, selected or not.
    """

    method: str
    target_sparsity: float
    total: int
    kept: int
    layers: list[LayerReport]
    sigma: int | None = None
    macs_dense: int | None = None
    macs_sparse: int | None = None
    collapsed: list[str] = field(default_factory=list)
    outputs_connected: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    @property
    def flops_pruned(self) -> float | None:
        if not self.macs_dense or self.macs_sparse is None:
            return None
        return 1.0 - self.macs_sparse / self.macs_dense

    @property
    def path_intact(self) -> bool | None:
        return None if self.outputs_connected is None else self.outputs_connected > 0

    @property
    def warnings(self) -> list[str]:
        """Every warning of this report, one line each: layer collapse, then weights kept pruned."""
        regrow = self.regrow_warning
        return self.collapse_warnings + ([regrow] if regrow else [])

    @property
    def regrow_warning(self) -> str | None:
        """Set when the target would have revived already-pruned weights and they were kept pruned."""
        n = int(self.details.get("kept_pruned") or 0)
        if not n:
            return None
        before = self.details.get("pruned_before", 0) / self.total if self.total else 0.0
        return (f"{n:,} already-pruned weights stay pruned: target sparsity {self.target_sparsity:.4g} would revive "
                f"them (the layers were {before:.4g} sparse already; now {self.sparsity:.4g}); allow_regrow "
                f"(--allow-regrow) lets pruned weights return")

    @property
    def collapse_warnings(self) -> list[str]:
        out = []
        if self.collapsed:
            out.append(f"layer collapse: {len(self.collapsed)} layer(s) keep no weights: {', '.join(self.collapsed)}")
        if self.path_intact is False:
            out.append("layer collapse: the output no longer depends on the input (no path survives)")
        elif self.outputs_connected is not None and self.outputs_connected < 1.0:
            out.append(f"partial collapse: only {self.outputs_connected:.1%} of the outputs still depend on the input")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "sparsity": self.sparsity,
            "total": self.total,
            "kept": self.kept,
            "sigma": self.sigma,
            "macs_dense": self.macs_dense,
            "macs_sparse": self.macs_sparse,
            "flops_pruned": self.flops_pruned,
            "collapsed": list(self.collapsed),
            "outputs_connected": self.outputs_connected,
            "warnings": self.warnings,
            "details": self.details,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def format_table(self) -> str:
        """The per-layer table as aligned text, with a totals line."""
        have_macs = any(layer.macs_dense is not None for layer in self.layers)
        head = ["layer", "type", "size", "kept", "sparsity"] + (["MACs", "MACs kept"] if have_macs else [])
        rows = []
        for layer in self.layers:
            row = [layer.name or "(model)", layer.kind + ("" if layer.pruned else " (dense)"), f"{layer.numel:,}",
                   f"{layer.kept:,}", f"{layer.sparsity:.2%}"]
            if have_macs:
                row += [_fmt(layer.macs_dense), _fmt(layer.macs_kept)]
            rows.append(row)
        total = ["total (selected)", "", f"{self.total:,}", f"{self.kept:,}", f"{self.sparsity:.2%}"]
        if have_macs:
            total += [_fmt(self.macs_dense), _fmt(self.macs_sparse)]
        widths = [max(len(r[i]) for r in [head, *rows, total]) for i in range(len(head))]

        def line(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        out = [line(head), line(["-" * w for w in widths]), *map(line, rows), line(total)]
        if self.flops_pruned is not None:
            out.append(f"MACs: dense {self.macs_dense:,}, sparse-aware {self.macs_sparse:,}, "
                       f"FLOPs pruned {self.flops_pruned:.2%} (weight sparsity {self.sparsity:.2%})")
        if self.sigma is not None:
            dense, pinned = self.details.get("mt_dense", []), self.details.get("mt_pinned", [])
            out.append(f"Minimum Threshold: sigma = {self.sigma:,} weights per layer; {len(dense)} layer(s) of "
                       f"<= sigma weights kept dense, {len(pinned)} pinned at sigma"
                       + (f" ({', '.join(pinned[:6])}{', ...' if len(pinned) > 6 else ''})" if pinned else ""))
        out.extend(f"WARNING: {w}" for w in self.warnings)
        return "\n".join(out)


def _fmt(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _layer_macs(model: nn.Module, input_shape: InputSpec | tuple[int, ...]):
    """Per-layer rows and model totals (dense, sparse-aware) from one :func:`prunelab.measure.layer_table`
    pass; the totals equal ``count_macs(model, shape)`` and ``count_macs(model, shape, sparse=True)``."""
    from prunelab.measure import layer_table

    rows = layer_table(model, input_shape if isinstance(input_shape, InputSpec) else tuple(input_shape))
    return {r.name: r for r in rows}, sum(r.macs_dense for r in rows), sum(r.macs_sparse for r in rows)


@torch.no_grad()
def outputs_connected(model: nn.Module, input_shape: InputSpec | tuple[int, ...], trials: int = 4,
                      seed: int = 0) -> float:
    """Fraction of output units that change between random inputs (0.0: the output no longer
    depends on the input, i.e. no input-to-output path survives). Evaluated in eval mode; the
    model's mode is restored."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(input_shape, InputSpec):  # token ids or structured inputs: the spec's own examples
        x = input_shape.example_for(model, trials, seed=seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((trials, *input_shape), generator=gen).to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        out = logits_of(call_model(model, x))
    finally:
        model.train(was_training)
    out = out.reshape(trials, -1)
    varies = (out != out[:1]).any(dim=0)
    return float(varies.float().mean()) if varies.numel() else 0.0


def build_report(model: nn.Module, selected: list[PrunableLayer], *, method: str, target_sparsity: float,
                 input_shape: tuple[int, ...] | None = None, sigma: int | None = None,
                 details: dict[str, Any] | None = None, warn: bool = True,
                 kept: dict[str, int] | None = None) -> PruneReport:
    """Summarise the masks now on ``model``; with ``input_shape`` also MACs and the path check.
    ``kept`` (layer name -> kept count) saves counting masks the caller already counted."""
    chosen = {layer.name for layer in selected}
    stats, macs_dense, macs_sparse = _layer_macs(model, input_shape) if input_shape else ({}, None, None)
    known = kept or {}
    layers, total, kept_total, collapsed = [], 0, 0, []
    for layer in candidate_layers(model):
        mask = get_mask(layer.module)
        n = layer.numel
        if layer.name in known:
            k = known[layer.name]
        else:
            k = int(torch.count_nonzero(mask)) if mask is not None else n
        st = stats.get(layer.name)
        layers.append(LayerReport(layer.name, layer.kind, tuple(layer.weight.shape), n, k, layer.name in chosen,
                                  st.macs_dense if st is not None else None,
                                  st.macs_sparse if st is not None else None))
        if layer.name in chosen:
            total += n
            kept_total += k
            if k == 0:
                collapsed.append(layer.name)
    connected = outputs_connected(model, input_shape) if input_shape else None
    report = PruneReport(method, float(target_sparsity), total, kept_total, layers, sigma, macs_dense, macs_sparse,
                         collapsed, connected, dict(details or {}))
    if warn:
        for message in report.collapse_warnings:
            warnings.warn(message, LayerCollapseWarning, stacklevel=3)
        if report.regrow_warning:
            warnings.warn(report.regrow_warning, RegrowWarning, stacklevel=3)
    return report
