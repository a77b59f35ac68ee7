"""Masks hold in every path that trains a masked model; re-pruning never revives weights silently;
a diverging run stops with one line.

The checks (:mod:`mask_checks`) read the masks straight from the ``<param>_mask`` buffers or the
saved state_dict, and the weights and optimiser state as plain tensors, independently of prunelab's
mask helpers. The property tests observe every optimiser step of every trainer a path builds (CLI,
API, study, resume, DDP with two gloo processes): each masked weight and its optimiser state are
exactly zero, every channel a structured pruner has masked reads as exactly zero, and the same holds
for what was saved, loaded back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import prunelab.data as D
from mask_checks import (
    MLP,
    assert_saved_zero_under_masks,
    assert_zero_under_masks,
    mask_state,
    masks,
    masks_of,
    observed,
    recipe_config,
    recipes,
    structured_cases,
    structured_pruner,
)
from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import save_checkpoint
from prunelab.models import create
from prunelab.prune.structured import StructuredPruner
from prunelab.prune.unstructured import PruneConfig, kept_count, prune, prune_global
from prunelab.train import Callback, TrainConfig, Trainer, train

torch.set_num_threads(1)

FAST = ["--data", "digits", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def digits():
    return D.load("digits")


def pruned_checkpoint(path, sparsity: float = 0.8, method: str = "uniform", seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create(MLP)
    prune(model, PruneConfig(method, sparsity, seed=seed), warn=False)
    save_checkpoint(path, arch=MLP.to_dict(), state_dict=model.state_dict())
    return mask_state(model)


# -------------------------------------------------------------------------- regression: finding 1
def test_cli_train_of_a_pruned_checkpoint_keeps_every_pruned_weight_zero(tmp_path, capsys):
    masks = pruned_checkpoint(tmp_path / "p.pt", 0.9, "global")
    pruned = sum(int((~m).sum()) for m in masks.values())
    rc = main(["train", str(tmp_path / "p.pt"), *FAST, "--epochs", "2", "--lr", "0.1", "--out", str(tmp_path / "t.pt")])
    assert rc == 0, capsys.readouterr().err
    assert assert_saved_zero_under_masks(tmp_path / "t.pt", masks) == pruned  # 0 of them leak (all did before)
    assert any(torch.count_nonzero(w) for _, w, _ in masks_of(load_model(tmp_path / "t.pt").model))


def test_plain_train_api_without_callbacks_keeps_masks_and_optimizer_state(digits):
    for optimizer in ("sgd", "adam"):
        torch.manual_seed(0)
        model = create(MLP)
        prune_global(model, 0.7)
        masks = mask_state(model)
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer=optimizer, weight_decay=5e-3, device="cpu",
                          max_steps=5)
        trainer = Trainer(model, digits, cfg)
        trainer.fit()
        assert assert_zero_under_masks(model, trainer.optimizer) == sum(int((~m).sum()) for m in masks.values())
        assert all(torch.equal(mask_state(model)[k], v) for k, v in masks.items())
        train(model, digits, cfg)  # the one-call API too
        assert assert_zero_under_masks(model) > 0


def test_a_mask_attached_during_training_is_held_from_the_next_step(digits):
    class PruneAtStep(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 2:
                prune_global(trainer.model, 0.6)

    with observed() as checks:
        model = create(MLP)
        Trainer(model, digits, TrainConfig(epochs=1, batch_size=64, lr=0.1, device="cpu", max_steps=6),
                callbacks=[PruneAtStep()]).fit()
    assert checks[0].steps == 6 and checks[0].checked > 0  # steps 1-5 seen at the next batch, step 6 at the end


# -------------------------------------------------------------------------- regression: re-pruning
@pytest.mark.filterwarnings("ignore:layer collapse")
def test_repruning_below_the_present_sparsity_keeps_pruned_weights_unless_regrowth_is_allowed():
    torch.manual_seed(0)
    model = create(MLP)
    prune_global(model, 0.9)
    before = mask_state(model)
    total = sum(m.numel() for m in before.values())
    kept_before = sum(int(m.sum()) for m in before.values())
    assert kept_before == kept_count(total, 0.9)
    with pytest.warns(UserWarning, match=f"{kept_count(total, 0.5) - kept_before:,} already-pruned weights "
                                         "stay pruned") as record:
        report = prune_global(model, 0.5)
    assert "RegrowWarning" in {w.category.__name__ for w in record}
    assert all(torch.equal(mask_state(model)[k], v) for k, v in before.items())
    assert report.kept == kept_before and report.details["kept_pruned"] == kept_count(total, 0.5) - kept_before
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*already-pruned")
        prune_global(model, 0.95)  # a higher target only removes more: no warning
        kept_95 = sum(int(m.sum()) for m in mask_state(model).values())
        assert kept_95 == kept_count(total, 0.95)
        report = prune_global(model, 0.5, allow_regrow=True)
    assert report.kept == kept_count(total, 0.5) and report.details["regrown"] == kept_count(total, 0.5) - kept_95
    assert not any(report.warnings)


def test_cli_reprune_warns_and_allow_regrow_revives(tmp_path, capsys):
    masks = pruned_checkpoint(tmp_path / "p90.pt", 0.9, "global")
    total = sum(m.numel() for m in masks.values())
    revived = kept_count(total, 0.5) - kept_count(total, 0.9)
    args = ["prune", str(tmp_path / "p90.pt"), *FAST, "--sparsity", "0.5", "--epochs", "0", "--json"]
    assert main([*args, "--out", str(tmp_path / "a.pt")]) == 0
    captured = capsys.readouterr()
    assert f"warning: {revived:,} already-pruned weights stay pruned" in captured.err
    assert "--allow-regrow" in captured.err
    summary = json.loads(captured.out)
    assert summary["sparsity"] == pytest.approx(1 - kept_count(total, 0.9) / total)
    assert summary["report"]["details"]["kept_pruned"] == revived and summary["prune"]["allow_regrow"] is False
    assert assert_saved_zero_under_masks(tmp_path / "a.pt", masks) == total - kept_count(total, 0.9)
    assert main([*args, "--allow-regrow", "--out", str(tmp_path / "b.pt")]) == 0
    captured = capsys.readouterr()
    assert "already-pruned" not in captured.err
    assert json.loads(captured.out)["report"]["details"]["regrown"] == revived
    assert assert_saved_zero_under_masks(tmp_path / "b.pt") == total - kept_count(total, 0.5)
    assert main(["prune", str(tmp_path / "p90.pt"), *FAST, "--method", "lowrank", "--sparsity", "0.5",
                 "--allow-regrow"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------------- regression: divergence
class PoisonBatch(Callback):
    """Fill the inputs of optimiser step ``at`` (counted from 1) with NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_batch_start(self, trainer, x, y):
        if trainer.step + 1 == self.at:
            x.fill_(float("nan"))


