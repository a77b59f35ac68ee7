"""Channel criteria as registered objects: what a criterion is, and the registry that names them.

A criterion scores every channel of every channel group; low scores are pruned first and scores
are ranked globally across groups (:mod:`prunelab.prune.structured.select`). It is one subclass
of :class:`Criterion` registered with :func:`register_criterion`, like Torch-Pruning's
``tp.importance.Importance`` (``torch_pruning/pruner/importance.py``). The built-in criteria live
one per file in :mod:`prunelab.prune.structured.criteria`; every module there is imported with the
package, so a new criterion is one new file (a user's own criterion is a class registered from any
module, e.g. a study's ``plugins:``). The pruner, its schedules, the CLI's ``--criterion`` choices
and the study kind ``structured`` all read this registry and nothing else.

A criterion declares what it reads (:data:`NEEDS`): ``weights`` (the current parameters),
``activations`` (the masked outputs of each group's mask points, seen through
:meth:`ChannelMasks.observe`), ``gradients`` (of the training loss) and ``data`` (it must see
training batches before it can score: the iterative schedule feeds it the fine-tuning steps, a
one-shot prune runs a data pass of ``prune_every`` batches first). A criterion that accumulates
folds each step into running sums in :meth:`end_step`, is reset after every prune, and declares how
its sums combine across data-parallel ranks (``all_reduce = "mean"``: every rank saw its own shard
of every batch, so the ranks average before ranking and all prune the same channels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice, unknown_choice

if TYPE_CHECKING:
    from prunelab.prune.structured.groups import ChannelGroup, GroupSet, Member
    from prunelab.prune.structured.masks import ChannelMasks

#: what a criterion may read
NEEDS = ("weights", "activations", "gradients", "data")
#: how accumulated scores combine across data-parallel ranks (None: every rank computes the same)
ALL_REDUCE = (None, "mean")


class Criterion:
    """Scores of every channel of every group (see the module docstring).

    Subclasses set ``name``, ``summary`` (one line for ``--help``), ``needs`` and, when they
    accumulate, ``all_reduce``; ``cost_term = True`` lets Theis et al.'s cost term (``fisher_beta``)
    be subtracted from the scores. They override :meth:`scores`, and the accumulation hooks when
    they need data. One instance serves one pruning run.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    all_reduce: ClassVar[str | None] = None
    cost_term: ClassVar[bool] = False

    def __init__(self, model: nn.Module, groups: GroupSet, masks: ChannelMasks, seed: int = 0) -> None:
        self.model = model
        self.groups = groups
        self.masks = masks
        self.seed = seed

    @property
    def accumulates(self) -> bool:
        """Whether the criterion must see training batches before it can score."""
        return "data" in self.needs

    def scores(self) -> dict[str, torch.Tensor]:
        """Group name -> one score per channel (float, on the CPU), before cost terms and masking."""
        raise NotImplementedError

    # -- accumulation (criteria that need data) ------------------------------------------------------
    def start(self) -> None:
        """Begin observing training passes (e.g. register with :meth:`ChannelMasks.observe`)."""

    def stop(self) -> None:
        """Stop observing training passes."""

    def end_step(self, loss_scale: torch.Tensor | float | None = None) -> None:
        """Fold one training step into the running sums, after its backward pass. ``loss_scale``: the AMP
        loss scale the activation gradients seen by tensor hooks still carry (parameter ``.grad`` are
        already unscaled)."""

    def reset(self) -> None:
        """Forget what was accumulated (after each prune)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: register ``cls`` under ``cls.name`` (a later registration of a name replaces it)."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise PrunelabError(f"a criterion must subclass prunelab.prune.structured.Criterion, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name or cls.name != cls.name.strip():
        raise PrunelabError(f"criterion {cls.__name__} needs a non-empty 'name'")
    unknown = sorted(set(cls.needs) - set(NEEDS))
    if unknown:
        raise PrunelabError(f"criterion {cls.name!r} declares unknown needs {unknown}; valid: {', '.join(NEEDS)}")
    check_choice(f"all-reduce of criterion {cls.name!r}", cls.all_reduce, ALL_REDUCE)
    _CRITERIA[cls.name] = cls
    return cls


def criterion_names() -> list[str]:
    """The registered criterion names, in registration order (the built-ins first)."""
    return list(_CRITERIA)


def get_criterion(name: str) -> type[Criterion]:
    if name not in _CRITERIA:
        raise unknown_choice("criterion", name, _CRITERIA)
    return _CRITERIA[name]


def make_criterion(name: str, model: nn.Module, groups: GroupSet, masks: ChannelMasks,
                   seed: int = 0) -> Criterion:
    """An instance of criterion ``name`` for one pruning run."""
    return get_criterion(name)(model, groups, masks, seed)


def channel_scores(name: str, model: nn.Module, groups: GroupSet, masks: ChannelMasks | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores of criterion ``name`` on the model as it is (for criteria that need no data)."""
    cls = get_criterion(name)
    if "data" in cls.needs:
        raise PrunelabError(f"criterion {name!r} accumulates over training batches; use a StructuredPruner")
    return cls(model, groups, masks, seed).scores()


