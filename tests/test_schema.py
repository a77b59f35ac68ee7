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
