"""Pruning from Scratch (Wang et al., AAAI 2020): structures learned on a random, frozen network.

Three stages, as in the official code (``frankwang345/pruning-from-scratch``: ``learn_gates.py``,
``prune_model.py``, ``train_pruned.py``):

1. :func:`learn_gates`: channel gates (one scalar per channel of every width unit, after its BN,
   before the activation, initialised to 1) are the only parameters trained, on a randomly
   initialised network whose weights and BN affine parameters stay frozen. Loss
   CE + lambda * (mean|gamma| - r)^2, Adam lr 0.01, gates clamped to [0, 1] after every step.
   Model selection on a held-out split carved from the training data: the best held-out accuracy
   among epochs whose fraction of exactly non-zero gates is <= r, else the last epoch's gates.
2. :func:`select_structure`: a global top-k over all gates (no per-layer normalisation), with the
   number kept found by bisection so the structure's MACs hit the budget, measured against the
   *unexpanded* default model, as the reference's ``full_flops``. Departures from the reference code
   (found by running it): the search
   is an exact bisection on the kept count and returns its best step rather than its last, every
   unit keeps at least one channel, and a budget no legal structure meets is an error.
3. :func:`pruning_from_scratch`: the selected widths as an :class:`ArchSpec`, trained from scratch
   with the Scratch-B budget (epochs x default MACs / pruned MACs).

The expansion factor ``e`` widens the network the gates are learned on (the reference's ``-e``,
e.g. VGG 64 -> 80 channels is ``expansion=1.25``); widths the gates do not cover (e.g. CIFAR
ResNet residual streams) stay expanded in the pruned structure, as in the reference.
``init_from`` learns the same gates on a *trained* network instead, for the paper's comparison.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, WidthUnit, create, get_family, resolve, width_units
from prunelab.models.widths import with_unit_widths
from prunelab.protocols.build import data_inputs, fit_spec_to_data
from prunelab.protocols.gates import GateBank, GateClamp, GatePenalty
from prunelab.protocols.targets import Measurer, format_metric
from prunelab.schema import option
from prunelab.train.callbacks import Callback
from prunelab.train.progress import stage

#: gate-learning epochs (the reference learns gates for 10 on CIFAR); more is a typo, not a recipe
MAX_GATE_EPOCHS = 10_000


@dataclass
class PFSConfig:
    """Gate-learning settings; defaults are the reference's CIFAR values (``learn_gates.py``).

    ``ratio`` is r, the target mean gate value; ``lam`` the penalty weight lambda; ``holdout`` the
    fraction of the training split held out for model selection (45k / 5k on CIFAR-10);
    ``expansion`` the width factor of the network the gates are learned on (``expansion_mode``: which
    widths it scales, see :func:`expanded_spec`); ``tol`` the relative tolerance of the MACs budget
    in structure selection.
    """

    lam: float = option(0.5, "penalty weight lambda", lo=0.0)
    ratio: float = option(0.2, "target mean gate r", lo=0.0, lo_open=True, hi=1.0)
    epochs: int = option(10, f"epochs of gate learning, 1 to {MAX_GATE_EPOCHS:,} (--max-steps does not cut them)",
                         lo=1, hi=MAX_GATE_EPOCHS, flag="--gate-epochs", dest="gate_epochs")
    lr: float = option(0.01, "gate learning rate", lo=0.0, lo_open=True, flag="--gate-lr", dest="gate_lr")
    batch_size: int = option(128, "gate learning batch size", lo=1, flag="--gate-batch-size",
                             dest="gate_batch_size")
    holdout: float = option(0.1, "fraction of the training split held out for gate model selection", lo=0.0,
                            hi=1.0, hi_open=True)
    expansion: float = option(1.0, "width factor of the network the gates are learned on (the reference's -e; 1 is "
                              "the zoo width)", lo=0.0, lo_open=True)
    expansion_mode: str = option("auto", "which widths the expansion scales", choices=lambda: EXPANSION_MODES)
    tol: float = option(0.01, "relative tolerance of the MACs budget", lo=0.0, lo_open=True, hi=1.0, hi_open=True,
                        flag="--tol", dest="budget_tol")

    def validate(self) -> PFSConfig:
        if not self.lam >= 0:
            raise PrunelabError(f"PFS lambda must be >= 0, got {self.lam}")
        if not 0.0 < self.ratio <= 1.0:
            raise PrunelabError(f"PFS sparsity ratio r must lie in (0, 1], got {self.ratio}")
        if self.epochs < 1:
            raise PrunelabError(f"PFS gate learning needs at least 1 epoch, got {self.epochs}")
        if self.epochs > MAX_GATE_EPOCHS:  # gate learning runs its epochs whatever --max-steps says
            raise PrunelabError(f"PFS gate learning takes at most {MAX_GATE_EPOCHS:,} epochs, got {self.epochs}")
        if not self.lr > 0:
            raise PrunelabError(f"PFS gate learning rate must be positive, got {self.lr}")
        if not 0.0 <= self.holdout < 1.0:
            raise PrunelabError(f"PFS held-out fraction must lie in [0, 1), got {self.holdout}")
        if not (math.isfinite(self.expansion) and self.expansion > 0):
            raise PrunelabError(f"PFS expansion factor must be positive, got {self.expansion}")
        check_choice("expansion mode", self.expansion_mode, EXPANSION_MODES)
        if not 0.0 < self.tol < 1.0:
            raise PrunelabError(f"PFS budget tolerance must lie in (0, 1), got {self.tol}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- stage 1


class GateSelection(Callback):
    """The reference's model selection: after each epoch, held-out accuracy and the fraction of
    exactly non-zero gates; keep the best-accuracy gates among epochs with that fraction <= r."""

    def __init__(self, bank: GateBank, ratio: float) -> None:
        self.bank = bank
        self.ratio = float(ratio)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_acc = -math.inf

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        acc = metrics.get("val_acc")
        if acc is None:
            acc = trainer.evaluate("val")["acc"]
        acc = float(acc)
        flat = self.bank.flat().detach()
        nonzero = float((flat != 0).float().mean())
        epoch = int(metrics.get("epoch", trainer.epoch + 1))  # 1-based, as the trainer's history
        row = {"epoch": epoch, "heldout_acc": acc, "nonzero_fraction": nonzero,
               "mean_gate": float(flat.abs().mean())}
        self.history.append(row)
        if nonzero <= self.ratio and acc > self.best_acc:
            self.best_acc = acc
            self.best_epoch = epoch
            self.best = self.bank.values()


@dataclass
class GateLearning:
    """Learned gates (selected per the PFS rule), the expanded spec they belong to, and a log."""

    spec: ArchSpec
    default: ArchSpec
    units: list[WidthUnit]
    gates: dict[str, torch.Tensor]
    selected_epoch: int
    selected_by: str  # "heldout" (rule satisfied) or "last"
    history: list[dict[str, Any]] = field(default_factory=list)
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        flat = torch.cat([g.reshape(-1) for g in self.gates.values()]) if self.gates else torch.zeros(0)
        return {
            "arch": self.spec.to_dict(),
            "default_arch": self.default.to_dict(),
            "init_from": self.init_from,
            "selected_epoch": self.selected_epoch,
            "selected_by": self.selected_by,
            "nonzero_fraction": float((flat != 0).float().mean()) if flat.numel() else 0.0,
            "mean_gate": float(flat.abs().mean()) if flat.numel() else 0.0,
            "history": self.history,
        }


#: How the reference's ``-e`` widens a family is the family's ``expansion`` hook: CIFAR ResNets
#: widen the residual stream with the gated widths; MobileNet-V2 and ImageNet ResNets widen only the
#: gated (hidden / internal) widths, their backbone being ``-m``. Families not in the reference widen
#: their gated widths only (the default), so the pruned structure keeps the default backbone.
EXPANSION_MODES = ("auto", "width", "bottleneck")


def expanded_spec(spec: ArchSpec, expansion: float, mode: str = "auto") -> ArchSpec:
    """``spec`` widened by the PFS expansion factor: all widths (``width``), or only the gated
    width units (``bottleneck``); ``auto`` picks the reference's choice for the family."""
    check_choice("expansion mode", mode, EXPANSION_MODES)
    if expansion == 1.0:
        return spec
    from prunelab.protocols.reduced import scale_bottleneck, scale_width

    if mode == "auto":
        mode = get_family(spec.family).expansion
    return scale_width(spec, expansion) if mode == "width" else scale_bottleneck(spec, expansion)


