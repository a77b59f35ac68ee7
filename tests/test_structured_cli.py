"""``prunelab prune --structured`` end to end on the embedded digits data, plans in a fresh process,
ONNX export of the result, and bad input (exit status 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.io import load_checkpoint, save_checkpoint
from prunelab.measure import count_params
from prunelab.models import ArchSpec, create

torch.set_num_threads(1)

WRN = ArchSpec("wrn", {"depth": 10, "widths": [4, 8, 16, 16], "in_channels": 1, "num_classes": 10})
DENSENET = ArchSpec("densenet", {"depth": 10, "growth_rate": 4, "in_channels": 1, "num_classes": 10})
FAST = ["--epochs", "1", "--batch-size", "64", "--lr", "0.01", "--schedule", "constant", "--device", "cpu",
        "--pretrain-epochs", "0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    out = {}
    for name, spec in (("wrn", WRN), ("densenet", DENSENET)):
        torch.manual_seed(0)
        model = create(spec)
        path = root / f"{name}.pt"
        save_checkpoint(path, arch=spec.to_dict(), state_dict=model.state_dict())
        out[name] = (path, count_params(model).params)
    return out


def _run(*argv: str) -> int:
    return main(["prune", *argv])


@pytest.mark.parametrize("arch,criterion,schedule", [
    ("wrn", "fisher", "iterative"), ("densenet", "l1", "oneshot"), ("densenet", "bn", "iterative"),
    ("wrn", "random", "oneshot"), ("densenet", "fisher", "oneshot"),
])
def test_prune_to_a_parameter_target_saves_reloads_and_exports(checkpoints, tmp_path, capsys, arch, criterion,
                                                                schedule):
    src, params = checkpoints[arch]
    target = int(params * 0.75)
    out = tmp_path / "pruned.pt"
    argv = [str(src), "--data", "digits", "--structured", "--criterion", criterion, "--target-params", str(target),
            "--prune-every", "2", "--channels-per-prune", "4", "--out", str(out), "--json", *FAST]
    if schedule == "oneshot":
        argv.append("--oneshot")
    else:
        argv[argv.index("--epochs") + 1] = "50"
        argv += ["--checkpoint-every-prunes", "2"]
    assert _run(*argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads(out.with_suffix(".json").read_text())
    assert summary["target"]["reached"] and summary["params"]["after"] <= target
    assert summary["params"]["before"] == params
    loaded = load_model(out)
    assert count_params(loaded.model).params == summary["params"]["after"]
    assert loaded.plan["base"] == summary["arch"]
    assert all(row["after"] <= row["before"] for row in summary["groups"])
    if schedule == "iterative":
        assert summary["checkpoints"] and all(load_model(p).plan for p in summary["checkpoints"])
    if criterion == "fisher" and schedule == "iterative":
        ort = pytest.importorskip("onnxruntime")
        from prunelab.export.onnx import onnx_bytes_of

        x = torch.randn(2, 1, 8, 8)
        sess = ort.InferenceSession(onnx_bytes_of(loaded.model, (1, 8, 8)))
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), loaded.model(x), rtol=1e-4, atol=1e-4)


def test_plan_loads_in_a_fresh_process(checkpoints, tmp_path):
    src, params = checkpoints["densenet"]
    out = tmp_path / "p.pt"
    assert _run(str(src), "--data", "digits", "--structured", "--criterion", "l1", "--oneshot",
                "--target-channels", "20", "--out", str(out), *FAST) == 0
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; from prunelab.checkpoint import load_model; m = load_model(sys.argv[1]).model; "
            "x = torch.load(sys.argv[2]); torch.save(m(x).detach(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, timeout=120)
    with torch.no_grad():
        want = load_model(out).model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want)
    assert sum(len(g["kept"]) for g in load_checkpoint(out)["plan"]["groups"]) == 20


def _assert_rejected(argv, tmp_path, capsys, match: str) -> None:
    out = tmp_path / "never.pt"
    try:
        rc = _run(*argv, "--out", str(out))
    except SystemExit as exc:  # argparse rejects unknown choices before run()
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err and len(err.strip().splitlines()) == 1
    assert not any(p.name.startswith(("never", ".never")) for p in tmp_path.iterdir())


def test_every_prune_reports_its_coverage_and_what_it_left_out(checkpoints, tmp_path, capsys):
    src, params = checkpoints["densenet"]
    out = tmp_path / "p.pt"
    assert _run(str(src), "--data", "digits", "--structured", "--criterion", "l1", "--oneshot", "--min-channels",
                "0.5", "--target-params", str(int(params * 0.9)), "--out", str(out), *FAST) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "prunable group(s)" in x)
    assert "of the parameters are in prunable layers" in line and "of the MACs" in line
    assert "not pruned:" in err  # DenseNet's concatenated growth channels, each with its reason


def test_a_ratio_target_is_a_fraction_of_the_dense_count(checkpoints, tmp_path, capsys):
    src, params = checkpoints["densenet"]
    out = tmp_path / "r.pt"
    assert _run(str(src), "--data", "digits", "--structured", "--criterion", "l1", "--oneshot",
                "--target-params-ratio", "0.9", "--out", str(out), *FAST) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["target"]["kind"] == "params" and summary["target"]["value"] == round(0.9 * params)
    assert summary["params"]["after"] <= round(0.9 * params) and summary["target"]["reached"]
    capsys.readouterr()
    _assert_rejected([str(src), "--data", "digits", "--structured", "--target-params-ratio", "1.5", *FAST], tmp_path,
                     capsys, "--target-params-ratio")


def test_bad_input_exits_2_and_writes_nothing(checkpoints, tmp_path, capsys):
    src, params = checkpoints["wrn"]
    base = [str(src), "--data", "digits", "--structured", *FAST]
    _assert_rejected([*base, "--target-params", str(params + 1)], tmp_path, capsys, "not below")
    _assert_rejected([*base, "--target-params", "10"], tmp_path, capsys, "of the model's params is prunable")
    _assert_rejected([*base, "--target-params", "1000", "--min-channels", "1000"], tmp_path, capsys,
                     "is above the width of group")
    _assert_rejected([*base, "--target-params", "1000", "--min-channels", "1.5"], tmp_path, capsys,
                     "min-channels must be a whole number >= 1 or a fraction")
    _assert_rejected([*base, "--target-params", "1000", "--criterion", "obd"], tmp_path, capsys, "--criterion")
    _assert_rejected([*base, "--target-params", "1000", "--scope", "everything"], tmp_path, capsys, "--scope")
    _assert_rejected(base, tmp_path, capsys, "a target is required")
    # a plan that does not fit the base model
    spec_model = create(WRN)
    plan = {"format": "prunelab-channel-plan", "version": 1, "base": WRN.to_dict(), "scope": "internal",
            "input_shape": [1, 8, 8],
            "groups": [{"name": "block1.layer.0", "root": "block1.layer.0.conv1", "width": 99, "kept": [0]}]}
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, arch=WRN.to_dict(), state_dict=spec_model.state_dict(), plan=plan)
    _assert_rejected([str(bad), "--data", "digits", "--structured", "--target-channels", "4", *FAST], tmp_path,
                     capsys, "does not fit the base model")
