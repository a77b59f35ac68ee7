"""Channel gates for Pruning from Scratch (Wang et al. 2020, sec. 3.1; official ``learn_gates.py``).

One learnable scalar per channel of every width unit multiplies that channel right after the unit's
BatchNorm, before the activation, initialised to 1. The gates live in a :class:`GateBank` module
registered on the model (so ``model.to(device)`` moves them) and act through forward hooks on the
BatchNorms, so the model's own modules, parameter names and forward stay untouched and the gates
come off again with :meth:`GateBank.remove`.

A gate of exactly 0 before the ReLU gives ReLU(0) = 0: the channel is dead, with no BN bias
leaking into the next layer (the reference's placement in ``learn_gates.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import WidthUnit
from prunelab.train.callbacks import Callback

BANK_NAME = "pfs_gates"


class GateBank(nn.Module):
    """One gate vector per width unit (``gates[i]`` belongs to ``units[i]``), initialised to ``init``."""

    def __init__(self, units: Sequence[WidthUnit], init: float = 1.0) -> None:
        super().__init__()
        self.units = list(units)
        self.gates = nn.ParameterList([nn.Parameter(torch.full((u.width,), float(init))) for u in self.units])
        self._handles: list = []
        object.__setattr__(self, "_host", None)  # a plain reference, not a registered submodule

    def attach(self, model: nn.Module) -> GateBank:
        """Register the bank on ``model`` and hook every unit's BatchNorm (or its conv when it has none)."""
        if hasattr(model, BANK_NAME):
            raise PrunelabError("model already carries Pruning-from-Scratch gates")
        for i, unit in enumerate(self.units):
            path = unit.bn or unit.conv
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise PrunelabError(f"width unit {unit.name!r} names module {path!r}, which the model lacks") from None
            self._handles.append(module.register_forward_hook(_GateHook(self, i)))
        model.add_module(BANK_NAME, self)
        object.__setattr__(self, "_host", model)
        return self

    def remove(self) -> None:
        """Take the hooks and the bank off the model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._host is not None and getattr(self._host, BANK_NAME, None) is self:
            delattr(self._host, BANK_NAME)
        object.__setattr__(self, "_host", None)

    @torch.no_grad()
    def clamp_(self, lo: float = 0.0, hi: float = 1.0) -> None:
        for g in self.gates:
            g.clamp_(lo, hi)

    def flat(self) -> torch.Tensor:
        """All gates in unit order, as one vector (differentiable)."""
        return torch.cat([g.reshape(-1) for g in self.gates])

    def values(self) -> dict[str, torch.Tensor]:
        """Detached CPU copy of each unit's gates, keyed by unit name."""
        return {u.name: g.detach().cpu().clone() for u, g in zip(self.units, self.gates)}

    def nonzero_fraction(self) -> float:
        """Fraction of gates that are exactly non-zero: the PFS model-selection statistic."""
        with torch.no_grad():
            flat = self.flat()
            return float((flat != 0).sum().item()) / max(1, flat.numel())


class _GateHook:
    """Forward hook multiplying a BatchNorm output (or a unit's gate point) by its gate vector along
    the unit's axis."""

    def __init__(self, bank: GateBank, index: int) -> None:
        self.bank = bank
        self.index = index

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        gate = self.bank.gates[self.index]
        shape = [1] * output.dim()
        shape[self.bank.units[self.index].axis] = -1  # channels (1), heads (1) or Linear features (-1)
        return output * gate.to(output.dtype).view(shape)


def sparsity_penalty(bank: GateBank, lam: float, ratio: float) -> torch.Tensor:
    """lambda * (mean_i |gamma_i| - r)^2 over all gates of all units (Wang et al. 2020, eq. 2)."""
    return lam * (bank.flat().abs().mean() - ratio) ** 2


class GatePenalty(Callback):
    """Adds the sparsity penalty's gradient to the gates after the cross-entropy backward.

    The penalty does not depend on the batch, so backpropagating it separately and letting autograd
    accumulate into ``gate.grad`` gives exactly the gradient of CE + penalty, without a loss hook in
    the trainer. The trainer unscales mixed-precision gradients before ``on_after_backward``, so the
    penalty's gradient is added unscaled.
    """

    def __init__(self, bank: GateBank, lam: float, ratio: float) -> None:
        self.bank = bank
        self.lam = float(lam)
        self.ratio = float(ratio)

    def on_after_backward(self, trainer) -> None:
        if self.lam:
            sparsity_penalty(self.bank, self.lam, self.ratio).backward()


class GateClamp(Callback):
    """Clamp every gate to [0, 1] after each optimiser step (official code, after ``optimizer.step()``)."""

    def __init__(self, bank: GateBank) -> None:
        self.bank = bank

    def on_step_end(self, trainer) -> None:
        self.bank.clamp_(0.0, 1.0)
