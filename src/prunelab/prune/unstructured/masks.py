"""Weight masks without overhead.

A pruned module keeps its ``weight`` parameter as is and gains one boolean buffer ``weight_mask``
(state_dict key ``<module>.weight_mask``). Unlike ``torch.nn.utils.prune`` there is no
``weight_orig`` copy and no forward pre-hook: pruned entries are stored as exact zeros, so the
forward pass costs nothing extra. They stay zero because the trainer re-applies every mask on the
model after each optimiser step and clears the optimiser state (SGD momentum, Adam ``exp_avg`` /
``exp_avg_sq``) of pruned entries (:mod:`prunelab.train.masks`, which owns the buffer convention),
the procedure of Gupta et al. (2022, ``Global MP/prune.py``: masks re-applied after each step), with
the momentum leak closed. :class:`MaskCallback` does the same in a training loop of your own.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train.callbacks import Callback
from prunelab.train.masks import (
    MASK_SUFFIX,
    MaskEnforcer,
    apply_masks_,
    attach_mask,
    carries_masks,
    detach_mask,
    get_mask,
    mask_name,
    mask_optimizer_state_,
    masked_name,
    masked_tensors,
)

__all__ = ["MASK_SUFFIX", "MaskCallback", "apply_masks_", "attach_masks_from_state_dict", "carries_masks",
           "ensure_mask", "get_mask", "mask_counts", "mask_name", "mask_optimizer_state_", "masked_name",
           "masked_tensors", "remove_mask", "set_mask", "strip"]


def set_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight", *, copy: bool = True) -> torch.Tensor:
    """Attach ``mask`` to ``module.<name>`` (or overwrite the existing buffer in place) and zero
    the pruned entries. Returns the buffer. Overwriting in place keeps the buffer object, so
    optimisers and trainers holding a reference see the new mask. ``copy=False`` lets a new buffer
    take ``mask`` itself (for a fresh tensor nobody else holds)."""
    param = getattr(module, name)
    if mask.numel() != param.numel():
        raise PrunelabError(f"mask of shape {tuple(mask.shape)} does not fit {name} of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool).view(param.shape)
    buf = get_mask(module, name)
    if buf is None:
        buf = attach_mask(module, mask.clone() if copy else mask, name)
    else:
        buf.copy_(mask)
    with torch.no_grad():
        param.mul_(buf)
    return buf


def ensure_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The mask of ``module.<name>``, attaching an all-True one first if it has none."""
    buf = get_mask(module, name)
    if buf is None:
        buf = attach_mask(module, torch.ones_like(getattr(module, name), dtype=torch.bool), name)
    return buf


def remove_mask(module: nn.Module, name: str = "weight") -> None:
    """Drop the mask buffer (the weight keeps its zeros)."""
    detach_mask(module, name)


def attach_masks_from_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Register (all-True) mask buffers for every ``<module>.<param>_mask`` key of ``state_dict``
    so that ``load_state_dict(strict=True)`` can then fill them in. Keys for masks the model
    already has, or whose owner has no such parameter (another component's ``*_mask`` buffers),
    are left alone. A mask whose shape does not fit its parameter raises :class:`PrunelabError`."""
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        if masked_name(key) is None:
            continue
        path, _, bname = key.rpartition(".")
        module = modules.get(path)
        pname = masked_name(bname)
        if module is None or bname in module._buffers:
            continue
        param = module._parameters.get(pname)
        if not isinstance(param, nn.Parameter):
            continue
        if tuple(value.shape) != tuple(param.shape):
            raise PrunelabError(
                f"checkpoint mask {key} has shape {tuple(value.shape)} but {path}.{pname} has {tuple(param.shape)}"
            )
        attach_mask(module, torch.ones_like(param, dtype=torch.bool), pname)
    return model


def strip(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A plain model: masks applied (zeros in the weights) and every mask buffer removed.

    The result loads into a freshly built model of the same architecture without any prunelab
    code. ``inplace=False`` (default) leaves ``model`` untouched and returns a copy.
    """
    out = model if inplace else copy.deepcopy(model)
    apply_masks_(out)
    for _, module, pname, _, _ in list(masked_tensors(out)):
        remove_mask(module, pname)
    return out


def mask_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{"<module>.<param>": (numel, kept)}`` for every masked parameter."""
    out = {}
    for path, _, pname, param, mask in masked_tensors(model):
        key = f"{path}.{pname}" if path else pname
        out[key] = (param.numel(), int(torch.count_nonzero(mask)))
    return out


class MaskCallback(Callback):
    """Keep pruned weights exactly zero in a training loop of your own.

    :class:`prunelab.train.Trainer` enforces every mask on its model by itself, so it needs no
    callback (one passed to it stands aside). In another loop, call ``on_fit_start(trainer)`` once
    and ``on_step_end(trainer)`` after every optimiser step, where ``trainer`` has ``model`` and
    ``optimizer`` attributes: each masked weight is multiplied by its mask in place and the matching
    optimiser state entries are zeroed, so momentum and weight decay cannot regrow them. Masks
    changed in place later (gradual pruning) are followed automatically.
    """

    def __init__(self) -> None:
        self.enforcer = MaskEnforcer()
        self._active = True

    def refresh(self, model: nn.Module) -> None:
        """Re-read the masked parameters of ``model`` (call after attaching new masks)."""
        self.enforcer.refresh(model)

    def enforce(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero pruned weights and their optimiser state now."""
        self.enforcer.enforce(optimizer)

    def on_fit_start(self, trainer) -> None:
        # the prunelab Trainer holds its own MaskEnforcer: enforcing twice per step would only cost time
        self._active = not isinstance(getattr(trainer, "masks", None), MaskEnforcer)
        self.refresh(trainer.model)
        self.enforce(getattr(trainer, "optimizer", None))

    def on_step_end(self, trainer) -> None:
        if self._active:
            self.enforcer.after_step(trainer.optimizer)