def test_cli_lr_1e30_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d.pt"
    rc = main(["train", "mlp", *FAST, "--epochs", "2", "--lr", "1e30", "--out", str(out), "--state",
               str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("prunelab train: error: training diverged at epoch 1 step ") and "(lr 1e+30)" in err
    assert "lower the learning rate (--lr)" in err and not out.exists() and not (tmp_path / "s.pt").exists()
    with pytest.warns(RuntimeWarning, match="training diverged at epoch 1"):
        rc = main(["train", "mlp", *FAST, "--epochs", "1", "--lr", "1e30", "--on-nonfinite", "warn", "--out",
                   str(out)])
    assert rc == 0 and out.exists()


def test_divergence_names_the_first_bad_step_and_keeps_the_last_good_state(digits, tmp_path):
    state = tmp_path / "s.pt"
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.05, device="cpu", checkpoint=str(state))
    spe = Trainer(create(MLP), digits, cfg).steps_per_epoch  # 1295 samples: 11 steps of 128 per epoch
    at = spe + 4  # the 4th step of epoch 2
    with pytest.raises(PrunelabError, match=rf"^training diverged at epoch 2 step {at}: loss is nan \(lr 0.05\)"
                       ) as info:
        Trainer(create(MLP), digits, cfg, callbacks=[PoisonBatch(at)]).fit()
    assert type(info.value).__name__ == "TrainingDiverged" and (info.value.epoch, info.value.step) == (2, at)
    assert torch.load(state, weights_only=True)["step"] == spe  # epoch 1's state; epoch 2's was not written
    # weights gone non-finite on the last step, with every loss finite
    class InfWeight(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 3:
                with torch.no_grad():
                    trainer.model.classifier.bias[0] = float("inf")

    with pytest.raises(PrunelabError, match=r"^training diverged at epoch 1 step 3: weight classifier.bias holds"):
        Trainer(create(MLP), digits, TrainConfig(epochs=1, batch_size=128, device="cpu", max_steps=3),
                callbacks=[InfWeight()]).fit()
    with pytest.raises(PrunelabError, match="unknown on_nonfinite 'ignore'; valid choices: stop, warn"):
        TrainConfig(on_nonfinite="ignore").validate()


# ------------------------------------------------------------------ property: every training path
def recipe_flags(r: dict, **kw) -> list[str]:
    c = recipe_config(r, **kw)
    return [*FAST, "--optimizer", c.optimizer, "--momentum", str(c.momentum), "--weight-decay", str(c.weight_decay),
            "--lr", str(c.lr), "--schedule", "constant", "--seed", str(c.seed), "--max-steps", str(c.max_steps),
            *(["--nesterov"] if c.nesterov else [])]


def masked_mlp(m: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create(MLP)
    prune(model, PruneConfig(m["method"], m["sparsity"], seed=seed), warn=False)
    return model


def study_spec(method: str, protocol: str, r: dict, targets: str = "") -> str:
    c = recipe_config(r)
    train_ = (f"{{epochs: 1, batch_size: 64, lr: {c.lr}, optimizer: {c.optimizer}, momentum: {c.momentum}, "
              f"nesterov: {str(c.nesterov).lower()}, weight_decay: {c.weight_decay}, schedule: constant, "
              f"device: cpu, max_steps: {c.max_steps}}}")
    return (f"name: hold\ndata: {{name: digits}}\ntrain: {train_}\n"
            f"models: [{{name: mlp, kwargs: {{hidden_widths: [16, 12]}}}}]\nmethods: [{method}]\n"
            f"protocols: [{protocol}]\nseeds: [{r['seed']}]\n" + (f"targets: [{targets}]\n" if targets else ""))


def run_one_study(tmp, method: str, protocol: str, r: dict, targets: str = "") -> list[str]:
    """Run a study of one pruning run (and the dense run it starts from); the checkpoints it wrote."""
    from prunelab.study import run_study
    from prunelab.study.store import ResultsStore

    (tmp / "spec.yaml").write_text(study_spec(method, protocol, r, targets))
    result = run_study(tmp / "spec.yaml", tmp / "study", progress=False)
    assert result.counts["failed"] == 0, result.failures
    with ResultsStore.open(tmp / "study") as store:
        artifacts = [json.loads(a or "{}") for (a,) in store.query("SELECT artifacts FROM runs")]
    return [str(tmp / "study" / a["checkpoint"]) for a in artifacts if "checkpoint" in a]


def _api_train(tmp, digits, m, r):
    model = masked_mlp(m, r["seed"])
    before = mask_state(model)
    train(model, digits, recipe_config(r))  # no callbacks: the trainer holds the masks
    save_checkpoint(tmp / "m.pt", arch=MLP.to_dict(), state_dict=model.state_dict())
    assert_saved_zero_under_masks(tmp / "m.pt", before)


def _cli_train(tmp, digits, m, r):
    save_checkpoint(tmp / "p.pt", arch=MLP.to_dict(), state_dict=masked_mlp(m, r["seed"]).state_dict())
    assert main(["train", str(tmp / "p.pt"), *recipe_flags(r), "--out", str(tmp / "t.pt")]) == 0
    assert_saved_zero_under_masks(tmp / "t.pt", mask_state(masked_mlp(m, r["seed"])))


def _cli_prune(tmp, digits, m, r):
    torch.manual_seed(r["seed"])
    save_checkpoint(tmp / "d.pt", arch=MLP.to_dict(), state_dict=create(MLP).state_dict())
    schedule = ["oneshot", "iterative", "gradual"][r["seed"] % 3]
    extra = {"oneshot": [], "iterative": ["--rounds", "2"],
             "gradual": ["--prune-unit", "step", "--prune-end", str(r["steps"] - 1)]}[schedule]
    method = "random-uniform" if m["method"] == "random" else m["method"]
    assert main(["prune", str(tmp / "d.pt"), *recipe_flags(r), "--epochs", "1", "--method", method, "--sparsity",
                 str(m["sparsity"]), "--prune-schedule", schedule, *extra, "--out", str(tmp / "p.pt")]) == 0
    assert assert_saved_zero_under_masks(tmp / "p.pt") > 0


def _resume(tmp, digits, m, r):
    model = masked_mlp(m, r["seed"])
    before = mask_state(model)
    state = tmp / "state.pt"
    Trainer(model, digits, recipe_config(r, epochs=2, checkpoint=str(state))).fit()
    assert_saved_zero_under_masks(state, before)  # the training state written when it stopped
    fresh = masked_mlp(m, r["seed"] + 1)  # other weights and masks: everything comes from the state
    cfg = recipe_config(r, epochs=2, max_steps=r["steps"] + 3, checkpoint=str(state), resume=True)
    trainer = Trainer(fresh, digits, cfg)
    trainer.fit()
    assert trainer.step == r["steps"] + 3 and mask_state(fresh).keys() == before.keys()
    assert all(torch.equal(mask_state(fresh)[k], v) for k, v in before.items())
    assert_saved_zero_under_masks(state, before)


def _study(tmp, digits, m, r):
    kind = {"global": "global-magnitude", "uniform": "layerwise-magnitude", "random": "random"}[m["method"]]
    schedule = ["oneshot", "iterative", "gradual"][r["seed"] % 3]
    extra = ", gradual: {unit: step, end: 1}" if schedule == "gradual" else ""
    method = f"{{name: m, kind: {kind}, schedule: {schedule}{extra}}}"
    paths = run_one_study(tmp, method, "finetune", r, f"{{sparsity: {m['sparsity']}}}")
    assert paths and all(assert_saved_zero_under_masks(p) > 0 for p in paths)


def _scratch(tmp, digits, m, r):
    kind = {"global": "global-magnitude", "uniform": "layerwise-magnitude", "random": "random"}[m["method"]]
    paths = run_one_study(tmp, f"{{name: m, kind: {kind}}}", ["scratch-e", "scratch-b"][r["seed"] % 2], r,
                          f"{{sparsity: {m['sparsity']}}}")
    assert paths and all(assert_saved_zero_under_masks(p) > 0 for p in paths)


UNSTRUCTURED_PATHS = {"api-train": _api_train, "cli-train": _cli_train, "cli-prune": _cli_prune, "resume": _resume,
                      "study": _study, "scratch": _scratch}


@pytest.mark.filterwarnings("ignore:layer collapse", "ignore:training ended before")
@pytest.mark.parametrize("path", list(UNSTRUCTURED_PATHS))
@settings(max_examples=5, deadline=None)
@given(m=masks, r=recipes)
def test_unstructured_masks_hold_after_every_step_and_after_save_and_load(path, digits, m, r):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, observed() as checks:
        UNSTRUCTURED_PATHS[path](Path(tmp), digits, m, r)
    trained = [c for c in checks if c.checked]
    assert trained and all(c.steps >= 2 for c in trained), [(c.steps, c.checked) for c in checks]


def assert_compressed_equals_masked(pruner: StructuredPruner, path, x: torch.Tensor) -> None:
    """The saved compressed model, loaded back, has the kept widths and computes the masked model."""
    from prunelab.prune.structured import save_pruned

    if not path.exists():
        save_pruned(path, pruner.compress(), pruner.plan())
    loaded = load_model(path).model
    widths = [m.out_features for m in loaded.modules() if isinstance(m, nn.Linear)][:-1]
    assert widths == [int(pruner.masks.alive[g.name].sum()) for g in pruner.groups]
    pruner.masks.attach()
    pruner.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruner.model(x), rtol=1e-5, atol=1e-5)


def _structured_api(tmp, digits, s, r):
    torch.manual_seed(r["seed"])
    model = create(MLP)
    pruner = structured_pruner(model, s, r["seed"])
    if r["seed"] % 2:  # one-shot, then the plain API with no callbacks at all
        pruner.prune_oneshot(digits, batch_size=64)
        train(model, digits, recipe_config(r))
    else:  # iterative, pruning while training
        train(model, digits, recipe_config(r, max_steps=r["steps"] * 2), callbacks=[pruner.callback()])
    assert pruner.masks.remaining < pruner.groups.total_channels
    assert_compressed_equals_masked(pruner, tmp / "s.pt", digits.test.x[:16])


def _structured_cli(tmp, digits, s, r):
    torch.manual_seed(r["seed"])
    dense = create(MLP)
    save_checkpoint(tmp / "d.pt", arch=MLP.to_dict(), state_dict=dense.state_dict())
    target = int(sum(p.numel() for p in dense.parameters()) * s["ratio"])
    assert main(["prune", str(tmp / "d.pt"), "--structured", *recipe_flags(r, max_steps=r["steps"] * 2),
                 "--epochs", "1", "--criterion", s["criterion"], "--prune-every", str(s["every"]),
                 "--channels-per-prune", str(s["per_prune"]), "--target-params", str(target),
                 "--allow-miss", "--out", str(tmp / "s.pt")]) == 0  # the masks must hold, target reached or not


def _structured_resume(tmp, digits, s, r):
    state = tmp / "state.pt"
    torch.manual_seed(r["seed"])
    model = create(MLP)
    first = structured_pruner(model, s, r["seed"])
    Trainer(model, digits, recipe_config(r, epochs=3, checkpoint=str(state)), callbacks=[first.callback()]).fit()
    torch.manual_seed(r["seed"])
    again = create(MLP)
    second = structured_pruner(again, s, r["seed"])
    cfg = recipe_config(r, epochs=3, max_steps=r["steps"] * 2, checkpoint=str(state), resume=True)
    Trainer(again, digits, cfg, callbacks=[second.callback()]).fit()
    # the channels masked before the stop stay masked after the resume (and pruning went on)
    assert all(bool((v | ~second.masks.alive[k]).all()) for k, v in first.masks.alive.items())
    assert second.masks.remaining < first.masks.remaining or second.reached()
    assert_compressed_equals_masked(second, tmp / "s.pt", digits.test.x[:16])


def _structured_study(tmp, digits, s, r):
    method = (f"{{name: s, kind: {'bn-scale' if s['criterion'] == 'bn' else s['criterion']}"
              f"{'-channel' if s['criterion'] == 'random' else ''}, prune_every: {s['every']}, "
              f"channels_per_prune: {s['per_prune']}, finetune_epochs: 1, targets: [{{params_ratio: {s['ratio']}}}]}}")
    run_one_study(tmp, method, "finetune", r)


STRUCTURED_PATHS = {"api": _structured_api, "cli-prune": _structured_cli, "resume": _structured_resume,
                    "study": _structured_study}


@pytest.mark.filterwarnings("ignore:training ended before")
@pytest.mark.parametrize("path", list(STRUCTURED_PATHS))
@settings(max_examples=5, deadline=None)
@given(s=structured_cases, r=recipes)
def test_soft_channel_masks_hold_after_every_step_and_after_save_and_load(path, digits, s, r):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, observed() as checks:
        STRUCTURED_PATHS[path](Path(tmp), digits, s, r)
    assert any(c.checked for c in checks), [(c.steps, c.checked) for c in checks]


# --------------------------------------------------------------- property: DDP, two gloo processes
DDP_WORKER = textwrap.dedent('''
    import sys
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    import prunelab.data as D
    from mask_checks import (MLP, HoldCheck, assert_zero_under_masks, masks, recipe_config, recipes,
                             structured_cases, structured_pruner)
    from prunelab.models import create
    from prunelab.prune.unstructured import PruneConfig, prune
    from prunelab.train import Trainer
    from prunelab.train import distributed as dist

    torch.set_num_threads(1)
    out = sys.argv[1]
    assert dist.init_from_env() and dist.world_size() == 2
    rank = dist.rank()
    data = D.load("synthetic", shape="1x8x8", n_train=512, n_val=0, n_test=64, seed=0)
    results = []
    # every rank draws the same examples (derandomized, no database) and runs them in step; no shrinking,
    # which would rerun a failing example on one rank only
    same = settings(max_examples=3, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))

    @same
    @given(m=masks, r=recipes, resume=st.booleans())
    def unstructured(m, r, resume):
        torch.manual_seed(r["seed"] + 7 * rank)  # another init per rank: DDP starts every rank from rank 0's
        model = create(MLP)
        prune(model, PruneConfig(m["method"], m["sparsity"], seed=r["seed"] + rank), warn=False)
        check = HoldCheck([])
        state = f"{out}/state{len(results)}.pt" if resume else None
        trainer = Trainer(model, data, recipe_config(r, epochs=2, checkpoint=state), callbacks=[check])
        trainer.fit()
        if resume:  # stopped at max_steps inside the first epoch: resume on other weights and masks
            model = create(MLP)
            prune(model, PruneConfig("random", 0.5, seed=99), warn=False)
            check = HoldCheck([])
            trainer = Trainer(model, data, recipe_config(r, epochs=2, max_steps=r["steps"] + 4, checkpoint=state,
                                                         resume=True), callbacks=[check])
            trainer.fit()
        assert check.steps >= 2 and assert_zero_under_masks(model, trainer.optimizer) > 0
        results.append({"state": model.state_dict(), "steps": trainer.step})

    @same
    @given(s=structured_cases, r=recipes)
    def structured(s, r):
        torch.manual_seed(r["seed"])
        model = create(MLP)
        pruner = structured_pruner(model, s, r["seed"])
        check = HoldCheck([pruner])
        Trainer(model, data, recipe_config(r, max_steps=2 * r["steps"]), callbacks=[pruner.callback(), check]).fit()
        assert check.steps >= 2 and check.checked > 0
        results.append({"state": model.state_dict(), "alive": dict(pruner.masks.alive)})

    unstructured()
    structured()
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy()
''')


@pytest.mark.slow
def test_masks_hold_under_ddp_with_two_gloo_processes(tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    here = str(Path(__file__).resolve().parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(tmp_path / "worker.py"), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert len(r0) == len(r1) == 6
    for a, b in zip(r0, r1):  # both ranks end identical: the masks of rank 0, held on both
        assert a.keys() == b.keys() and a["state"].keys() == b["state"].keys()
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
        assert all(torch.equal(a["alive"][k], b["alive"][k]) for k in a.get("alive", {}))
        n = 0
        for key, mask in a["state"].items():
            if key.endswith("_mask"):
                assert torch.count_nonzero(a["state"][key[: -len("_mask")]][~mask]) == 0, key
                n += int((~mask).sum())
        assert n > 0 or "alive" in a