# ------------------------------------------------------------------------------ helpers for criteria


def output_rows(module: nn.Module) -> torch.Tensor:
    """The weight as one row per output channel (a Hugging Face ``Conv1D`` stores it transposed)."""
    from prunelab.prune.structured.transformer import is_conv1d

    return module.weight.t() if is_conv1d(module) else module.weight


def producer(group: ChannelGroup, module: str) -> Member:
    """The member of ``group`` through which layer ``module`` produces (or normalises) its channels."""
    for m in group.members:
        if m.module == module and m.kind in ("out", "depthwise"):
            return m
    raise PrunelabError(f"layer {module} does not produce channels of group {group.name}")


def in_group_order(group: ChannelGroup, member: Member, per_channel: torch.Tensor) -> torch.Tensor:
    """A vector over the group's channels from ``per_channel`` (one value per output channel of the
    member's layer): layer position ``member.idxs[k]`` goes to group channel ``member.channels[k]``
    (summed where a channel spans several positions, as a head spans ``head_dim`` of them)."""
    vec = torch.zeros(group.width, device=per_channel.device, dtype=per_channel.dtype)
    # Several positions may belong to one group channel (the head_dim rows of a head): they add up.
    vec.index_add_(0, torch.tensor(member.channels, device=per_channel.device, dtype=torch.long),
                   per_channel[torch.tensor(member.idxs, device=per_channel.device, dtype=torch.long)])
    return vec


def mean_over_layers(values: list[torch.Tensor], width: int) -> torch.Tensor:
    """The mean of per-layer score vectors (a group coupling many layers is not favoured by their number)."""
    return torch.stack(values).mean(0) if values else torch.zeros(width)


def all_reduce_mean(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average accumulated scores over data-parallel ranks so every rank ranks the same channels
    (each rank saw its own shard of every batch). A no-op outside a distributed run."""
    from prunelab.train.distributed import all_reduce_, is_distributed

    if not is_distributed():
        return scores
    names = list(scores)
    flat = all_reduce_(torch.cat([scores[n].float().flatten() for n in names]), op="mean")
    out, i = {}, 0
    for n in names:
        k = scores[n].numel()
        out[n] = flat[i:i + k].view_as(scores[n])
        i += k
    return out


def accumulate(model: nn.Module, criterion: Criterion, data, steps: int, batch_size: int,
               device: str | torch.device | None = None, loss: str | None = None) -> None:
    """Show ``criterion`` ``steps`` training batches without changing the weights (a one-shot prune's
    data pass): forward in training mode, backward of ``loss`` (a registered loss name,
    :mod:`prunelab.train.losses`; classification cross-entropy by default) when it needs gradients;
    BatchNorm running statistics are restored afterwards."""
    from prunelab.train import batches
    from prunelab.train.losses import get_loss

    loss_fn = get_loss(loss)

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    was = model.training
    backward = "gradients" in criterion.needs
    model.train()
    criterion.start()
    done = 0
    try:
        while done < steps:
            progressed = False
            for x, y in batches(data, "train", batch_size):
                x, y = x.to(device), y.to(device)
                model.zero_grad(set_to_none=True)
                if backward:
                    loss_fn(model(x), y).backward()
                else:
                    with torch.no_grad():
                        model(x)
                criterion.end_step()
                done += 1
                progressed = True
                if done >= steps:
                    break
            if not progressed:
                raise PrunelabError(f"the training split is empty; criterion {criterion.name!r} cannot "
                                    f"accumulate its scores")
    finally:
        criterion.stop()
        model.zero_grad(set_to_none=True)
        model.load_state_dict(buffers, strict=False)
        model.train(was)
