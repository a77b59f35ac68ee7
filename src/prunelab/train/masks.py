"""Weight masks as the trainer sees them: the ``<param>_mask`` buffer convention and its enforcement.

A masked parameter ``module.<name>`` has a boolean buffer ``module.<name>_mask`` of the same shape
(state_dict key ``<module>.<name>_mask``); pruned entries are False and stored as exact zeros in the
weight, so the forward pass costs nothing extra. Training would regrow them (gradients, momentum,
weight decay), so the trainer re-applies every mask on the model after each optimiser step and zeroes
the optimiser state (SGD momentum, Adam ``exp_avg`` / ``exp_avg_sq``) of pruned entries: the
procedure of Gupta et al. (2022, ``Global MP/prune.py``: masks re-applied after each step), with the
momentum leak closed. The pruning methods (:mod:`prunelab.prune.unstructured.masks`) build their
masks on these helpers.

The trainer discovers the masks when training starts. A mask attached or removed later through
:func:`attach_mask` / :func:`detach_mask` (which every prunelab pruning helper uses) bumps a
generation counter, so a running trainer picks it up at its next step; masks changed in place
(gradual pruning) are followed anyway, since the trainer holds the buffers themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

MASK_SUFFIX = "_mask"

_generation = 0  # bumped whenever a mask buffer is attached or removed by attach_mask / detach_mask


def mask_name(param_name: str) -> str:
    """The buffer name of ``param_name``'s mask (``weight`` -> ``weight_mask``)."""
    return param_name + MASK_SUFFIX


def masked_name(name: str) -> str | None:
    """The parameter a mask buffer or state_dict key belongs to (``fc.weight_mask`` -> ``fc.weight``);
    None when ``name`` is not a mask."""
    return name[: -len(MASK_SUFFIX)] if name.endswith(MASK_SUFFIX) else None


def carries_masks(names: Iterable[str]) -> bool:
    """Whether any of the buffer or state_dict names ``names`` is a weight mask."""
    return any(masked_name(n) is not None for n in names)


def masks_generation() -> int:
    """A number that changes whenever :func:`attach_mask` or :func:`detach_mask` changes a model's masks."""
    return _generation


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The boolean mask buffer of ``module.<name>``, or None if the tensor is not masked."""
    return module._buffers.get(mask_name(name))


def attach_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """Register ``mask`` (a bool tensor shaped like ``module.<name>``, taken as is) as its mask buffer.

    The weight is not touched; callers zero the pruned entries (:func:`apply_masks_`)."""
    global _generation
    module.register_buffer(mask_name(name), mask, persistent=True)
    _generation += 1
    return module._buffers[mask_name(name)]


def detach_mask(module: nn.Module, name: str = "weight") -> None:
    """Drop the mask buffer of ``module.<name>`` (the weight keeps its zeros)."""
    global _generation
    if module._buffers.pop(mask_name(name), None) is not None:
        _generation += 1


def masked_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter, torch.Tensor]]:
    """Yield ``(module_path, module, param_name, param, mask)`` for every masked parameter: a bool
    ``<param>_mask`` buffer shaped like its parameter (other ``*_mask`` buffers are not masks)."""
    for path, module in model.named_modules():
        for bname, buf in module._buffers.items():
            pname = masked_name(bname)
            if buf is None or pname is None:
                continue
            param = module._parameters.get(pname)
            if isinstance(param, nn.Parameter) and buf.dtype == torch.bool and buf.shape == param.shape:
                yield path, module, pname, param, buf


def mul_(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """``t *= m`` for each pair, in one fused call where the tensors allow it."""
    if not tensors:
        return
    try:
        torch._foreach_mul_(tensors, masks)
    except (RuntimeError, TypeError, AttributeError):
        for t, m in zip(tensors, masks):
            t.mul_(m)


@torch.no_grad()
def apply_masks_(model: nn.Module) -> nn.Module:
    """Zero every masked entry of ``model`` in place (after loading weights, or any update)."""
    pairs = [(param, mask) for _, _, _, param, mask in masked_tensors(model)]
    mul_([p for p, _ in pairs], [m for _, m in pairs])
    return model


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero the optimiser state of pruned entries: every state tensor shaped like its parameter
    (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``...)."""
    tensors, masks = [], []
    state = optimizer.state
    for param, mask in pairs:
        st = state.get(param)
        if not st:
            continue
        for value in st.values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape and value.is_floating_point():
                tensors.append(value)
                masks.append(mask)
    mul_(tensors, masks)


class MaskEnforcer:
    """Keeps the masked entries of one model, and their optimiser state, exactly zero.

    :meth:`refresh` reads the model's masks; :meth:`enforce` zeroes now; :meth:`after_step` is what
    the trainer calls after every optimiser step: it re-reads the masks first if one was attached or
    removed since (see :func:`masks_generation`), and costs one comparison on a dense model;
    :meth:`sync` catches up after callbacks that may have pruned.
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.params: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self._generation = -1

    def refresh(self, model: nn.Module) -> None:
        """Read the masked parameters of ``model`` (call after attaching masks by other means)."""
        self.model = model
        self._generation = _generation
        self.params, self.masks = [], []
        for _, _, _, param, mask in masked_tensors(model):
            self.params.append(param)
            self.masks.append(mask)

    @torch.no_grad()
    def enforce(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights and (with ``optimizer``) their optimiser state now."""
        mul_(self.params, self.masks)
        if optimizer is not None and self.params:
            mask_optimizer_state_(optimizer, zip(self.params, self.masks))

    def after_step(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the pruned weights and their optimiser state (after an optimiser step)."""
        if self._generation != _generation and self.model is not None:
            self.refresh(self.model)
        if self.params:
            self.enforce(optimizer)

    def sync(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Enforce at once if a mask was attached or removed since the masks were read (after the
        callbacks of an epoch start or a step, which may prune), else do nothing."""
        if self._generation != _generation and self.model is not None:
            self.refresh(self.model)
            self.enforce(optimizer)