def holdout_split(data: DataBundle, fraction: float, seed: int = 0) -> DataBundle:
    """A bundle whose ``val`` is carved from ``data.train`` (stratified, seeded) and whose ``train``
    is the rest: the reference's 45k / 5k CIFAR-10 split for gate selection. With ``fraction`` 0 the
    bundle's own validation split is used (it must not be empty)."""
    if fraction == 0:
        if len(data.val) == 0:
            raise PrunelabError("PFS model selection needs held-out data: set holdout > 0 or use a dataset "
                                "with a validation split")
        return data
    from prunelab.data.splits import stratified_split

    keep, held = stratified_split(data.train.labels().cpu().numpy(), fraction, seed)
    if len(held) == 0 or len(keep) == 0:
        raise PrunelabError(f"held-out fraction {fraction} of {len(data.train)} training samples leaves an empty split")
    # A streamed split carves both parts without reading any sample; the held-out part is read as
    # evaluation data (no random augmentation), as the reference evaluates its held-out images.
    train, val = data.train.select(keep), data.train.select(held, evaluation=True)
    return dataclasses.replace(data, train=train, val=val,
                               info={**data.info, "pfs_holdout": {"fraction": fraction, "held_out": len(held)}})


def gate_train_config(base, pfs: PFSConfig):
    """The reference's gate-learning recipe on top of ``base`` (device, seed, augmentation, AMP):
    Adam at ``pfs.lr``, no weight decay, constant learning rate, ``pfs.epochs`` epochs. The trainer
    evaluates its splits only after the last epoch; model selection evaluates the held-out split
    itself after every epoch."""
    from prunelab.train.config import TrainConfig

    base = base if base is not None else TrainConfig()
    return dataclasses.replace(base, epochs=pfs.epochs, batch_size=pfs.batch_size, optimizer="adam", lr=pfs.lr,
                               weight_decay=0.0, no_wd_bn_bias=False, schedule="constant", milestones=[],
                               warmup_epochs=0.0, label_smoothing=0.0, max_steps=None, eval_every=pfs.epochs,
                               checkpoint=None, resume=False).validate()


