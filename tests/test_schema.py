"""One declaration per setting (prunelab.schema): the config's validation, its command-line flags and
the study kinds' parameters all come from the same field, with the same name, default and message."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from prunelab.errors import PrunelabError
from prunelab.prune.structured import StructuredConfig
from prunelab.schema import Spec, add_flags, check_fields, option, specs
from prunelab.study.methods.structured import _params


@dataclass
class Toy:
    every: int = option(100, "steps between prunes", lo=1)
    beta: float = option(0.0, "cost weight", lo=0)
    ratio: float = option(0.5, "a ratio", lo=0, hi=1, lo_open=True, hi_open=True)
    mode: str = option("a", "a mode", choices=("a", "b"))
    width: int | None = option(None, "a multiple", kind=int, lo=1, optional=True)
    names: tuple[str, ...] = option((), "patterns")
    flag: bool = option(False, "a switch")


@pytest.mark.parametrize("field,value,message", [
    ("every", 0, "every must be a whole number >= 1, got 0"),
    ("every", 1.5, "every must be a whole number >= 1, got 1.5"),
    ("every", True, "every must be a whole number >= 1, got True"),
    ("beta", -0.1, "beta must be a number >= 0, got -0.1"),
    ("beta", float("nan"), "beta must be a number >= 0"),
    ("ratio", 1.0, "ratio must be a number > 0 and < 1, got 1.0"),
    ("ratio", 0, "ratio must be a number > 0 and < 1, got 0"),
    ("mode", "c", "unknown mode 'c'; valid choices: a, b"),
    ("width", 0, "width must be a whole number >= 1, got 0"),
    ("names", ["ok", ""], "names must be a list of names"),
    ("flag", 1, "flag must be true or false, got 1"),
])
def test_messages_come_from_the_declaration(field, value, message):
    with pytest.raises(PrunelabError) as exc:
        check_fields(Toy(**{field: value}))
    assert message in str(exc.value)


def test_valid_values_pass_and_none_only_where_optional():
    check_fields(Toy(every=1, beta=0, ratio=0.99, mode="b", width=None, names=("x",), flag=True))
    with pytest.raises(PrunelabError, match="every must be a whole number >= 1, got None"):
        check_fields(Toy(every=None))
    spec = specs(Toy)["width"][0]
    assert spec.describe() == "null or a whole number >= 1" and spec.accepts(None)


def test_flags_take_type_choices_and_default_from_the_declaration():
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy, ["every", "mode", "width", "names", "flag"])
    args = parser.parse_args([])
    assert (args.every, args.mode, args.width, args.names, args.flag) == (100, "a", None, [], False)
    args = parser.parse_args(["--every", "3", "--mode", "b", "--width", "8", "--names", "x", "y", "--flag"])
    assert (args.every, args.mode, args.width, args.names, args.flag) == (3, "b", 8, ["x", "y"], True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_structured_config_cli_and_study_share_one_declaration():
    """StructuredConfig's fields, the ``prune --structured`` flags and the structured study kinds'
    parameters: the same defaults and the same checks."""
    from prunelab.cli import build_parser

    table = specs(StructuredConfig)
    parser = build_parser("prune")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    flags = {a.dest: a for a in sub._actions}
    for name in ("scope", "channels_per_prune", "fisher_beta", "fisher_cost", "round_to", "finetune_steps"):
        spec, default = table[name]
        assert flags[name].default == default, name
        assert flags[name].help.startswith(spec.help[:20]), name
    study = _params("structured")
    for name in ("criterion", "scope", "schedule", "prune_every", "channels_per_prune", "round_to", "fisher_beta",
                 "fisher_cost", "exclude"):
        spec, default = table[name]
        assert study[name].default == (list(default) if isinstance(default, tuple) else default), name
        assert study[name].valid == spec.describe(), name
    assert not study["prune_every"].check(0) and study["prune_every"].check(5)
    with pytest.raises(PrunelabError, match="prune-every must be a number of steps K >= 1, got 0"):
        StructuredConfig(prune_every=0).validate()
    assert isinstance(table["criterion"][0], Spec) and "taylor" in table["criterion"][0].options()


def test_layer_selection_cli_and_study_share_one_declaration():
    from prunelab.cli import build_parser
    from prunelab.prune.unstructured.selection import LayerSelection
    from prunelab.study.methods.unstructured import _KIND_PARAMS

    table = specs(LayerSelection)
    parser = build_parser("prune")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    flags = {a.dest: a for a in sub._actions}
    study = _KIND_PARAMS["global-magnitude"]
    for name in ("keep_first_dense", "keep_last_dense", "include_types", "include"):
        spec, default = table[name]
        assert flags[name].default == (list(default) if isinstance(default, tuple) else default), name
        assert study[name].default == flags[name].default and study[name].valid == spec.describe(), name
    assert not study["include_types"].check(["conv", "lstm"]) and study["include_types"].check(["conv2d"])
    with pytest.raises(PrunelabError, match="unknown include-types 'lstm'"):
        check_fields(LayerSelection(include_types=("conv", "lstm")))


def _prune_flags():
    from prunelab.cli import build_parser

    parser = build_parser("prune")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    return sub, {a.dest: a for a in sub._actions}


def test_prune_config_and_schedule_cli_and_study_share_one_declaration():
    """PruneConfig's and WeightPruning's fields, the unstructured ``prune`` flags and the unstructured
    study kinds' parameters: the same defaults, the same checks, the same words."""
    from prunelab.protocols.unstructured import WeightPruning
    from prunelab.prune.unstructured.pruner import METHODS, PruneConfig
    from prunelab.study.methods.unstructured import _KIND_PARAMS

    sub, flags = _prune_flags()
    prune, pruning = specs(PruneConfig), specs(WeightPruning)
    for table, name, dest in ((prune, "method", "method"), (prune, "mt", "mt"), (prune, "mt_percent", "mt_percent"),
                              (prune, "allow_regrow", "allow_regrow"), (pruning, "schedule", "prune_schedule"),
                              (pruning, "rounds", "rounds"), (pruning, "rewind_epoch", "rewind_epoch")):
        spec, default = table[name]
        assert flags[dest].default == default and flags[dest].help.startswith(spec.help[:20]), name
    assert flags["sparsity"].default is None  # the command asks for it: no silent 0
    assert tuple(flags["method"].choices) == (*METHODS, "lowrank")  # lowrank goes to another pruner
    assert tuple(flags["prune_schedule"].choices) == ("oneshot", "gradual", "iterative")
    study = _KIND_PARAMS["random"]
    for table, name in ((pruning, "schedule"), (pruning, "rounds"), (prune, "mt"), (prune, "mt_percent")):
        spec, default = table[name]
        assert study[name].default == default and study[name].valid == spec.describe(), name
    # hand-written limits: rounds 1..100, MT percent in [0, 100), MT a count >= 0
    assert study["rounds"].check(100) and not study["rounds"].check(101) and not study["rounds"].check(0)
    assert study["mt_percent"].check(0.0) and not study["mt_percent"].check(100.0) and study["mt_percent"].check(None)
    assert study["mt"].check(0) and not study["mt"].check(-1) and not study["mt"].check(2.5)
    assert "layerwise-magnitude" in _KIND_PARAMS and "mt" not in _KIND_PARAMS["layerwise-magnitude"]
    args = sub.parse_args(["mlp", "--prune-schedule", "iterative", "--rounds", "4", "--mt", "7"])
    assert (args.prune_schedule, args.rounds, args.mt) == ("iterative", 4, 7)
    from prunelab.train.config import SCHEDULES

    assert args.schedule in SCHEDULES  # the learning-rate schedule keeps its own attribute


