"""Structured channel pruning: groups, soft masks, Fisher / L1 / BN / random criteria, schedules,
targets in real units, physical compression and plans (Crowley et al. 2018 after Theis et al. 2018).

The pieces, each in its own module:

* :mod:`.groups` - channel groups from Torch-Pruning's dependency graph, scopes and exclusions;
* :mod:`.masks` - soft channel masks (forward hooks) and the Fisher accumulation;
* :mod:`.criteria` - channel scores; :mod:`.select` - global ranking;
* :mod:`.cost` - params / MACs of the would-be compressed model; :mod:`.targets` - stopping targets;
* :mod:`.compress` - physical compression with the compressed == masked check;
* :mod:`.plan` - plans, ``apply_plan`` and ``save_pruned``; :mod:`.schedule` - the iterative callback;
* :mod:`.pruner` - :class:`StructuredPruner`, which ties them together.
"""

from prunelab.prune.structured.compress import compress, prune_in_place, verify
from prunelab.prune.structured.cost import CostModel
from prunelab.prune.structured.criteria import CRITERIA, channel_scores
from prunelab.prune.structured.groups import SCOPES, ChannelGroup, GroupSet, find_groups
from prunelab.prune.structured.masks import ChannelMasks, FisherAccumulator, fisher_delta
from prunelab.prune.structured.plan import apply_plan, make_plan, save_pruned, spec_of_compressed
from prunelab.prune.structured.pruner import SCHEDULES, StructuredConfig, StructuredPruner, accumulate_fisher
from prunelab.prune.structured.targets import TARGET_KINDS, Target

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "SCOPES",
    "TARGET_KINDS",
    "ChannelGroup",
    "ChannelMasks",
    "CostModel",
    "FisherAccumulator",
    "GroupSet",
    "StructuredConfig",
    "StructuredPruner",
    "Target",
    "accumulate_fisher",
    "apply_plan",
    "channel_scores",
    "compress",
    "find_groups",
    "fisher_delta",
    "make_plan",
    "prune_in_place",
    "save_pruned",
    "spec_of_compressed",
    "verify",
]