def freeze(model: nn.Module) -> None:
    """Take every parameter out of autograd: the backward then computes no weight gradients at all,
    only the activation gradients the gates need (the reference's ``learn_gates.py`` optimises the gates
    alone; frozen weights also keep weight decay and BatchNorm affine updates out)."""
    for p in model.parameters():
        p.requires_grad_(False)


def learn_gates(spec: str | ArchSpec | dict, data: DataBundle, pfs: PFSConfig | None = None, train_config=None, *,
                init_from: str | None = None, model: nn.Module | None = None,
                callbacks=()) -> tuple[GateLearning, nn.Module]:
    """Stage 1: learn channel gates on a frozen network; returns the selected gates and the network.

    ``spec`` is the default (unexpanded) architecture; the gates are learned on it widened by
    ``pfs.expansion`` and randomly initialised with ``train_config.seed``. ``init_from`` (a prunelab
    checkpoint of a *trained* network of the same family) learns them on that network instead;
    ``model`` passes an already built network of the expanded spec (e.g. for benchmarks).
    The returned network carries no gates, has the weights it started with and stays frozen
    (``requires_grad`` off); its BatchNorm running statistics moved, as in the reference.
    """
    from prunelab.train import Trainer

    pfs = (pfs or PFSConfig()).validate()
    config = gate_train_config(train_config, pfs)
    default = fit_spec_to_data(resolve(spec), data)
    learned_spec = expanded_spec(default, pfs.expansion, pfs.expansion_mode)
    if init_from is not None:
        from prunelab.checkpoint import load_model

        loaded = load_model(init_from)
        if loaded.plan:
            raise PrunelabError(f"checkpoint {init_from} is already channel-pruned; PFS gates need an unpruned network")
        _check_init_from(init_from, loaded.spec, default, pfs, data)
        model, learned_spec = loaded.model, loaded.spec
    elif model is None:
        torch.manual_seed(int(config.seed))
        model = create(learned_spec)
    units = list(width_units(model, learned_spec))
    if not units:
        raise PrunelabError(f"{learned_spec.family} declares no width units to gate")
    freeze(model)
    bank = GateBank(units).attach(model)
    selection = GateSelection(bank, pfs.ratio)
    gate_data = holdout_split(data, pfs.holdout, config.seed)
    try:
        trainer = Trainer(model, gate_data, config, params=list(bank.parameters()),
                          callbacks=(GatePenalty(bank, pfs.lam, pfs.ratio), GateClamp(bank), selection,
                                     *callbacks))
        trainer.fit()
        if selection.best is not None:
            gates, epoch, by = selection.best, int(selection.best_epoch), "heldout"
        else:
            gates, by = bank.values(), "last"
            epoch = selection.history[-1]["epoch"] if selection.history else 0
    finally:
        bank.remove()
    learning = GateLearning(learned_spec, default, units, gates, epoch, by, selection.history,
                            str(init_from) if init_from is not None else None)
    return learning, trainer.model


