"""Inputs that could exhaust the machine or run code: each is one line (exit 2), before anything big is built.

Regression tests for hostile YAML (alias bombs, nesting, size), study validation that must not run code
or accept unusable folders, hostile weights-only checkpoints, malicious pickles, numbers at the edges
of every flag type, the memory guard on what an input can claim, and progress lines for long stages.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import CHECKPOINT_FORMAT, save_checkpoint
from prunelab.models import ArchSpec, create, resolve

HAS_PROC = sys.platform.startswith("linux") and Path("/proc/self/mounts").exists()
OK = "name: t\ndata: {name: digits}\ntrain: {epochs: 1, max_steps: 1}\nmodels: [mlp]\nmethods: [dense]\n"


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def _one_line(argv, capsys, *words) -> str:
    code, err = _cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _validate(tmp_path, text: str, capsys, *words, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return _one_line(["study", "validate", path], capsys, *words)


# ------------------------------------------------------------------------- YAML (finding 3)

def _alias_bomb(levels: int) -> str:
    """The "billion laughs" shape: each level a list of nine aliases of the one before (9**levels leaves)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghij"
    lines += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:levels])]
    return "description: {" + ", ".join(lines) + "}\n"


def test_an_alias_bomb_is_refused_while_composing_not_expanded(tmp_path, capsys):
    from prunelab.study.yaml_limits import MAX_NODES

    bomb = _alias_bomb(6)  # 9**6 = 531,441 strings once expanded, from a few hundred bytes
    assert len(bomb) < 400
    line = _validate(tmp_path, OK + bomb, capsys, f"more than {MAX_NODES:,} YAML nodes", "aliases count")
    assert line.startswith("prunelab study: error: ") and "s.yaml:6:" in line
    # the full 9-level bomb of the report (699 bytes, 4.4 GB once printed) the same, at once
    start = time.process_time()
    _validate(tmp_path, OK + _alias_bomb(9), capsys, "YAML nodes")
    assert time.process_time() - start < 30  # generous: composing stops at the limit, nothing is expanded


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, capsys):
    from prunelab.study.yaml_limits import MAX_DEPTH

    _validate(tmp_path, OK + "description: " + "[" * 100_000 + "]" * 100_000 + "\n", capsys,
              f"nesting deeper than {MAX_DEPTH} levels")
    # block style, and depth reached through an alias of a deep node
    deep = "".join("  " * i + "- \n" for i in range(MAX_DEPTH + 5))
    _validate(tmp_path, OK + "description:\n" + deep, capsys, "nesting deeper")
    nested = "[" * 30 + "]" * 30
    _validate(tmp_path, OK + f"x: &x {nested}\ndescription: {'[' * 30}*x{']' * 30}\n", capsys, "nesting deeper")