@pytest.mark.parametrize("config,message", [
    ({"sparsity": 1.0}, "sparsity must be in [0, 1) (fraction of weights removed), got 1.0"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1) (fraction of weights removed), got -0.1"),
    ({"method": "magnitude"}, "unknown method 'magnitude'"),
    ({"mt": -1}, "mt must be a number of weights per layer >= 0, got -1"),
    ({"mt_percent": 100.0}, "mt-percent must be a percentage of all prunable weights in [0, 100), got 100.0"),
    ({"allow_regrow": 1}, "allow-regrow must be true or false, got 1"),
])
def test_prune_config_messages_come_from_the_declaration(config, message):
    from prunelab.prune.unstructured.pruner import PruneConfig

    with pytest.raises(PrunelabError) as exc:
        PruneConfig(**config).validate()
    assert message in str(exc.value)


def test_weight_pruning_messages_come_from_the_declaration():
    from prunelab.protocols.unstructured import WeightPruning
    from prunelab.prune.unstructured.pruner import PruneConfig

    config = PruneConfig(sparsity=0.5)
    with pytest.raises(PrunelabError, match=r"rounds must be 1 to 100, got 101"):
        WeightPruning(config, "iterative", rounds=101).validate()
    WeightPruning(config, "oneshot", rounds=101).validate()  # rounds are read by the iterative schedule only
    with pytest.raises(PrunelabError, match="unknown prune-schedule 'cyclic'"):
        WeightPruning(config, "cyclic").validate()
    with pytest.raises(PrunelabError, match="snip-batch must be a whole number >= 1, got 0"):
        WeightPruning(config, snip_batch=0).validate()


