"""Protocols: how an architecture is obtained and trained.

* reduced networks (Crowley et al. 2018): :func:`reduced_network`, :func:`reduce_to_target`;
* pruned architectures trained from scratch, Scratch-E / Scratch-B (Liu et al. 2019):
  :func:`train_from_scratch`;
* copied profiles (Crowley et al. 2018): :func:`read_profile`, :func:`copy_profile`;
* Pruning from Scratch (Wang et al. 2020): :func:`pruning_from_scratch`, :func:`learn_gates`,
  :func:`select_structure`.

All of them end in :func:`build_and_train` (build a model from an :class:`~prunelab.models.ArchSpec`,
train it), so their results compare at matched parameters or MACs with nothing else different.
"""

from prunelab.protocols.build import build_and_train, build_model, fit_spec_to_data, reinitialise
from prunelab.protocols.pfs import (
    PFSConfig,
    PFSResult,
    Structure,
    learn_gates,
    pruning_from_scratch,
    select_structure,
)
from prunelab.protocols.profile import WidthProfile, copy_profile, read_profile, transfer_profile
from prunelab.protocols.reduced import (
    MODES,
    ReducedResult,
    reduce_spec,
    reduce_to_target,
    reduced_network,
    scale_bottleneck,
    scale_width,
)
from prunelab.protocols.scratch import (
    PrunedArchitecture,
    ScratchResult,
    pruned_architecture,
    scale_schedule,
    train_from_scratch,
)
from prunelab.protocols.targets import Target, parse_target

__all__ = [
    "MODES",
    "PFSConfig",
    "PFSResult",
    "PrunedArchitecture",
    "ReducedResult",
    "ScratchResult",
    "Structure",
    "Target",
    "WidthProfile",
    "build_and_train",
    "build_model",
    "copy_profile",
    "fit_spec_to_data",
    "learn_gates",
    "parse_target",
    "pruned_architecture",
    "pruning_from_scratch",
    "read_profile",
    "reduce_spec",
    "reduce_to_target",
    "reduced_network",
    "reinitialise",
    "scale_bottleneck",
    "scale_schedule",
    "scale_width",
    "select_structure",
    "train_from_scratch",
    "transfer_profile",
]
