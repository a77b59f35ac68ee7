"""The structured pruner: groups, masks, scores, selection and targets of one pruning run.

Python use (three lines, as the CLI does)::

    pruner = StructuredPruner(model, StructuredConfig(criterion="fisher", target=Target("params", 5e4)),
                              input_shape=(3, 32, 32), spec=spec)
    train(model, data, finetune_config, callbacks=[pruner.callback()])   # iterative (Crowley et al.)
    small, plan = pruner.compress(), pruner.plan()

or ``pruner.prune_oneshot(data)`` then fine-tune the compressed model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.inputs import as_input_spec
from prunelab.prune.structured.compress import compress
from prunelab.prune.structured.cost import CostModel
from prunelab.prune.structured.criterion import (
    accumulate,
    all_reduce_mean,
    criterion_names,
    get_criterion,
    make_criterion,
)
from prunelab.prune.structured.groups import SCOPES, GroupSet, find_groups
from prunelab.prune.structured.masks import ChannelMasks
from prunelab.prune.structured.plan import make_plan
from prunelab.prune.structured.schedule import IterativePruning
from prunelab.prune.structured.select import removal_order, select, uniform_ties
from prunelab.prune.structured.targets import Target, measure_latency_ms
from prunelab.schema import check_fields, option
from prunelab.train.progress import stage

SCHEDULES = ("iterative", "oneshot")
COST_METRICS = ("macs", "params")


@dataclass
class StructuredConfig:
    """Settings of a structured pruning run (defaults: the seeds' Fisher regime, Crowley et al. 2018).

    ``criterion``: a registered criterion (:func:`~prunelab.prune.structured.criterion_names`).
    ``prune_every`` (K) training steps between prunes (and batches of a one-shot data pass);
    ``channels_per_prune`` (n) channels removed at each; ``fisher_beta`` weights the cost term of
    criteria that take one (Theis et al., eq. 7; 0 = reference code); ``round_to`` keeps widths at
    multiples of 8 or 16; ``finetune_steps`` continues fine-tuning after the target is reached
    (iterative schedule); ``checkpoint_every`` calls the checkpoint hook every N prunes;
    ``min_channels`` is the fewest channels (heads, for a heads group) every group keeps: a whole
    number N >= 1, or a fraction in (0, 1) of the group's width (rounded up); None: no floor beyond
    one channel (or none for a group that may vanish). ``uniform``: every layer keeps the same number
    of heads and the same MLP width (:func:`~prunelab.prune.structured.select.uniform_ties`; what a
    Hugging Face config can describe).
    """

    criterion: str = option("fisher", "channel score: a registered criterion (prunelab.prune.structured."
                                      "criterion_names())", choices=criterion_names)
    scope: str = option("internal", "internal: channels inside residual/dense blocks only (the seeds); all: every "
                                    "group, residual streams pruned jointly", choices=SCOPES)
    exclude: tuple[str, ...] = option((), "keep the output width of layers whose path or class name matches a glob",
                                      metavar="PATTERN")
    schedule: str = option("iterative", "iterative: prune while fine-tuning (Crowley et al.); oneshot: remove to "
                                        "the target at once, then fine-tune the compressed model",
                           choices=SCHEDULES)
    prune_every: int = option(100, "training steps between prunes (and batches of a one-shot data pass)", lo=1,
                              metavar="K", valid="a number of steps K >= 1")
    channels_per_prune: int = option(1, "channels removed at each prune", lo=1, metavar="N",
                                     valid="a number of channels >= 1")
    target: Target | None = None
    fisher_beta: float = option(0.0, "cost term of criteria that take one (fisher): score - BETA x cost freed "
                                     "(Theis et al. eq. 7; 0 as the reference code)", lo=0, metavar="BETA",
                                valid="a cost weight >= 0 (0 = reference code)")
    fisher_cost: str = option("macs", "what --fisher-beta charges", choices=COST_METRICS)
    round_to: int | None = option(None, "keep every group's width a multiple of K (8 or 16 suit most CPUs and GPUs)",
                                  kind=int, lo=1, optional=True, metavar="K",
                                  valid="a whole number of channels >= 1 (e.g. 8 or 16)")
    finetune_steps: int = option(0, "iterative: keep fine-tuning S steps after the target is reached", lo=0,
                                 metavar="S")
    checkpoint_every: int | None = option(None, "iterative: call the checkpoint hook every N prunes", kind=int,
                                          lo=1, optional=True, metavar="N")
    seed: int = 0
    min_channels: float | None = option(None, "the fewest channels (heads, for attention) every group keeps: a "
                                              "whole number, or a fraction of each group's width such as 0.25 "
                                              "(default: 1, or 0 where a block may vanish)", kind=float,
                                        optional=True, lo=0, lo_open=True, rule=lambda v: v < 1 or v == int(v),
                                        metavar="N|FRACTION",
                                        valid="a whole number >= 1 or a fraction in (0, 1) of each group's width")
    uniform: bool = False

    def validate(self) -> StructuredConfig:
        check_fields(self)
        if isinstance(self.min_channels, float) and self.min_channels >= 1:
            self.min_channels = int(self.min_channels)  # "2" on the command line is 2 channels, as in YAML
        if self.fisher_beta and not get_criterion(self.criterion).cost_term:
            takes = " / ".join(n for n in criterion_names() if get_criterion(n).cost_term)
            raise PrunelabError(f"fisher-beta applies to --criterion {takes} only")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target"] = None if self.target is None else self.target.to_dict()
        d["exclude"] = list(self.exclude)
        if self.min_channels is None:  # absent by default, so the configs of earlier runs are unchanged
            d.pop("min_channels")
        if not self.uniform:
            d.pop("uniform")
        return d


def min_channel_floors(groups: GroupSet, min_channels: float | None) -> dict[str, int]:
    """Each group's floor for ``min_channels`` (N channels, or a fraction of its width rounded up);
    a floor above a group's width is refused with one line naming the group."""
    if min_channels is None:
        return {}
    floors = {}
    for g in groups:
        n = math.ceil(min_channels * g.width) if min_channels < 1 else int(min_channels)
        if n > g.width:
            size = getattr(g.structure, "group_size", 1)
            unit = "channels" if g.kind != "heads" else ("heads" if size == 1 else
                                                          f"key/value heads, each with {size} query heads")
            raise PrunelabError(f"min-channels {int(min_channels)} is above the width of group {g.name} "
                                f"({g.width} {unit}); the narrowest group has "
                                f"{min(x.width for x in groups)}: give at most that, or a fraction such as 0.25")
        floors[g.name] = n
    return floors


class StructuredPruner:
    """Channel pruning of one model (see the module docstring)."""

    def __init__(self, model: nn.Module, config: StructuredConfig, input_shape, spec=None,
                 previous_plan: dict | None = None, groups: GroupSet | None = None) -> None:
        self.model = model
        self.config = config.validate()
        self.inputs = as_input_spec(input_shape)
        self.input_shape = self.inputs.shape  # the first input's shape (kept for callers that read it)
        #: what measurements get: the plain shape for one float tensor (as before specs), else the spec
        self.measured_inputs = self.inputs.shape if self.inputs.is_plain else self.inputs
        self.spec = spec
        self.previous_plan = previous_plan
        t0 = time.perf_counter()
        with stage("finding channel groups"):
            self.groups = groups or find_groups(model, self.measured_inputs, config.scope, config.exclude, spec=spec)
        self.group_seconds = time.perf_counter() - t0
        if not len(self.groups):
            why = "; ".join(f"{s['group']}: {s['reason']}" for s in self.groups.skipped[:5])
            more = len(self.groups.skipped) - 5
            raise PrunelabError(f"no prunable channel groups in scope {config.scope!r}"
                                + (f" ({why}{f'; and {more} more' if more > 0 else ''})" if why else
                                   " (the model has no convolution or linear layer whose channels can be removed)"))
        self.floors = min_channel_floors(self.groups, config.min_channels)
        #: groups ranked as one so that they keep equal widths (``uniform``)
        self.ties = uniform_ties(self.groups) if config.uniform else []
        self.masks = ChannelMasks(model, self.groups)
        try:
            self.criterion = make_criterion(config.criterion, model, self.groups, self.masks, config.seed)
            self.history: list[dict] = []
            self.prunes = 0
            self._cost: CostModel | None = None
            self.initial = self.measure(exact=True)
            self.confirmed: dict | None = None
            self.check_target()
        except BaseException:
            self.masks.detach()  # a refused pruner leaves the model as it found it (a retry starts clean)
            raise

    # -- sizes and targets -----------------------------------------------------------------------
    @property
    def cost(self) -> CostModel:
        if self._cost is None:
            with self.masks.detached():
                self._cost = CostModel(self.model, self.groups, params=self.initial["params"],
                                       macs=self.initial["macs"])
        return self._cost

    def measure(self, exact: bool = False) -> dict:
        """Channels, params and MACs of the would-be compressed model (estimated, or ``exact``)."""
        if exact:
            from prunelab.prune.structured.cost import model_size

            pruned = self.masks.remaining < self.groups.total_channels
            with self.masks.detached():
                small = compress(self.model, self.groups, masks=self.masks, check=False) if pruned else self.model
                params, macs = model_size(small, self.measured_inputs)
            return {"channels": self.masks.remaining, "params": params, "macs": macs}
        params, macs = self.cost.size(self.masks.alive)
        return {"channels": self.masks.remaining, "params": params, "macs": macs}

    def minimum(self) -> dict:
        """Sizes with every group at its smallest allowed width."""
        alive = {k: v.clone() for k, v in self.masks.alive.items()}
        for unit in removal_order({g.name: torch.zeros(g.width) for g in self.groups}, alive, self.groups,
                                  self.config.round_to, self.floors, self.ties):
            for name, c in unit:
                alive[name][c] = False
        params, macs = self.cost.size(alive)
        return {"channels": int(sum(int(v.sum()) for v in alive.values())), "params": params, "macs": macs}

    def check_target(self) -> None:
        t = self.config.target
        if t is None:
            return
        if t.kind == "latency_ms":
            self._check_latency_target()
            return
        now = self.initial[t.kind]
        if t.value >= now:
            raise PrunelabError(f"target {t.describe()} is not below the model's {now:,} {t.kind}; "
                                f"nothing to prune")
        low = self.minimum()[t.kind]
        if t.value < low:
            frac = (now - low) / now if now else 0.0
            names = [str(g["group"]) for g in self.groups.skipped]
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            skipped = f"; not prunable: {', '.join(names[:3])}{more}" if names else ""
            raise PrunelabError(f"target {t.describe()} is unreachable: only {frac:.1%} of the model's {t.kind} is "
                                f"prunable in scope {self.config.scope!r} (removing every prunable channel leaves "
                                f"{low:,}){skipped}")

    def _check_latency_target(self) -> None:
        """Measure the model now and at its smallest allowed widths: a latency target outside that
        range is refused before any training, as the other targets are."""
        t = self.config.target
        now = self.current()
        if t.value >= now:
            raise PrunelabError(f"target {t.describe()} is not below the model's measured {now:.4g} ms; "
                                f"nothing to prune")
        saved = {k: v.clone() for k, v in self.masks.alive.items()}
        try:
            for unit in removal_order({g.name: torch.zeros(g.width) for g in self.groups}, self.masks.alive,
                                      self.groups, self.config.round_to, self.floors, self.ties):
                self.masks.remove(list(unit))
            low = self.current()
        finally:
            self.masks.set_alive(saved)
        if t.value < low:
            raise PrunelabError(f"target {t.describe()} is unreachable: removing every prunable channel in scope "
                                f"{self.config.scope!r} measures {low:.4g} ms")

    def current(self, exact: bool = False) -> float:
        t = self.config.target
        if t is None:
            raise PrunelabError("no pruning target set")
        if t.kind == "latency_ms":
            return measure_latency_ms(self.compress(check=False), self.measured_inputs, t)
        return float(self.measure(exact=exact)[t.kind])

    def reached(self) -> bool:
        """Whether the target is met, confirmed on the compressed model for params / MACs."""
        t = self.config.target
        if t is None:
            return False
        if t.kind == "channels":
            return self.masks.remaining <= t.value
        if t.kind == "latency_ms":
            value = self.current()
            self.confirmed = {"latency_ms": value}
            return t.met(value)
        if not t.met(self.current()):
            return False
        exact = self.measure(exact=True)
        self.confirmed = exact
        return t.met(exact[t.kind])

    def coverage(self) -> dict:
        """What this prune can touch: the fraction of parameters in layers of a prunable group, the
        fraction of parameters and MACs that removing every prunable channel would free, and each
        group left out with its reason."""
        model_params = self.initial["params"]
        touched = {m.module for g in self.groups for m in g.members if m.kind != "pool"}
        names = dict(self.model.named_modules())
        in_scope = sum(p.numel() for n in touched if n in names for p in names[n].parameters(recurse=False))
        low = self.minimum()

        def frac(a: int, b: int) -> float:
            return a / b if b else 0.0

        return {"groups": len(self.groups), "params_in_prunable_layers": frac(in_scope, model_params),
                "params_removable": frac(model_params - low["params"], model_params),
                "macs_removable": frac(self.initial["macs"] - low["macs"], self.initial["macs"]),
                "skipped": list(self.groups.skipped)}

    # -- scores and pruning -------------------------------------------------------------------------
    def scores(self) -> dict[str, torch.Tensor]:
        """Criterion scores (accumulated ones all-reduced across ranks), cost term applied, pruned
        channels +inf."""
        scores = self.criterion.scores()
        if self.criterion.all_reduce == "mean":
            scores = all_reduce_mean(scores)
        if self.config.fisher_beta:
            freed = self.cost.freed_per_channel(self.masks.alive, self.config.fisher_cost)
            scores = {k: v - self.config.fisher_beta * freed[k] for k, v in scores.items()}
        return {k: torch.where(self.masks.alive[k], v.float(), torch.full_like(v.float(), float("inf")))
                for k, v in scores.items()}

    def prune_step(self, n: int | None = None, step: int | None = None) -> list[tuple[str, int]]:
        """Remove the ``n`` lowest-scoring live channels (default ``channels_per_prune``); for a channels
        target never below it. Resets the criterion's accumulation."""
        n = n or self.config.channels_per_prune
        t = self.config.target
        if t is not None and t.kind == "channels":
            n = min(n, max(self.masks.remaining - int(t.value), 0))
        chosen = select(self.scores(), self.masks.alive, self.groups, n, self.config.round_to,
                        self.floors, self.ties) if n else []
        self.masks.remove(chosen)
        self.criterion.reset()
        if chosen:
            self.prunes += 1
            self.history.append({"step": step, "removed": [[g, int(c)] for g, c in chosen],
                                 "channels": self.masks.remaining})
        return chosen

    def exhausted(self) -> bool:
        return next(removal_order({g.name: torch.zeros(g.width) for g in self.groups}, self.masks.alive,
                                  self.groups, self.config.round_to, self.floors, self.ties), None) is None

    def prune_oneshot(self, data=None, batch_size: int = 128, data_steps: int | None = None,
                      device: str | torch.device | None = None, loss: str | None = None) -> list[tuple[str, int]]:
        """Remove channels to the target in one go (ranking computed once).

        A criterion that needs data (Fisher, Taylor, APoZ) is shown ``data_steps`` (default K) training
        batches first, without updating weights, its gradients those of ``loss`` (a registered loss
        name; classification cross-entropy by default); BatchNorm running statistics are restored.
        """
        try:
            return self._prune_oneshot(data, batch_size, data_steps, device, loss)
        except BaseException:
            self.criterion.stop()
            raise

    def _prune_oneshot(self, data, batch_size, data_steps, device, loss) -> list[tuple[str, int]]:
        t = self.config.target
        if t is None:
            raise PrunelabError("one-shot pruning needs a target")
        if self.criterion.accumulates:
            if data is None:
                raise PrunelabError(f"one-shot pruning with criterion {self.config.criterion!r} needs training "
                                    f"data to accumulate its scores")
            with stage(f"accumulating the {self.config.criterion} scores"):
                accumulate(self.model, self.criterion, data, data_steps or self.config.prune_every, batch_size,
                           device, loss=loss)
        order = list(removal_order(self.scores(), self.masks.alive, self.groups, self.config.round_to, self.floors,
                                   self.ties))
        start = {k: v.clone() for k, v in self.masks.alive.items()}

        def apply(k: int) -> None:
            self.masks.set_alive(start)
            self.masks.remove([c for unit in order[:k] for c in unit])

        def meets(k: int) -> bool:
            apply(k)
            return t.met(self.current())

        lo, hi = 0, len(order)
        if not meets(hi):  # measured noise can move a latency target out of reach after the check
            floor = self.current()
            apply(0)
            self.criterion.reset()
            unit = "ms" if t.kind == "latency_ms" else t.kind
            raise PrunelabError(f"target {t.describe()} is unreachable: removing every prunable channel in scope "
                                f"{self.config.scope!r} gives {floor:.6g} {unit}")
        while lo < hi:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid + 1
        k = lo
        apply(k)
        # The estimate ignores parameter-free layers: confirm on the compressed model.
        while t.kind in ("params", "macs") and k < len(order) and not self.reached():
            k += 1
            apply(k)
        self.criterion.reset()
        removed = [(name, c) for name, v in start.items()
                   for c in torch.nonzero(v & ~self.masks.alive[name]).flatten().tolist()]
        self.prunes = 1 if removed else 0
        self.history.append({"step": 0, "removed": [[g, int(c)] for g, c in removed],
                             "channels": self.masks.remaining})
        return removed

    # -- results ------------------------------------------------------------------------------------
    def compress(self, check: bool = True) -> nn.Module:
        """The compressed copy of the model (checked against the masked one)."""
        return compress(self.model, self.groups, masks=self.masks, check=check)

    def plan(self) -> dict:
        base = self.spec.to_dict() if self.spec is not None else None
        return make_plan(self.groups, self.masks.kept(), base, self.previous_plan)

    def widths(self) -> list[dict]:
        kept = self.masks.widths()
        return [{"group": g.name, "before": g.width, "after": kept[g.name]} for g in self.groups]

    def callback(self, on_checkpoint: Callable[[StructuredPruner], None] | None = None) -> IterativePruning:
        return IterativePruning(self, on_checkpoint)

    def detach(self) -> None:
        """Remove the mask hooks from the model."""
        self.masks.detach()