# --------------------------------------------------------------------------------------- stage 2


@dataclass
class Structure:
    """The architecture picked from the gates: widths per unit, its MACs and the search log."""

    spec: ArchSpec
    widths: dict[str, int]
    kept: int
    total: int
    macs: int
    budget_macs: float
    reference_macs: int
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        """MACs of the structure / MACs of the unexpanded default model."""
        return self.macs / self.reference_macs

    @property
    def rel_error(self) -> float:
        return self.macs / self.budget_macs - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.spec.to_dict(),
            "widths": self.widths,
            "kept_gates": self.kept,
            "total_gates": self.total,
            "kept_fraction": self.kept / self.total if self.total else 0.0,
            "macs": self.macs,
            "budget_macs": self.budget_macs,
            "reference_macs": self.reference_macs,
            "macs_ratio": self.macs_ratio,
            "rel_error": self.rel_error,
            "steps": self.steps,
        }


def budget_macs(default: ArchSpec, input_shape: tuple[int, ...], *, macs_ratio: float | None = None,
                macs: float | None = None) -> tuple[float, int]:
    """The MACs budget and the default model's MACs: ``macs_ratio`` x MACs of the unexpanded default
    model, or an absolute ``macs`` count (exactly one of the two)."""
    if (macs_ratio is None) == (macs is None):
        raise PrunelabError("give exactly one PFS budget: a MACs ratio of the default model, or a MACs count")
    reference = int(Measurer("macs", input_shape)(default))
    if macs_ratio is not None:
        if not 0.0 < macs_ratio <= 1.0:
            raise PrunelabError(f"MACs ratio must lie in (0, 1], got {macs_ratio}")
        return float(macs_ratio) * reference, reference
    if not macs > 0:
        raise PrunelabError(f"MACs budget must be positive, got {macs}")
    return float(macs), reference


def widths_for_kept(order_unit: torch.Tensor, n_units: int, k: int) -> list[int]:
    """Per-unit channel counts when the ``k`` largest gates are kept (``order_unit`` = unit id of each
    gate in descending gate order), with at least one channel per unit."""
    counts = torch.bincount(order_unit[:k], minlength=n_units) if k > 0 else torch.zeros(n_units, dtype=torch.long)
    return [max(1, int(c)) for c in counts]