def test_train_config_flags_come_from_its_declaration():
    """Every training flag that maps onto a TrainConfig field has that field's default and help; where
    a spec states a range, the config's own validation agrees with it at the edges."""
    from dataclasses import replace

    from prunelab.train.config import TrainConfig

    _, flags = _prune_flags()
    table = specs(TrainConfig)
    for name, (spec, default) in table.items():
        if name in ("augment", "amp", "loss"):  # --no-augment / --no-amp; --loss defaults to the data's
            continue
        assert flags[name].default == default and flags[name].help.startswith(spec.help[:20]), name
    assert flags["checkpoint"].option_strings == ["--state"] and flags["loss"].default is None
    assert flags["augment"].default is True and flags["amp"].default is True
    base = TrainConfig()
    for name, good, bad in (("epochs", 0, -1), ("batch_size", 1, 0), ("momentum", 0.0, 1.0), ("lr", 0.0, -0.1),
                            ("label_smoothing", 0.0, 1.0), ("gamma", 1e-9, 0.0), ("eval_every", 1, 0),
                            ("optimizer", "adam", "rmsprop"), ("schedule", "cosine", "poly")):
        spec = table[name][0]
        assert spec.accepts(good) and not spec.accepts(bad), name
        replace(base, **{name: good}).validate()
        with pytest.raises(PrunelabError):
            replace(base, **{name: bad}).validate()


def test_pfs_config_flags_come_from_its_declaration():
    from prunelab.cli import build_parser
    from prunelab.protocols.pfs import PFSConfig
    from prunelab.schema import dest

    parser = build_parser("pfs")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["pfs"]
    flags = {a.dest: a for a in sub._actions if a.help != argparse.SUPPRESS}  # not the old spellings' aliases
    table = specs(PFSConfig)
    for name in ("expansion", "lam", "ratio", "epochs", "lr", "batch_size", "holdout", "tol"):
        spec, default = table[name]
        assert flags[dest(name, spec)].default == default and flags[dest(name, spec)].help.startswith(spec.help[:20])
    assert flags["gate_epochs"].option_strings[-1] == "--gate-epochs" and "budget_tol" in flags
    for name, good, bad in (("lam", 0.0, -0.1), ("ratio", 1.0, 0.0), ("epochs", 10_000, 10_001), ("lr", 1e-6, 0.0),
                            ("holdout", 0.0, 1.0), ("tol", 0.5, 1.0), ("expansion_mode", "width", "depth")):
        spec = table[name][0]
        assert spec.accepts(good) and not spec.accepts(bad), name
        PFSConfig(**{name: good}).validate()
        with pytest.raises(PrunelabError):
            PFSConfig(**{name: bad}).validate()
