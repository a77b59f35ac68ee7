"""Structured channel pruning: groups, soft masks, registered channel criteria, schedules, targets
in real units, physical compression and plans (Crowley et al. 2018 after Theis et al. 2018).

The pieces, each in its own module:

* :mod:`.groups` - channel groups from Torch-Pruning's dependency graph, scopes and exclusions;
* :mod:`.masks` - soft channel masks (forward hooks) that criteria can observe;
* :mod:`.criterion` - what a criterion is and its registry; :mod:`.criteria` - the criteria, one
  file each (Fisher, L1, signed and normalised L1, BN scale, random, Taylor, APoZ);
* :mod:`.select` - global ranking;
* :mod:`.cost` - params / MACs of the would-be compressed model; :mod:`.targets` - stopping targets;
* :mod:`.compress` - physical compression with the compressed == masked check;
* :mod:`.plan` - plans, ``apply_plan`` and ``save_pruned``; :mod:`.schedule` - the iterative callback;
* :mod:`.pruner` - :class:`StructuredPruner`, which ties them together.
"""

from prunelab.prune.structured import criteria  # noqa: F401  (registers the built-in criteria)
from prunelab.prune.structured.compress import compress, prune_in_place, verify
from prunelab.prune.structured.cost import CostModel
from prunelab.prune.structured.criteria.fisher import FisherAccumulator, fisher_delta
from prunelab.prune.structured.criterion import (
    NEEDS,
    Criterion,
    accumulate,
    channel_scores,
    criterion_names,
    get_criterion,
    register_criterion,
)
from prunelab.prune.structured.groups import SCOPES, ChannelGroup, GroupSet, find_groups
from prunelab.prune.structured.masks import ChannelMasks
from prunelab.prune.structured.plan import apply_plan, make_plan, save_pruned, spec_of_compressed
from prunelab.prune.structured.pruner import SCHEDULES, StructuredConfig, StructuredPruner
from prunelab.prune.structured.targets import TARGET_KINDS, Target

__all__ = [
    "NEEDS",
    "SCHEDULES",
    "SCOPES",
    "TARGET_KINDS",
    "ChannelGroup",
    "ChannelMasks",
    "CostModel",
    "Criterion",
    "FisherAccumulator",
    "GroupSet",
    "StructuredConfig",
    "StructuredPruner",
    "Target",
    "accumulate",
    "apply_plan",
    "channel_scores",
    "compress",
    "criterion_names",
    "find_groups",
    "fisher_delta",
    "get_criterion",
    "make_plan",
    "prune_in_place",
    "register_criterion",
    "save_pruned",
    "spec_of_compressed",
    "verify",
]
