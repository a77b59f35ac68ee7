"""Study specs: parsing, one-line errors with line numbers, expansion into runs with stable ids."""

from __future__ import annotations

import textwrap

import pytest

from prunelab.errors import PrunelabError
from prunelab.study import parse_spec
from prunelab.study.tasks import RunOutput, register

BASE = """
name: t
data: digits
models: [a, b]
methods:
  - {name: s, kind: sleep}
"""


def spec(text: str, base: str = BASE):
    return parse_spec(textwrap.dedent(base) + textwrap.dedent(text), source="study.yaml")


def error(text: str, base: str = BASE) -> str:
    with pytest.raises(PrunelabError) as info:
        spec(text, base)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@register("test-finetune-only", protocols=("finetune", "scratch-e"), targets=("sparsity",), uses_model=False)
def _finetune_only(run, ctx):
    return RunOutput()


def test_malformed_yaml_reports_its_line():
    msg = error("targets: [{sparsity: 0.5}\nseeds: 2\n")
    assert msg.startswith("study.yaml:8: malformed YAML")  # the line where the list breaks


def test_malformed_yaml_indentation_line():
    with pytest.raises(PrunelabError, match=r"^x.yaml:3: malformed YAML"):
        parse_spec("name: t\ndata: digits\n  models: [a]\n", source="x.yaml")


def test_duplicate_key_is_an_error_with_its_line():
    assert error("seeds: 2\nseeds: 3\n").startswith("study.yaml:8: malformed YAML: duplicate key 'seeds'")


def test_unknown_top_level_key_lists_valid_keys():
    msg = error("seed: 3\n")
    assert msg.startswith("study.yaml:7: unknown study key 'seed'") and "seeds" in msg


def test_unknown_model_is_checked_against_the_zoo():
    msg = error("", "name: t\ndata: digits\nmodels:\n  - mlp\n  - no-such-net\nmethods: [dense]\n")
    assert msg.startswith("study.yaml:5: unknown model 'no-such-net'; valid choices:")
    assert "wrn-16-2" in msg


def test_synthetic_kinds_accept_any_model_label():
    assert len(spec("").expand()) == 2


def test_unknown_dataset_names_the_valid_ones():
    msg = error("", "name: t\ndata: digitz\nmodels: [mlp]\nmethods: [dense]\n")
    assert msg.startswith("study.yaml:2: unknown dataset 'digitz'") and "mnist1d" in msg


def test_unknown_method_kind():
    msg = error("", "name: t\ndata: digits\nmodels: [mlp]\nmethods:\n  - dense\n  - {name: x, kind: magic}\n")
    assert msg.startswith("study.yaml:6: unknown method kind 'magic'") and "dense" in msg


def test_unknown_protocol():
    msg = error("protocols: [finetune, scrath-b]\n")
    assert "unknown protocol 'scrath-b'" in msg and "scratch-b" in msg


@pytest.mark.parametrize("target, fragment", [
    ("{sparsity: 1.0}", "impossible target sparsity=1.0"),
    ("{sparsity: -0.1}", "impossible target sparsity=-0.1"),
    ("{params: 0}", "impossible target params=0"),
    ("{params: 10.5}", "impossible target params=10.5"),
    ("{macs_ratio: 1.5}", "impossible target macs_ratio=1.5"),
    ("{compression: 0.5}", "impossible target compression=0.5"),
    ("{sparsity: high}", "target sparsity must be a number"),
    ("{flops: 3}", "unknown target 'flops'"),
    ("{sparsity: 0.5, params: 10}", "one-key mapping"),
])
def test_impossible_targets(target, fragment):
    msg = error(f"targets: [{target}]\n")
    assert fragment in msg and msg.startswith("study.yaml:")


def test_unknown_method_parameter_is_reported_by_its_kind():
    msg = error("", "name: t\ndata: digits\nmodels: [a]\nmethods:\n  - {name: s, kind: sleep, secs: 1}\n")
    assert msg.startswith("study.yaml:5: method 's': unknown parameter(s) ['secs']")


def test_training_settings_are_validated():
    assert "unknown training setting(s) ['epoch']" in error("train: {epoch: 3}\n")
    assert "set seeds with the study's 'seeds' axis" in error("train: {seed: 3}\n")
    assert "unknown optimizer 'sgdd'" in error("train: {optimizer: sgdd}\n")


