"""Importance scores for unstructured pruning: larger means more worth keeping.

* magnitude ``|w|``: Global MP and layer-wise MP (Gupta et al. 2022, sec. 3).
* random: uniform scores from a seeded generator, the baseline of the Global MP paper and of
  ShrinkBench (Blalock et al. 2020).
* SNIP connection sensitivity ``|w * dL/dw|`` on a batch at initialisation (Lee et al. 2019,
  eq. 6; their normalisation by the sum does not change the ranking and is omitted).

Every score function writes non-negative scores for one layer into a flat float buffer; entries
that are already pruned are then set to ``-inf`` by the caller so they rank below every surviving
weight (masks stay nested when sparsity only grows, and re-pruning at the same sparsity is
idempotent even where surviving weights tie with pruned zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.prune.unstructured.masks import get_mask
from prunelab.prune.unstructured.selection import PrunableLayer

CRITERIA = ("magnitude", "random", "snip")

ScoreFn = Callable[[PrunableLayer, torch.Tensor], None]


def magnitude_scores() -> ScoreFn:
    def write(layer: PrunableLayer, out: torch.Tensor) -> None:
        torch.abs(layer.weight.detach().reshape(-1), out=out)

    return write


def random_scores(seed: int = 0) -> ScoreFn:
    """Uniform [0, 1) scores; one generator for all layers in order, so a seed fixes the masks."""
    gen: dict[torch.device, torch.Generator] = {}

    def write(layer: PrunableLayer, out: torch.Tensor) -> None:
        if out.device not in gen:
            gen[out.device] = torch.Generator(device=out.device).manual_seed(int(seed))
        out.copy_(torch.rand(out.numel(), generator=gen[out.device], device=out.device, dtype=out.dtype))

    return write


def snip_scores(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> ScoreFn:
    """SNIP sensitivities ``|w * g|`` with ``g`` the gradient of the loss on the batch ``(x, y)``.

    ``loss_fn(output, y)``: a callable or a registered loss name (classification cross-entropy by
    default; the model's output may be a tuple, dict or ``ModelOutput``, see :mod:`prunelab.train.losses`).

    Gradients are taken in training mode (as SNIP does, BatchNorm with batch statistics) and the
    model's previous mode, gradients and BatchNorm running statistics are restored afterwards.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise PrunelabError(f"SNIP needs a non-empty batch with as many labels as inputs, "
                            f"got {x.shape[0]} / {y.shape[0]}")
    if loss_fn is None or isinstance(loss_fn, str):
        from prunelab.train.losses import get_loss

        loss_fn = get_loss(loss_fn)
    device = layers[0].weight.device
    was_training = model.training
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    weights = [layer.weight for layer in layers]
    try:
        model.train()
        loss = loss_fn(model(x.to(device)), y.to(device))
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        model.train(was_training)
        model.load_state_dict(bn_state, strict=False)
        for p in model.parameters():
            p.grad = saved_grads[id(p)]
    by_layer = {id(layer.module): g for layer, g in zip(layers, grads)}

    def write(layer: PrunableLayer, out: torch.Tensor) -> None:
        g = by_layer.get(id(layer.module))
        if g is None:
            out.zero_()
            return
        torch.abs((layer.weight.detach() * g).reshape(-1), out=out)

    return write


def criterion(name: str, *, seed: int = 0, model: nn.Module | None = None, layers=None, batch=None,
              loss_fn=None) -> ScoreFn:
    """Build the score function ``name`` (one of :data:`CRITERIA`)."""
    if name == "magnitude":
        return magnitude_scores()
    if name == "random":
        return random_scores(seed)
    if name == "snip":
        if batch is None or model is None or layers is None:
            raise PrunelabError("SNIP needs the model and a batch (x, y) of training data")
        return snip_scores(model, layers, batch[0], batch[1], loss_fn)
    raise unknown_choice("criterion", name, CRITERIA)


def score_buffer(layers: Sequence[PrunableLayer], score: ScoreFn) -> tuple[torch.Tensor, list[int]]:
    """All layers' scores concatenated in one flat float buffer (one pass over the weights), with
    already-pruned entries at ``-inf``. Returns the buffer and the layer offsets (len = layers + 1)."""
    offsets = [0]
    for layer in layers:
        offsets.append(offsets[-1] + layer.numel)
    w0 = layers[0].weight
    dtype = torch.promote_types(w0.dtype, torch.float32) if w0.is_floating_point() else torch.float32
    buf = torch.empty(offsets[-1], dtype=dtype, device=w0.device)
    for layer, a, b in zip(layers, offsets, offsets[1:]):
        part = buf[a:b]
        score(layer, part)
        mask = get_mask(layer.module)
        if mask is not None:
            part.masked_fill_(~mask.reshape(-1), float("-inf"))
    if torch.isnan(buf.max()):
        bad = next(layer.name for layer, a, b in zip(layers, offsets, offsets[1:]) if torch.isnan(buf[a:b]).any())
        raise PrunelabError(f"scores of layer {bad!r} contain NaN (diverged weights?); cannot prune")
    return buf, offsets