def select_structure(spec: ArchSpec, units: list[WidthUnit], gates: dict[str, torch.Tensor], budget: float,
                     reference_macs: int, input_shape: tuple[int, ...], *, tol: float = 0.01) -> Structure:
    """Stage 2: global top-k over all gates, bisection on the kept count to meet ``budget`` MACs.

    Gates are ranked together across units (ties broken by position, so the result is repeatable);
    unit widths are the kept counts (at least 1), written into ``spec`` (the expanded architecture
    the gates were learned on). MACs grow with the kept count, so the bisection is exact; the
    returned structure is the evaluated step closest to the budget, within ``tol`` relative.
    """
    missing = [u.name for u in units if u.name not in gates]
    if missing:
        raise PrunelabError(f"no gates for width unit(s) {missing[:5]}")
    for u in units:
        if gates[u.name].numel() != u.width:
            raise PrunelabError(f"unit {u.name!r} has {u.width} channels but {gates[u.name].numel()} gates")
    flat = torch.cat([gates[u.name].detach().float().reshape(-1).cpu() for u in units])
    unit_id = torch.cat([torch.full((u.width,), i, dtype=torch.long) for i, u in enumerate(units)])
    order = torch.sort(flat, descending=True, stable=True).indices
    order_unit = unit_id[order]
    total = int(flat.numel())
    measure = Measurer("macs", input_shape)
    steps: list[dict[str, Any]] = []
    cache: dict[int, tuple[ArchSpec, list[int], float]] = {}

    def probe(k: int) -> float:
        if k not in cache:
            widths = widths_for_kept(order_unit, len(units), k)
            s = with_unit_widths(spec, widths, units)
            cache[k] = (s, widths, measure(s))
            steps.append({"kept": k, "kept_fraction": k / total, "macs": int(cache[k][2])})
        return cache[k][2]

    _check_range(budget, reference_macs, probe(0), probe(total), tol)
    lo, hi = 0, total  # invariant: probe(lo) < budget <= probe(hi), or an end point is already within tol
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid) < budget:
            lo = mid
        else:
            hi = mid
    best_k = min(cache, key=lambda k: (abs(cache[k][2] / budget - 1.0), cache[k][2]))
    best_spec, best_widths, best_macs = cache[best_k]
    if abs(best_macs / budget - 1.0) > tol:
        raise PrunelabError(
            f"no structure lands within {tol:.1%} of the MACs budget {format_metric('macs', budget)}: the nearest "
            f"keeps {best_k} of {total} gates for {format_metric('macs', best_macs)} "
            f"({best_macs / budget - 1.0:+.1%}); one channel changes MACs by more than the tolerance")
    widths = {u.name: w for u, w in zip(units, best_widths)}
    return Structure(best_spec, widths, best_k, total, int(best_macs), float(budget), int(reference_macs), steps)


# --------------------------------------------------------------------------------------- stage 3


@dataclass
class PFSResult:
    learning: GateLearning
    structure: Structure
    scratch: Any | None  # prunelab.protocols.scratch.ScratchResult, None when not trained

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "pfs",
            "gates": self.learning.to_dict(),
            "structure": self.structure.to_dict(),
            "scratch": self.scratch.to_dict() if self.scratch is not None else None,
        }