def test_exclude_pattern_that_matches_nothing_is_an_error():
    assert "matches no run" in error("exclude: [{model: a, seed: 7}]\n")
    assert "unknown model 'c'" in error("exclude: [{model: c}]\n")


def test_expansion_axes_exclude_include_and_runs():
    s = spec("""
        targets: [{sparsity: [0.5, 0.9]}, {params: 1000}]
        protocols: [finetune, scratch-e]
        seeds: 3
        exclude: [{target: {params: 1000}, protocol: scratch-e}]
    """)
    runs = s.expand()
    assert len(runs) == 2 * 3 * 2 * 3 - 2 * 3  # models x targets x protocols x seeds, minus the excluded
    assert len({r.run_id for r in runs}) == len(runs)
    assert {r.seed for r in runs} == {0, 1, 2}
    assert all(r.train["seed"] == r.seed for r in runs)
    s2 = spec("targets: [{sparsity: [0.5, 0.9]}]\nseeds: 2\ninclude: [{model: b, target: {sparsity: 0.9}}]\n")
    assert [(r.model, r.target, r.seed) for r in s2.expand()] == [("b", {"sparsity": 0.9}, 0),
                                                                  ("b", {"sparsity": 0.9}, 1)]
    s3 = spec("targets: [{sparsity: [0.5, 0.9]}]\nseeds: 2\n"
              "runs: [{model: a, seeds: [5]}, {target: {sparsity: 0.5}}]\n")
    combos = [(r.model, r.target["sparsity"], r.seed) for r in s3.expand()]
    assert combos == [("a", 0.5, 5), ("a", 0.9, 5), ("a", 0.5, 0), ("a", 0.5, 1), ("b", 0.5, 0), ("b", 0.5, 1)]


def test_kind_declarations_collapse_and_restrict_axes():
    base = "name: t\ndata: digits\nmodels: [mlp]\n"
    s = spec("methods: [dense, {name: f, kind: test-finetune-only}]\ntargets: [{sparsity: [0.5, 0.9]}]\n"
             "protocols: [finetune, scratch-e]\nseeds: 2\n", base)
    runs = s.expand()
    dense = [r for r in runs if r.kind == "dense"]
    assert len(dense) == 2 and all(r.target is None and r.protocol is None for r in dense)  # one per seed
    assert len(runs) - len(dense) == 2 * 2 * 2
    msg = error("methods: [{name: f, kind: test-finetune-only}]\ntargets: [{sparsity: 0.5}]\nprotocols: [pfs]\n", base)
    assert "cannot run protocol 'pfs'" in msg and msg.startswith("study.yaml:4:")
    msg = error("methods: [{name: f, kind: test-finetune-only}]\ntargets: [{params: 100}]\n", base)
    assert "cannot aim at target 'params'" in msg
    assert "needs a target" in error("methods: [{name: f, kind: test-finetune-only}]\n", base)
    # the method's own axes replace the study's; no protocol means the kind's default
    s = spec("methods: [{name: f, kind: test-finetune-only, targets: [{sparsity: 0.8}]}]\n"
             "targets: [{params: 100}]\n", base)
    assert [(r.target, r.protocol) for r in s.expand()] == [({"sparsity": 0.8}, "finetune")]


def test_run_ids_are_stable_and_follow_the_resolved_config():
    ids = [r.run_id for r in spec("seeds: 2\n").expand()]
    assert ids == [r.run_id for r in spec("seeds: 2\n").expand()]
    renamed = parse_spec(textwrap.dedent(BASE).replace("name: t", "name: other") + "seeds: 2\n")
    assert ids == [r.run_id for r in renamed.expand()]  # the study name is not part of a run's identity
    changed = [r.run_id for r in spec("seeds: 2\ntrain: {lr: 0.01}\n").expand()]
    assert not set(ids) & set(changed)
    default_filled = [r.run_id for r in spec("seeds: 2\n", BASE.replace("kind: sleep", "kind: sleep, epochs: 2"))
                      .expand()]
    assert default_filled == ids  # parameters are resolved (defaults filled) before hashing
    run = spec("").expand()[0]
    assert run.params["seconds"] == 0.0 and run.train["epochs"] == 10


def test_spec_hash_changes_with_the_spec():
    assert spec("seeds: 2\n").spec_hash == spec("seeds: [0, 1]\n").spec_hash
    assert spec("seeds: 2\n").spec_hash != spec("seeds: 3\n").spec_hash


