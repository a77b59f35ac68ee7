"""Weight masks without overhead.

A pruned module keeps its ``weight`` parameter as is and gains one boolean buffer ``weight_mask``
(state_dict key ``<module>.weight_mask``). Unlike ``torch.nn.utils.prune`` there is no
``weight_orig`` copy and no forward pre-hook: pruned entries are stored as exact zeros, so the
forward pass costs nothing extra. They stay zero because :class:`MaskCallback` multiplies each
weight by its mask in place after every optimiser step and clears the optimiser state (SGD
momentum, Adam ``exp_avg`` / ``exp_avg_sq``) of pruned entries, the procedure of Gupta et al.
(2022, ``Global MP/prune.py``: masks re-applied after each step), with the momentum leak closed
(momentum and weight decay would otherwise regrow pruned weights between two re-applications).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train.callbacks import Callback

MASK_SUFFIX = "_mask"


def mask_name(param: str) -> str:
    """The mask buffer (or state_dict key) of parameter ``param``: ``weight`` -> ``weight_mask``."""
    return param + MASK_SUFFIX


def masked_name(name: str) -> str | None:
    """The parameter a mask buffer or state_dict key belongs to (``fc.weight_mask`` -> ``fc.weight``);
    None when ``name`` is not a mask."""
    return name[: -len(MASK_SUFFIX)] if name.endswith(MASK_SUFFIX) else None


def carries_masks(names: Iterable[str]) -> bool:
    """Whether any of the buffer or state_dict names ``names`` is a weight mask."""
    return any(masked_name(n) is not None for n in names)


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The boolean mask buffer of ``module.<name>``, or None if the tensor is not masked."""
    return module._buffers.get(mask_name(name))


def set_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight", *, copy: bool = True) -> torch.Tensor:
    """Attach ``mask`` to ``module.<name>`` (or overwrite the existing buffer in place) and zero
    the pruned entries. Returns the buffer. Overwriting in place keeps the buffer object, so
    optimisers and callbacks holding a reference see the new mask. ``copy=False`` lets a new buffer
    take ``mask`` itself (for a fresh tensor nobody else holds)."""
    param = getattr(module, name)
    if mask.numel() != param.numel():
        raise PrunelabError(f"mask of shape {tuple(mask.shape)} does not fit {name} of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool).view(param.shape)
    buf = get_mask(module, name)
    if buf is None:
        module.register_buffer(mask_name(name), mask.clone() if copy else mask, persistent=True)
        buf = get_mask(module, name)
    else:
        buf.copy_(mask)
    with torch.no_grad():
        param.mul_(buf)
    return buf


def ensure_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The mask of ``module.<name>``, attaching an all-True one first if it has none."""
    buf = get_mask(module, name)
    if buf is None:
        param = getattr(module, name)
        module.register_buffer(mask_name(name), torch.ones_like(param, dtype=torch.bool), persistent=True)
        buf = get_mask(module, name)
    return buf


def remove_mask(module: nn.Module, name: str = "weight") -> None:
    """Drop the mask buffer (the weight keeps its zeros)."""
    module._buffers.pop(mask_name(name), None)


def masked_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.nn.Parameter, torch.Tensor]]:
    """Yield ``(module_path, module, param_name, param, mask)`` for every masked parameter."""
    for path, module in model.named_modules():
        for bname, buf in module._buffers.items():
            pname = masked_name(bname)
            if buf is None or pname is None:
                continue
            param = module._parameters.get(pname)
            if isinstance(param, nn.Parameter) and buf.dtype == torch.bool and buf.shape == param.shape:
                yield path, module, pname, param, buf


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
        module.register_buffer(bname, torch.ones_like(param, dtype=torch.bool), persistent=True)
    return model


@torch.no_grad()
def apply_masks_(model: nn.Module) -> nn.Module:
    """Zero every masked entry of ``model`` in place (after loading weights, or any update)."""
    params, masks = [], []
    for _, _, _, param, mask in masked_tensors(model):
        params.append(param)
        masks.append(mask)
    _mul_(params, masks)
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


def _mul_(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    if not tensors:
        return
    try:
        torch._foreach_mul_(tensors, masks)
    except (RuntimeError, TypeError, AttributeError):
        for t, m in zip(tensors, masks):
            t.mul_(m)


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
    _mul_(tensors, masks)


class MaskCallback(Callback):
    """Keep pruned weights exactly zero during training.

    After every optimiser step it multiplies each masked weight by its mask in place and zeroes
    the matching optimiser state entries, so momentum and weight decay cannot regrow them. Masks are
    discovered on the model at ``on_fit_start`` (after the trainer has moved it to its device and
    loaded any resume state); masks changed in place later (gradual pruning) are followed
    automatically. Masks live in the model's state_dict, so resuming needs no callback state.
    """

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []

    def refresh(self, model: nn.Module) -> None:
        """Re-read the masked parameters of ``model`` (call after attaching new masks)."""
        self._params, self._masks = [], []
        for _, _, _, param, mask in masked_tensors(model):
            self._params.append(param)
            self._masks.append(mask)

    @torch.no_grad()
    def enforce(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero pruned weights and their optimiser state now."""
        _mul_(self._params, self._masks)
        if optimizer is not None:
            mask_optimizer_state_(optimizer, zip(self._params, self._masks))

    def on_fit_start(self, trainer) -> None:
        self.refresh(trainer.model)
        self.enforce(getattr(trainer, "optimizer", None))

    def on_step_end(self, trainer) -> None:
        self.enforce(trainer.optimizer)