def test_a_large_spec_is_refused_by_its_size_before_it_is_parsed(tmp_path, capsys):
    from prunelab.study.yaml_limits import MAX_BYTES

    text = OK + "description:\n" + "- 1\n" * (MAX_BYTES // 4 + 10)
    line = _validate(tmp_path, text, capsys, f"the limit is {MAX_BYTES:,} bytes")
    assert f"{len(text):,} bytes" in line


def test_many_nodes_recursive_and_repeated_aliases_are_refused(tmp_path, capsys):
    from prunelab.study.yaml_limits import MAX_ALIASES, MAX_NODES

    _validate(tmp_path, OK + "description: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]\n", capsys, "YAML nodes")
    _validate(tmp_path, OK + "description: &x [*x]\n", capsys, "alias *x refers to a node that contains it")
    _validate(tmp_path, OK + "description: [&a 1, " + ",".join(["*a"] * (MAX_ALIASES + 1)) + "]\n", capsys,
              f"more than {MAX_ALIASES:,} aliases")


def test_the_recipes_and_their_aliases_stay_within_the_limits():
    from prunelab.study import load_spec

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert load_spec(path, import_user_code=False).name  # crowley_full and gupta_full reuse train blocks


def test_composer_counts_match_a_hand_count():
    """The expanded node count of a small document, against counting its expanded structure by hand."""
    import yaml

    from prunelab.study.yaml_limits import SafeLimitedLoader

    loader = SafeLimitedLoader("a: &x [1, [2, 3]]\nb: [*x, *x]\n")
    try:
        root = loader.get_single_node()
        # mapping 1 + keys a, b 2 + [1,[2,3]] 5 + b's list 1 + two aliases of 5 nodes each 10 = 19
        assert loader._nodes == 19
        anchored = root.value[0][1]
        assert loader._sizes[anchored] == (5, 3)  # five nodes, three levels
        assert loader._sizes[root] == (19, 5)  # root, b's list, then the three levels of the alias
    finally:
        loader.dispose()
    assert yaml.safe_load("a: &x [1, [2, 3]]\nb: [*x, *x]\n") == {"a": [1, [2, 3]], "b": [[1, [2, 3]]] * 2}


def test_a_data_option_bomb_on_the_command_line_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bomb = "[" + ",".join(["&a [1,1,1,1,1,1,1,1]"] + ["*a"] * 1100) + "]"
    code, err = _cli(["train", "cnn", "--data", "synthetic", "--data-option", f"shape={bomb}", "--epochs", "1",
                      "--max-steps", "1", "--out", "o.pt"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------- study validate (finding 4)

def test_validate_imports_no_plugin_and_says_so(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "prunelab_marker_plugin.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from prunelab.study.tasks import register

        @register("marker-kind", protocols=(), targets=(), uses_model=False)
        def kind(run, ctx):
            return {{"metrics": {{}}}}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "s.yaml"
    spec.write_text(OK.replace("[dense]", "[dense, {name: m, kind: marker-kind}]")
                    + "plugins: [prunelab_marker_plugin]\n")
    code, err = _cli(["study", "validate", spec], capsys)
    assert code == 0, err
    assert not marker.exists(), "study validate ran the plugin's code"
    out = capsys.readouterr().out if False else None  # stdout was read by _cli's capsys call
    assert out is None
    code = main(["study", "validate", str(spec)])
    printed = capsys.readouterr().out
    assert code == 0 and "1 runs (dense 1)" in printed and "not checked: method(s) m" in printed
    assert not marker.exists()
    # a plugin that is not on the path is still found missing, without importing anything
    spec.write_text(OK + "plugins: [prunelab_no_such_plugin_at_all]\n")
    _one_line(["study", "validate", spec], capsys, "plugin module 'prunelab_no_such_plugin_at_all' cannot be imported")
    # study run (and the Python API by default) import them: the kind is then checked and runs
    from prunelab.study import load_spec

    spec.write_text(OK.replace("[dense]", "[dense, {name: m, kind: marker-kind}]")
                    + "plugins: [prunelab_marker_plugin]\n")
    assert [r.kind for r in load_spec(spec).expand()] == ["dense", "marker-kind"]
    assert marker.exists()


@pytest.mark.parametrize("name", ["'..'", "'.'", "a/b", "/tmp/x", ".hidden", "'a b'", "'a\\\\b'", "x" * 101, "[a]",
                                  "'ü'", "''"])
def test_a_study_name_must_be_a_plain_folder_name(name, tmp_path, capsys):
    _validate(tmp_path, OK.replace("name: t", f"name: {name}"), capsys, "study name must be")


def test_ordinary_study_names_still_pass(tmp_path, capsys):
    for name in ("t", "gupta_small", "crowley-full.v2", "A1"):
        (tmp_path / "s.yaml").write_text(OK.replace("name: t", f"name: {name}"))
        assert main(["study", "validate", str(tmp_path / "s.yaml")]) == 0
    capsys.readouterr()


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
@pytest.mark.parametrize(("cache", "word"), [("/proc/self", "proc file system"), ("/sys/kernel", "sysfs"),
                                              ("/proc/self/status", "proc file system")])
def test_a_cache_on_a_kernel_file_system_is_refused_at_validate(cache, word, tmp_path, capsys):
    _validate(tmp_path, OK + f"cache: {cache}\n", capsys, f"cache {cache} is on the", word)


def test_a_cache_that_is_a_file_or_unwritable_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _validate(tmp_path, OK + f"cache: {tmp_path / 'afile'}\n", capsys, "cache:", "not a folder")
    (tmp_path / "fine").mkdir()
    (tmp_path / "s.yaml").write_text(OK + f"cache: {tmp_path / 'fine' / 'new'}\n")
    assert main(["study", "validate", str(tmp_path / "s.yaml")]) == 0
    assert not (tmp_path / "fine" / "new").exists()  # checking makes nothing
    capsys.readouterr()


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_study_run_refuses_an_unusable_cache_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(OK + "cache: /proc/self\n")
    _one_line(["study", "run", "s.yaml", "--out", "st", "--quiet"], capsys, "proc file system")
    assert not (tmp_path / "st").exists()


def test_a_spec_that_expands_to_too_many_runs_is_refused_before_building_them(tmp_path, capsys):
    from prunelab.study.spec import MAX_RUNS

    text = OK.replace("methods: [dense]", "methods: [dense, {name: g, kind: global-magnitude}]") \
        + "seeds: 10000\ntargets: [{sparsity: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]}]\n"
    line = _validate(tmp_path, text, capsys, f"more than {MAX_RUNS:,} runs")
    assert "at least" in line


def test_measure_time_and_batch_are_bounded(tmp_path, capsys):
    _validate(tmp_path, OK + "measure: {latency: true, min_time_s: 1.0e9}\n", capsys, "at most 60 seconds")
    _validate(tmp_path, OK + "measure: {latency: true, repeats: 1000000000000}\n", capsys, "at most 100,000")
    _validate(tmp_path, OK + "measure: {latency: true, batch_sizes: [1180591620717411303424]}\n", capsys,
              "at most 65,536")


def test_a_spec_model_too_large_for_memory_is_refused_at_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_MEMORY_LIMIT", "64M")
    _validate(tmp_path, OK.replace("[mlp]", "[{name: cnn, kwargs: {widths: [4096, 4096, 4096]}}]"), capsys,
              "needs", "more than the 64.0 MiB")


def test_too_many_workers_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(OK)
    _one_line(["study", "run", "s.yaml", "--out", "st", "--workers", "1000000", "--quiet"], capsys,
              "would start 1,000,000 processes")
    assert not (tmp_path / "st").exists()


# ------------------------------------------------------------------- checkpoints (finding 7)

def _ckpt(path: Path, **fields) -> Path:
    cnn = resolve("cnn", in_channels=1)
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "arch": cnn.to_dict(), "plan": None,
               "state_dict": create(cnn).state_dict(), "meta": {"input_shape": [1, 8, 8]}}
    payload.update(fields)
    torch.save(payload, path)
    return path


def test_a_checkpoint_with_huge_widths_is_refused_with_its_estimate(tmp_path, capsys):
    path = _ckpt(tmp_path / "w.pt", arch={"family": "cnn", "kwargs": {"widths": [100000] * 3, "in_channels": 1}})
    # the report's 360 GB: conv 3x3 weights 100000 x 100000 x 9 twice, plus the rest (float32)
    line = _one_line(["info", path], capsys, "model cnn(", "for its parameters and buffers", "available")
    from prunelab.models import get_family
    from prunelab.models.budget import meta_size
    from prunelab.resources import human_bytes

    size = meta_size(get_family("cnn").build, {"widths": [100000] * 3, "in_channels": 1})
    assert size > 2 * 100000 * 100000 * 9 * 4
    assert f"needs {human_bytes(size)}" in line


@pytest.mark.parametrize(("fields", "word"), [
    ({"state_dict": [torch.zeros(1)]}, "'state_dict' must map parameter names to tensors, got list"),
    ({"state_dict": {"a": "text"}}, "'state_dict' must map parameter names to tensors"),
    ({"arch": ["cnn"]}, "'arch' must be a mapping"),
    ({"arch": {"family": "cnn", "kwargs": [1, 2]}}, "'arch' must be a mapping"),
    ({"meta": {"input_shape": [100000, 100000, 100000]}}, "one input of its recorded shape 100000x100000x100000"),
    ({"meta": {"input_shape": [-1, 8, 8]}}, "positive sizes"),
    ({"meta": {"input_shape": [1] * 1000}}, "1 to 4 positive sizes"),
    ({"meta": [1]}, "'meta' must be a mapping"),
    ({"plan": [1]}, "'plan' must be a mapping"),
    ({"arch": {"family": "resnet_cifar", "kwargs": {"depth": 6 * 10**7 + 2}}}, "more than 500 modules"),
    ({"arch": {"family": "cnn", "kwargs": {"widths": "abc"}}}, "widths"),
])
def test_hostile_checkpoint_fields_are_one_line(fields, word, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("prunelab.models.budget.MAX_MODULES", 500)  # the cap is reached sooner, same path
    path = _ckpt(tmp_path / "h.pt", **fields)
    for argv in (["info", path], ["export", path, "--format", "onnx", "--out", tmp_path / "o.onnx"]):
        _one_line(argv, capsys, word)
    assert not (tmp_path / "o.onnx").exists()


def test_nan_weights_load_with_one_warning_line(tmp_path, capsys):
    from prunelab.checkpoint import NonFiniteWeightsWarning, load_model

    cnn = resolve("cnn", in_channels=1)
    state = create(cnn).state_dict()
    state["classifier.weight" if "classifier.weight" in state else next(iter(state))][0, ...] = float("nan")
    first = next(k for k, v in state.items() if v.is_floating_point() and k != next(iter(state)))
    state[first].view(-1)[0] = float("inf")
    save_checkpoint(tmp_path / "n.pt", arch=cnn.to_dict(), state_dict=state, meta={"input_shape": [1, 8, 8]})
    bad = sum(1 for v in state.values() if v.is_floating_point() and not torch.isfinite(v).all())
    assert bad == 2
    with pytest.warns(NonFiniteWeightsWarning, match=f"2 of {len(state)} tensors hold NaN or inf"):
        load_model(tmp_path / "n.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite checkpoint loads without a word
        _ckpt(tmp_path / "f.pt")
        load_model(tmp_path / "f.pt")
    assert main(["info", str(tmp_path / "n.pt")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunelab info: warning: checkpoint") and "NaN or inf" in err[0]


# ----------------------------------------------------------------------- pickles (finding 9)

class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(("make", "refused"), [
    (lambda m: ("zip", _Payload(m)), "unsupported GLOBAL posix.system"),
    (lambda m: ("zip", {"format": CHECKPOINT_FORMAT, "arch": {"family": "cnn"}, "meta": {"x": _Payload(m)}}),
     "unsupported GLOBAL posix.system"),
    (lambda m: ("zip", _EvalPayload(m)), "eval, not an allowed global"),
    (lambda m: ("zip", torch.nn.Linear(2, 2)), "unsupported GLOBAL torch.nn.modules.linear.Linear"),
    (lambda m: ("bytes", b"\x80\x02cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R."), "__import__"),
    (lambda m: ("raw", _Payload(m)), "unsupported"),
])
def test_a_refused_pickle_names_what_was_refused_and_runs_nothing(make, refused, tmp_path, capsys):
    if os.name != "posix" and "posix" in refused:
        pytest.skip("os.system pickles as nt.system here")
    marker = tmp_path / "PAYLOAD_RAN"
    kind, payload = make(marker)
    path = tmp_path / "evil.pt"
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "bytes":  # a pickle that would return the os module object
        path.write_bytes(payload)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    for argv in (["info", path], ["train", path, "--data", "digits", "--epochs", "1", "--out", tmp_path / "o.pt"],
                 ["export", path, "--format", "sparse", "--out", tmp_path / "s.pt"]):
        line = _one_line(argv, capsys, "cannot be loaded safely", refused)
        assert "weights_only" not in line and "Re-running" not in line and "trust" not in line, line
    assert not marker.exists(), "a pickle payload ran"


def test_a_refusal_keeps_what_was_refused_and_drops_the_advice(tmp_path, monkeypatch):
    """torch 2.13's three message shapes (a blocked module, a global not allowed, an unknown opcode)."""
    import pickle as pickle_module

    from prunelab.io import torch_load

    advice = ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` "
              "argument in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set "
              "to `False` will likely succeed, but it can result in arbitrary code execution. Do it only if you "
              "got the file from a trusted source.\n")
    docs = "\n\nCheck the documentation of torch.load to learn more about types accepted by default."
    cases = {
        advice + "\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked." + docs:
            "unsupported GLOBAL posix.system whose module posix is blocked",
        advice + "Please file an issue with the following so that we can make `weights_only=True` compatible with "
                 "your use case: WeightsUnpickler error: \n\nUnsupported operand 149" + docs:
            "unsupported operand 149",
        "Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
        "steps only if you trust the source of the checkpoint\x1b[0m.\n\t(1) " + advice + "\tWeightsUnpickler error: "
        "Unsupported global: GLOBAL torch.nn.modules.linear.Linear was not an allowed global by default. Please use "
        "`torch.serialization.add_safe_globals([Linear])` to allowlist this global." + docs:
            "unsupported GLOBAL torch.nn.modules.linear.Linear, not an allowed global",
    }
    path = tmp_path / "x.pt"
    path.write_bytes(b"x")
    for text, detail in cases.items():
        def refuse(*args, _text=text, **kwargs):
            raise pickle_module.UnpicklingError(_text)

        monkeypatch.setattr(torch, "load", refuse)
        with pytest.raises(PrunelabError) as info:
            torch_load(path)
        assert str(info.value).endswith(f"not a weights-only file ({detail})"), str(info.value)


# -------------------------------------------------------------------- numbers (finding 8)

@pytest.mark.parametrize(("argv", "words"), [
    (["--seed", "1180591620717411303424"], ("--seed", "seeds go from 0 to 9223372036854775807")),
    (["--seed", "-1"], ("seeds go from 0",)),
    (["--milestones", "nan"], ("--milestones", "not a finite number")),
    (["--milestones", "0.5", "1e400"], ("not a finite number",)),
    (["--lr", "nan"], ("--lr", "not a finite number")),
    (["--lr", "inf"], ("not a finite number",)),
    (["--lr", "0"], ("--lr must be a positive number",)),
    (["--lr", "-0.1"], ("--lr must be a positive number",)),
    (["--epochs", "9223372036854775808"], ("--epochs", "out of range")),
    (["--max-steps", "-9223372036854775809"], ("out of range",)),
    (["--weight-decay=-inf"], ("not a finite number",)),
])
def test_numbers_at_the_edges_are_one_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line(["train", "cnn", "--data", "digits", "--epochs", "1", "--max-steps", "1", "--out", "o.pt", *argv],
              capsys, *words)
    assert list(tmp_path.iterdir()) == []


def test_train_config_refuses_non_finite_milestones_and_seeds_out_of_range():
    from prunelab.train import TrainConfig

    with pytest.raises(PrunelabError, match="milestones must be finite"):
        TrainConfig(milestones=[math.nan]).validate()
    with pytest.raises(PrunelabError, match="seed must be an integer from 0 to"):
        TrainConfig(seed=2**70).validate()
    with pytest.raises(PrunelabError, match="'epochs' is out of range"):
        TrainConfig.from_dict({"epochs": 2**70})


def test_info_num_classes_and_bench_input_size_are_refused_with_estimates(capsys):
    line = _one_line(["info", "cnn", "--num-classes", "1000000000000"], capsys, "num_classes=1000000000000", "needs")
    # cnn's classifier: 64 features x 10**12 classes + 10**12 biases, float32
    assert "236.5 TiB" in line and f"{(65 * 10**12 * 4) / 2**40:.1f} TiB" == "236.5 TiB"
    line = _one_line(["bench", "cnn", "--input-size", "1x100000x100000"], capsys, "an input batch 1x1x100000x100000")
    assert f"{10**10 * 4 / 2**30:.1f} GiB" in line
    _one_line(["bench", "cnn", "--batch-sizes", "1000000000"], capsys, "an input batch 1000000000x")
    _one_line(["info", "cnn", "--input-size", "1x1x1x1x1"], capsys, "1 to 4 positive integers")


# ----------------------------------------------------------------------- the resource guard

def test_allocation_budget_refuses_the_tensor_that_passes_it_before_allocating():
    from prunelab.resources import AllocationRefused, allocation_budget

    with allocation_budget(10_000) as mode:
        torch.empty(1000)  # 4,000 bytes
        torch.zeros((10, 10), dtype=torch.float64)  # 800 bytes
        assert mode.total == 4000 + 800
        with pytest.raises(AllocationRefused) as info:
            torch.ones(2000)  # would bring the total to 12,800
        assert info.value.total == 12_800
        with torch.device("meta"):
            torch.empty(10**12)  # free: no storage
    assert mode.total == 12_800
    with allocation_budget(100), pytest.raises(AllocationRefused):
        torch.nn.Linear(100, 100)
    with allocation_budget(10**9) as mode:  # each factory's way of giving its shape and type
        torch.zeros(3, dtype=torch.float64)
        torch.full((2, 2), 1.0)
        torch.randint(0, 5, (10,))
        torch.eye(4)
        torch.rand(3, 4)
        torch.normal(0.0, 1.0, size=(5,))
    assert mode.total == 3 * 8 + 4 * 4 + 10 * 8 + 16 * 4 + 12 * 4 + 5 * 4


def test_the_memory_limit_reads_the_environment(monkeypatch):
    from prunelab.resources import available_memory, check_claim, parse_bytes

    assert parse_bytes("8G") == 8 * 2**30 and parse_bytes("512M") == 512 * 2**20 and parse_bytes("1000") == 1000
    monkeypatch.setenv("PRUNELAB_MEMORY_LIMIT", "1M")
    assert available_memory() == 2**20
    check_claim("a small thing", 2**20)
    with pytest.raises(PrunelabError, match=r"a big thing needs 2\.0 MiB, more than the 1\.0 MiB"):
        check_claim("a big thing", 2**21)
    monkeypatch.setenv("PRUNELAB_MEMORY_LIMIT", "lots")
    with pytest.raises(PrunelabError, match="PRUNELAB_MEMORY_LIMIT"):
        available_memory()


def test_model_construction_is_refused_with_a_hand_counted_estimate(monkeypatch):
    """An MLP 64 -> 1000 -> 1000 -> 10, each hidden layer Linear + BatchNorm1d: float32 weights, biases, BN
    scales, shifts and running statistics, and one int64 batch counter per BatchNorm."""
    spec = ArchSpec("mlp", {"in_features": 64, "hidden_widths": [1000, 1000], "num_classes": 10})
    linear = (64 * 1000 + 1000) + (1000 * 1000 + 1000) + (1000 * 10 + 10)
    batchnorm = 2 * (4 * 1000)
    by_hand = 4 * (linear + batchnorm) + 2 * 8
    model = create(spec)
    assert sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) == by_hand
    from prunelab.resources import human_bytes

    monkeypatch.setattr("prunelab.models.budget.MAX_MODULES", 500)
    monkeypatch.setenv("PRUNELAB_MEMORY_LIMIT", "1M")
    with pytest.raises(PrunelabError) as info:
        create(spec)
    assert f"needs {human_bytes(by_hand)} for its parameters and buffers, more than the 1.0 MiB" in str(info.value)
    with pytest.raises(PrunelabError, match=r"needs at least 1\.0 MiB"):  # too deep to count: what was asked
        create("resnet20", depth=6 * 10**6 + 2)
    monkeypatch.delenv("PRUNELAB_MEMORY_LIMIT")
    with pytest.raises(PrunelabError, match="more than 500 modules"):
        create("resnet20", depth=6 * 10**6 + 2)


def test_data_sample_counts_are_checked_before_allocation(monkeypatch):
    from prunelab.data import load

    monkeypatch.setenv("PRUNELAB_MEMORY_LIMIT", "64M")
    with pytest.raises(PrunelabError, match="synthetic data of 100,000,768 samples"):
        load("synthetic", shape="3x32x32", n_train=10**8)
    with pytest.raises(PrunelabError, match="mnist1d with 2,000,000 samples"):
        load("mnist1d", num_samples=2_000_000)
    with pytest.raises(PrunelabError, match="mnist1d num_samples must be <= 2,000,000, got 1000000000"):
        load("mnist1d", num_samples=10**9)
    with pytest.raises(PrunelabError, match="augmentation pad 100"):
        load("synthetic", shape="3x8x8", n_train=8, n_val=0, n_test=0, pad=100, flip=False)


# ----------------------------------------------------------------------- progress (finding 10)

def test_stages_print_on_a_terminal_and_in_a_log_only_when_long():
    from prunelab.train.progress import reporting, stage

    with stage("silent when nothing reports"):
        pass
    tty = io.StringIO()
    with reporting("prunelab x", stream=tty, tty=True), stage("ranking channels"):
        pass
    lines = tty.getvalue().splitlines()
    assert lines[0] == "prunelab x: ranking channels ..." and lines[1].startswith("prunelab x: ranking channels: "
                                                                                  "done in ")
    log = io.StringIO()
    with reporting("prunelab x", stream=log, tty=False, after_s=30.0), stage("short"):
        pass
    assert log.getvalue() == ""
    with reporting("prunelab x", stream=log, tty=False, after_s=0.0), stage("long"):
        time.sleep(0.5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("prunelab x: long (running for") and "done in" in lines[1]
    with reporting("prunelab x", stream=log, enabled=False), stage("quiet"):
        pass
    assert len(log.getvalue().splitlines()) == 2


def test_a_structured_prune_reports_its_stages_unless_quiet(tmp_path, capsys, monkeypatch):
    import prunelab.train.progress as progress

    monkeypatch.setattr(progress, "LOG_AFTER_S", 0.0)
    spec = ArchSpec("wrn", {"depth": 10, "widths": [4, 8, 16, 16], "in_channels": 1, "num_classes": 10})
    save_checkpoint(tmp_path / "w.pt", arch=spec.to_dict(), state_dict=create(spec).state_dict())
    argv = ["prune", str(tmp_path / "w.pt"), "--structured", "--data", "digits", "--target-channels", "24",
            "--prune-every", "1", "--channels-per-prune", "4", "--epochs", "1", "--max-steps", "3", "--batch-size",
            "64", "--allow-miss", "--out", str(tmp_path / "p.pt")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "prunelab prune: finding channel groups" in err and "prunelab prune: fine-tuning and pruning" in err
    assert main([*argv, "--quiet"]) == 0
    assert "prunelab prune: finding" not in capsys.readouterr().err