# ------------------------------------------------------------------------------ plugins, types, devices, YAML

def test_plugin_kinds_are_imported_before_methods_are_checked(tmp_path, monkeypatch):
    (tmp_path / "prunelab_test_plugin_kinds.py").write_text(textwrap.dedent("""
        from prunelab.study.tasks import RunOutput, register

        @register("test-plugin-kind", protocols=(), targets=(), uses_model=False)
        def plugin_kind(run, ctx):
            return RunOutput()
    """))
    (tmp_path / "prunelab_test_broken_plugin.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = "name: t\ndata: digits\nmodels: [mlp]\n"
    runs = spec("plugins: [prunelab_test_plugin_kinds]\nmethods: [dense, {name: p, kind: test-plugin-kind}]\n",
                base).expand()
    assert [r.kind for r in runs] == ["dense", "test-plugin-kind"]
    msg = error("plugins: [prunelab_test_no_such_module]\nmethods: [{name: p, kind: test-plugin-kind-x}]\n", base)
    assert msg.startswith("study.yaml:4: plugin module 'prunelab_test_no_such_module' cannot be imported")
    msg = error("methods: [dense]\nplugins: [prunelab_test_broken_plugin]\n", base)
    assert msg.startswith("study.yaml:5: plugin module 'prunelab_test_broken_plugin' cannot be imported")
    assert "broken on import" in msg


def test_train_device_form_is_checked_without_needing_the_device():
    msg = error("train:\n  epochs: 1\n  device: gpu7\n")
    assert msg.startswith("study.yaml:9: unknown device 'gpu7'; valid choices: auto, cpu, cuda, cuda:N")
    assert "unknown device 'cuda:x'" in error("train: {device: 'cuda:x'}\n")
    assert "unknown device 'gpu'" in error("", BASE.replace("kind: sleep}", "kind: sleep, train: {device: gpu}}"))
    for device in ("auto", "cpu", "cuda", "cuda:3", "mps"):  # the form only: a spec may be meant for a GPU machine
        assert spec(f"train: {{device: '{device}'}}\n").expand()[0].train["device"] == device


@pytest.mark.parametrize("setting, fragment", [
    ("augment: 'false'", "training setting 'augment' must be true or false, got 'false'"),
    ("augment: maybe", "training setting 'augment' must be true or false, got 'maybe'"),
    ("amp: 3", "training setting 'amp' must be true or false, got 3"),
    ("epochs: 1.5", "training setting 'epochs' must be an integer, got 1.5"),
    ("epochs: true", "training setting 'epochs' must be an integer, got True"),
    ("max_steps: 2.5", "training setting 'max_steps' must be an integer or null, got 2.5"),
    ("lr: abc", "training setting 'lr' must be a number, got 'abc'"),
    ("lr: '1e-3'", "training setting 'lr' must be a number, got '1e-3'"),
    ("milestones: oops", "training setting 'milestones' must be a list of numbers, got 'oops'"),
    ("milestones: [0.5, x]", "training setting 'milestones' must be a list of numbers, got [0.5, 'x']"),
    ("momentum: [1]", "training setting 'momentum' must be a number, got [1]"),
    ("device: 5", "training setting 'device' must be a string, got 5"),
])
def test_training_settings_must_have_their_declared_type(setting, fragment):
    msg = error(f"train:\n  batch_size: 8\n  {setting}\n")
    assert msg.startswith("study.yaml:9: ") and fragment in msg, msg  # the setting's own line
    msg = error("", BASE.replace("kind: sleep}", f"kind: sleep, train: {{{setting}}}}}"))
    assert msg.startswith("study.yaml:6: ") and fragment in msg, msg


def test_finetune_settings_must_have_their_declared_type():
    base = "name: t\ndata: digits\nmodels: [mlp]\n"
    msg = error("methods: [{name: g, kind: global-magnitude, finetune: {lr: abc}}]\ntargets: [{sparsity: 0.5}]\n",
                base)
    assert msg.startswith("study.yaml:4: method 'g': finetune: training setting 'lr' must be a number, got 'abc'")


def test_well_typed_training_settings_are_kept():
    run = spec("train: {lr: 1, max_steps: null, milestones: [1, 0.5], augment: false, amp: true}\n").expand()[0]
    assert run.train["lr"] == 1 and run.train["max_steps"] is None and run.train["milestones"] == [1, 0.5]
    assert run.train["augment"] is False and run.train["amp"] is True


@pytest.mark.parametrize("measure, fragment", [
    ("{latency: maybe}", "measure latency must be true or false, got 'maybe'"),
    ("{latency: 1}", "measure latency must be true or false, got 1"),
    ("{batch_sizes: [1, 2.5]}", "measure batch_sizes must be positive integers"),
    ("{threads: 1.5}", "measure threads must be a positive integer"),
    ("{repeats: true}", "measure repeats must be a positive integer"),
    ("{repeats: null}", "measure repeats must be a positive integer"),
    ("{min_time_s: fast}", "measure min_time_s must be a number >= 0"),
    ("{device: 5}", "measure device must be a device name"),
    ("{device: gpu7}", "unknown device 'gpu7'"),
])
def test_measure_settings_must_have_their_declared_type(measure, fragment):
    msg = error(f"measure: {measure}\n")
    assert msg.startswith("study.yaml:7: ") and fragment in msg, msg


def test_yaml_12_floats_are_numbers():
    train = spec("train: {lr: 1e-3, weight_decay: 5E-4, gamma: .5, warmup_epochs: 1.0e0, label_smoothing: 1e-1}\n"
                 "targets: [{compression: 5E+2}]\n").expand()[0]
    assert train.train["lr"] == 1e-3 and train.train["weight_decay"] == 5e-4 and train.train["gamma"] == 0.5
    assert train.train["warmup_epochs"] == 1.0 and train.train["label_smoothing"] == 0.1
    assert train.target == {"compression": 500.0}
    assert "lr must be >= 0, got -0.0001" in error("train: {lr: -1e-4}\n")
    import yaml

    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # PyYAML's own loaders are left alone


@pytest.mark.parametrize("text, line, method", [
    ("targets: [{sparsity: []}]\n", 7, "s"),
    ("targets: []\n", 7, "s"),
    ("protocols: []\n", 7, "s"),
])
def test_a_method_that_expands_to_no_runs_is_an_error(text, line, method):
    msg = error(text)
    assert msg.startswith(f"study.yaml:{line}: method {method!r} expands to no runs"), msg


def test_a_method_with_its_own_empty_axis_is_an_error():
    base = "name: t\ndata: digits\nmodels: [a]\nmethods:\n  - {name: n, kind: noop}\n"
    msg = error("  - {name: s, kind: sleep, targets: []}\ntargets: [{sparsity: 0.5}]\n", base)
    assert msg.startswith("study.yaml:6: method 's' expands to no runs: its 'targets' list is empty"), msg
    msg = error("  - {name: s, kind: sleep, protocols: []}\nseeds: 1\n", base)
    assert msg.startswith("study.yaml:6: method 's' expands to no runs: its 'protocols' list is empty"), msg
    # an exclude pattern that removes a method on purpose is not an error
    kept = spec("  - {name: s, kind: sleep}\nexclude: [{method: s}]\n", base).expand()
    assert {r.method for r in kept} == {"n"}


def test_a_huge_seed_count_is_refused_not_expanded():
    with pytest.raises(PrunelabError, match="1 <= N <= 10,000"):
        parse_spec("name: s\ndata: digits\nmodels: [mlp]\nmethods: [dense]\nseeds: 1000000000000\n")


def test_a_study_run_expands_its_spec_once(tmp_path, monkeypatch):
    """Loading checks the runs by expanding the spec; the data check, the store and the runner reuse that
    expansion (it used to run three times per ``study run``). A changed spec is expanded again."""
    from prunelab.study import run_study
    from prunelab.study.spec import model

    calls = []
    real = model.expand_runs
    monkeypatch.setattr(model, "expand_runs", lambda s: calls.append(s.name) or real(s))
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(BASE).replace("kind: sleep", "kind: noop") + "seeds: 2\n")
    result = run_study(path, tmp_path / "out", progress=False)
    assert calls == ["t"] and result.counts["done"] == 4
    s = spec("seeds: 2\n")
    first = s.expand()
    first[0].seed = 99  # callers get copies: changing one changes no later expansion
    assert [r.seed for r in s.expand()] == [0, 1, 0, 1] and len(calls) == 2
    s.seeds = [5]
    assert [r.seed for r in s.expand()] == [5, 5] and len(calls) == 3