def _check_init_from(path, gated: ArchSpec, default: ArchSpec, pfs: PFSConfig, data: DataBundle) -> None:
    """The trained network must be the default model itself (same family and constructor settings,
    fitted to the same data): the MACs budget and Scratch-B are computed on ``default``, and the
    gates are learned on the checkpoint's own widths, so an expansion cannot apply."""
    if gated.family != default.family:
        raise PrunelabError(f"checkpoint {path} is a {gated.family} network, not {default.family}")
    fitted = fit_spec_to_data(gated, data)
    if fitted != gated:
        diff = {k: (gated.kwargs.get(k), v) for k, v in fitted.kwargs.items() if gated.kwargs.get(k) != v}
        raise PrunelabError(f"checkpoint {path} does not fit dataset {data.name}: (checkpoint, data) {diff}")
    if gated != default:
        keys = sorted(set(gated.kwargs) | set(default.kwargs))
        diff = {k: (gated.kwargs.get(k), default.kwargs.get(k)) for k in keys
                if gated.kwargs.get(k) != default.kwargs.get(k)}
        raise PrunelabError(f"checkpoint {path} is not the {default.family} model asked for: (checkpoint, model) "
                            f"{diff}")
    if pfs.expansion != 1.0:
        raise PrunelabError(f"--expansion {pfs.expansion:g} does not apply with --init-from: the gates are learned "
                            f"on the trained network's own widths")


def pruning_from_scratch(spec: str | ArchSpec | dict, data: DataBundle, train_config, pfs: PFSConfig | None = None,
                         *, macs_ratio: float | None = None, macs: float | None = None, init_from: str | None = None,
                         budget: str = "B", train: bool = True, gate_config=None) -> PFSResult:
    """The whole PFS pipeline: learn gates, select a structure at the MACs budget, train it from
    scratch (Scratch-B by default: epochs x default MACs / pruned MACs).

    ``train_config`` is the recipe of the dense model (stage 3); ``gate_config`` (default: the same)
    supplies device, seed and augmentation to stage 1, whose optimiser settings come from ``pfs``.
    """
    from prunelab.protocols.scratch import PrunedArchitecture, train_from_scratch

    pfs = (pfs or PFSConfig()).validate()
    default = fit_spec_to_data(resolve(spec), data)
    shape = data_inputs(data)
    target, reference = budget_macs(default, shape, macs_ratio=macs_ratio, macs=macs)
    # Fail on an impossible budget before spending the gate-learning epochs.
    if init_from is not None:
        from prunelab.io import load_checkpoint

        gated = ArchSpec.from_dict(load_checkpoint(init_from)["arch"])
        _check_init_from(init_from, gated, default, pfs, data)
    else:
        gated = expanded_spec(default, pfs.expansion, pfs.expansion_mode)
    _check_budget_reachable(gated, target, reference, shape, pfs.tol)
    with stage(f"learning channel gates (epochs: {pfs.epochs})"):
        learning, _ = learn_gates(default, data, pfs, gate_config if gate_config is not None else train_config,
                                  init_from=init_from)
    with stage("selecting the structure at the MACs budget"):
        structure = select_structure(learning.spec, learning.units, learning.gates, target, reference, shape,
                                     tol=pfs.tol)
    scratch = None
    if train:
        arch = PrunedArchitecture(structure.spec, None, default, "pfs")
        with stage(f"training the selected structure from scratch (Scratch-{budget})"):
            scratch = train_from_scratch(arch, data, train_config, budget=budget)
    return PFSResult(learning, structure, scratch)


def _check_budget_reachable(spec: ArchSpec, budget: float, reference: int, shape: tuple[int, ...], tol: float) -> None:
    with torch.random.fork_rng(devices=[]):
        units = list(width_units(create(spec), spec))
    measure = Measurer("macs", shape)
    smallest = measure(with_unit_widths(spec, [1] * len(units), units))
    largest = measure(spec)
    _check_range(budget, reference, smallest, largest, tol)


def _check_range(budget: float, reference: int, smallest: float, largest: float, tol: float) -> None:
    if smallest > budget * (1 + tol):
        raise PrunelabError(
            f"MACs budget {format_metric('macs', budget)} ({budget / reference:.1%} of the default model) is "
            f"below the smallest legal structure (one channel per unit): {format_metric('macs', smallest)}")
    if largest < budget * (1 - tol):
        raise PrunelabError(
            f"MACs budget {format_metric('macs', budget)} ({budget / reference:.1%} of the default model) is "
            f"above the full gated network: {format_metric('macs', largest)}; raise the expansion factor")
