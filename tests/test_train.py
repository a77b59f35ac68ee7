"""The trainer: determinism, resume, callback order, optimisers and schedules, checkpoints, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab.data as D
from prunelab.errors import PrunelabError
from prunelab.train import Callback, TrainConfig, Trainer, evaluate, train
from prunelab.train.optim import lr_factor, no_decay_parameter_ids

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    return D.load("synthetic", shape="3x8x8", n_train=96, n_val=16, n_test=32, num_classes=4, seed=1)


def small_cnn(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(24, 4),
    )


def config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                warmup_epochs=0.5, device="cpu", seed=3)
    base.update(kw)
    return TrainConfig(**base)


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_identical_numbers_on_cpu(images):
    a, b, c = small_cnn(), small_cnn(), small_cnn()
    ra = train(a, images, config())
    rb = train(b, images, config())
    train(c, images, config(seed=4))
    assert same_weights(a, b) and strip_time(ra.history) == strip_time(rb.history)
    assert not same_weights(a, c)
    row = ra.history[-1]
    assert set(row) == {"epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                        "test_acc", "time"}
    assert row["epoch"] == 2 and row["step"] == 12 and ra.final == row


class StopAt(Callback):
    """Stops training at a given step and counts steps in its own (checkpointed) state."""

    def __init__(self, at: int | None) -> None:
        self.at, self.seen = at, 0

    def on_step_end(self, trainer):
        self.seen += 1
        if trainer.step == self.at:
            trainer.stop = True

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


@pytest.mark.parametrize("stop_at", [9, 12])  # inside the second epoch, and at the end of one
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(images, tmp_path, stop_at):
    cfg = config(epochs=3, optimizer="sgd", nesterov=True)
    reference = small_cnn()
    ref = train(reference, images, cfg, callbacks=[StopAt(None)])

    state = tmp_path / "state.pt"
    first = small_cnn()
    cb = StopAt(stop_at)
    part = Trainer(first, images, config(epochs=3, nesterov=True, checkpoint=str(state)), callbacks=[cb]).fit()
    assert part.final["step"] == stop_at and state.is_file() and cb.seen == stop_at
    assert not same_weights(first, reference)

    resumed_model = small_cnn(seed=99)  # different init: everything must come from the state
    cb2 = StopAt(None)
    res = Trainer(resumed_model, images, config(epochs=3, nesterov=True, checkpoint=str(state), resume=True),
                  callbacks=[cb2]).fit()
    assert same_weights(resumed_model, reference)
    assert cb2.seen == 18 and res.final["step"] == 18
    assert strip_time(res.history) == strip_time(ref.history)
    # the state file is plain tensors and containers
    loaded = torch.load(state, weights_only=True)
    assert loaded["format"] == "prunelab-train-state" and loaded["step"] == 18


def test_corrupt_or_foreign_training_state_is_a_one_line_error(images, tmp_path):
    bad = tmp_path / "state.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(PrunelabError, match="training state .*(corrupt|cannot be loaded safely)"):
        Trainer(small_cnn(), images, config(checkpoint=str(bad), resume=True)).fit()
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(PrunelabError, match="not a prunelab training state"):
        Trainer(small_cnn(), images, config(checkpoint=str(bad), resume=True)).fit()


class Recorder(Callback):
    def __init__(self):
        self.events = []
        self.weight_at = {}

    def on_fit_start(self, t):
        self.events.append("fit_start")

    def on_epoch_start(self, t):
        self.events.append(f"epoch_start{t.epoch}")

    def on_batch_start(self, t, x, y):
        self.events.append("batch_start")
        assert x.shape[0] == y.shape[0]
        self.step_before = t.step

    def on_after_backward(self, t):
        self.events.append("after_backward")
        assert t.model[-1].weight.grad is not None and t.step == self.step_before
        self.weight_at["backward"] = t.model[-1].weight.detach().clone()

    def on_step_end(self, t):
        self.events.append("step_end")
        assert t.step == self.step_before + 1
        assert not torch.equal(self.weight_at["backward"], t.model[-1].weight)  # optimizer.step() ran in between

    def on_epoch_end(self, t, metrics):
        self.events.append(f"epoch_end{t.epoch}")
        assert metrics["step"] == t.step

    def on_fit_end(self, t):
        self.events.append("fit_end")


def test_callbacks_are_called_in_the_documented_order(images):
    rec = Recorder()
    train(small_cnn(), images, config(epochs=2, batch_size=48), callbacks=[rec])
    per_batch = ["batch_start", "after_backward", "step_end"]
    expected = ["fit_start", "epoch_start0", *per_batch * 2, "epoch_end0", "epoch_start1", *per_batch * 2,
                "epoch_end1", "fit_end"]
    assert rec.events == expected


def test_max_steps_and_eval_every(images):
    r = train(small_cnn(), images, config(epochs=3, max_steps=8, eval_every=2))
    assert r.final["step"] == 8 and r.final["epoch"] == pytest.approx(1 + 2 / 6, abs=1e-4)
    assert r.history[0]["val_acc"] is None and r.history[0]["train_acc"] is not None
    assert r.final["test_acc"] is not None and len(r.history) == 2
    r2 = train(small_cnn(), images, config(epochs=3, eval_every=2))
    assert [row["val_acc"] is None for row in r2.history] == [True, False, False]


def test_params_restricts_what_is_optimised(images):
    model = small_cnn(dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = list(model[-1].parameters())
    trainer = Trainer(model, images, config(epochs=1), params=head)
    trainer.fit()
    after = model.state_dict()
    assert not torch.equal(before["8.weight"], after["8.weight"])
    for key in ("0.weight", "1.weight", "1.bias", "3.weight", "3.bias"):
        assert torch.equal(before[key], after[key]), key
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in head}
    assert set(trainer.optimizer.state) <= set(head) and len(trainer.optimizer.state) == 2


def test_no_weight_decay_on_bn_bias_and_depthwise(images):
    model = small_cnn()
    exempt = no_decay_parameter_ids(model)
    by_hand = {id(model[1].weight), id(model[1].bias), id(model[3].weight), id(model[3].bias), id(model[8].bias)}
    assert exempt == by_hand
    t = Trainer(model, images, config(no_wd_bn_bias=True))
    decay, no_decay = t.optimizer.param_groups
    assert {id(p) for p in no_decay["params"]} == by_hand and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[8].weight)}
    assert decay["weight_decay"] == 5e-4


def _torch_lrs(cfg: TrainConfig, make) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make(opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", ["multistep", "step", "cosine", "constant"])
def test_per_epoch_schedules_match_torch_schedulers(name):
    cfg = TrainConfig(epochs=12, lr=0.1, schedule=name, milestones=[0.5, 9], gamma=0.2, step_size=5,
                      lr_step="epoch")
    makers = {
        "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [6, 9], gamma=0.2),
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.2),
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12),
        "constant": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0),
    }
    ref = _torch_lrs(cfg, makers[name])
    spe = 7
    ours = [cfg.lr * lr_factor(e * spe + k, spe, cfg) for e in range(12) for k in range(spe)]
    expected = [v for v in ref for _ in range(spe)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_warmup_and_linear_and_per_iteration_cosine_by_hand():
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2, lr_step="epoch")
    # Global MP (NVIDIA recipe): lr_e = lr0 (e+1)/w during warm-up, then 0.5 (1 + cos(pi (e-w)/(E-w))) lr0
    for e in range(10):
        expect = (e + 1) / 2 if e < 2 else 0.5 * (1 + math.cos(math.pi * (e - 2) / 8))
        assert lr_factor(e * 3, 3, cfg) == pytest.approx(expect)
    lin = TrainConfig(epochs=4, schedule="linear", lr_step="epoch")
    assert [lr_factor(e, 1, lin) for e in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    it = TrainConfig(epochs=2, schedule="cosine", warmup_epochs=0.5, lr_step="iteration")
    spe = 4
    assert lr_factor(0, spe, it) == pytest.approx(0.5)  # (t + 1/spe) / w with t = 0, w = 0.5
    assert lr_factor(1, spe, it) == pytest.approx(1.0)
    assert lr_factor(5, spe, it) == pytest.approx(0.5 * (1 + math.cos(math.pi * (5 / 4 - 0.5) / 1.5)))


def test_trainer_lr_follows_the_schedule(images):
    cfg = config(epochs=2, schedule="multistep", milestones=[1], gamma=0.1, warmup_epochs=0, lr_step="epoch")
    r = train(small_cnn(), images, cfg)
    assert [row["lr"] for row in r.history] == pytest.approx([0.05, 0.005])


def test_label_smoothing_loss_equals_the_formula(images):
    eps = 0.2
    model = small_cnn(dropout=0.0)
    model.eval()  # BN in eval mode inside forward below would differ: compute the reference in train mode
    cfg = config(epochs=1, batch_size=len(images.train), lr=0.0, weight_decay=0.0, momentum=0.0,
                 label_smoothing=eps, augment=False, warmup_epochs=0)
    model.train()
    with torch.no_grad():
        logp = F.log_softmax(model(images.train.x), 1)
    nll = -logp.gather(1, images.train.y[:, None]).mean()
    smooth = -logp.mean(1).mean()
    expected = (1 - eps) * nll + eps * smooth
    r = train(model, images, cfg)
    assert r.history[0]["train_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_evaluate_matches_a_manual_computation(images):
    model = small_cnn().eval()
    with torch.no_grad():
        out = model(images.test.x)
    m = evaluate(model, images, "test", batch_size=5)
    assert m["acc"] == pytest.approx(float((out.argmax(1) == images.test.y).float().mean()))
    assert m["loss"] == pytest.approx(float(F.cross_entropy(out, images.test.y)), rel=1e-5)
    empty = D.load("synthetic", shape="3x8x8", n_train=8, n_val=0, n_test=4, num_classes=4)
    assert evaluate(model, empty, "val") == {"loss": None, "acc": None}


def test_adam_channels_last_and_sequences_run():
    seq = D.load("synthetic", shape="12x3", n_train=64, n_val=8, n_test=16, num_classes=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    r = train(model, seq, TrainConfig(epochs=3, batch_size=16, optimizer="adam", lr=0.01, device="cpu",
                                      schedule="constant", weight_decay=0))
    assert r.final["test_acc"] > 1 / 3
    img = D.load("synthetic", shape="3x8x8", n_train=32, n_val=0, n_test=8, num_classes=4)
    r2 = train(small_cnn(), img, config(epochs=1, channels_last=True, progress=True))
    assert r2.final["val_acc"] is None and r2.final["test_acc"] is not None


def test_learns_digits():
    data = D.load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    r = train(model, data, TrainConfig(epochs=4, batch_size=64, lr=0.1, schedule="cosine", device="cpu"))
    assert r.final["test_acc"] > 0.9 and r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_bad_settings_are_one_line_errors(images):
    with pytest.raises(PrunelabError, match="unknown schedule 'poly'; valid choices"):
        TrainConfig(schedule="poly").validate()
    with pytest.raises(PrunelabError, match="unknown device 'tpu'"):
        Trainer(small_cnn(), images, config(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(PrunelabError, match="CUDA is not available"):
            Trainer(small_cnn(), images, config(device="cuda"))



@pytest.mark.parametrize("key, value, expected", [
    ("augment", "false", "true or false"), ("amp", 3, "true or false"), ("nesterov", None, "true or false"),
    ("epochs", 1.5, "an integer"), ("epochs", True, "an integer"), ("batch_size", "8", "an integer"),
    ("max_steps", 2.5, "an integer or null"), ("max_steps", False, "an integer or null"),
    ("lr", "1e-3", "a number"), ("lr", True, "a number"), ("momentum", [1], "a number"),
    ("milestones", "oops", "a list of numbers"), ("milestones", [1, "2"], "a list of numbers"),
    ("milestones", [True], "a list of numbers"), ("device", 0, "a string"), ("checkpoint", 3, "a string or null"),
])
def test_from_dict_checks_each_setting_against_its_declared_type(key, value, expected):
    with pytest.raises(PrunelabError) as info:
        TrainConfig.from_dict({key: value})
    assert str(info.value) == f"training setting {key!r} must be {expected}, got {value!r}"
    assert info.value.key == key


def test_from_dict_keeps_well_typed_settings():
    cfg = TrainConfig.from_dict({"lr": 1, "gamma": 0.5, "max_steps": None, "milestones": (2, 0.5), "augment": False,
                                 "checkpoint": None, "device": "cpu", "epochs": 3})
    assert cfg.lr == 1 and cfg.max_steps is None and list(cfg.milestones) == [2, 0.5] and cfg.augment is False
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()  # a stored config reads back


def test_validate_names_the_setting_a_comparison_would_trip_on():
    with pytest.raises(PrunelabError, match=r"^training setting 'lr' must be a number, got '1e-3'$"):
        TrainConfig(lr="1e-3").validate()
    with pytest.raises(PrunelabError, match=r"^training setting 'milestones' must be a list of numbers"):
        TrainConfig(milestones="oops").validate()


def test_device_form_is_checked_without_the_device():
    for bad in ("gpu7", "cuda:x", "tpu", ""):
        with pytest.raises(PrunelabError, match=f"^unknown device {bad!r}; valid choices: auto, cpu, cuda, cuda:N"):
            TrainConfig(device=bad).validate()
    for good in ("auto", "cpu", "cuda", "cuda:3", "mps"):  # present or not: validate checks the form only
        assert TrainConfig(device=good).validate().device == good


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_train_saves_a_loadable_checkpoint(tmp_path, capsys):
    from prunelab.checkpoint import load_model
    from prunelab.cli import main

    out = tmp_path / "mlp.pt"
    rc = main(["train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--lr", "0.1", "--schedule",
               "cosine", "--device", "cpu", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_acc"] > 0.8 and summary["params"] > 0 and len(summary["history"]) == 2
    loaded = load_model(out)
    assert evaluate(loaded.model, D.load("digits"))["acc"] == pytest.approx(summary["test_acc"])
    assert loaded.meta["test_acc"] == summary["test_acc"]


def test_cli_train_bad_input(tmp_path, capsys):
    from prunelab.cli import main
    from prunelab.io import save_checkpoint
    from prunelab.models import create, resolve

    spec = resolve("resnet20")  # a checkpoint keeps its architecture: 3x32x32 inputs
    save_checkpoint(tmp_path / "r20.pt", arch=spec.to_dict(), state_dict=create(spec).state_dict())
    rc = main(["train", "--model", str(tmp_path / "r20.pt"), "--data", "digits", "--epochs", "1",
               "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "expects input 3x32x32 but dataset digits gives 1x8x8" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()
    # a zoo name is fitted to the data instead (one input channel, the digits' classes)
    rc = main(["train", "--model", "resnet20", "--data", "digits", "--epochs", "1", "--max-steps", "1",
               "--out", str(tmp_path / "z.pt"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["params"] > 0
    # MODEL may also come first, as in prune, bench, info and export: the same run
    rc = main(["train", "resnet20", "--data", "digits", "--epochs", "1", "--max-steps", "1",
               "--out", str(tmp_path / "p.pt"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["params"] == torch.load(
        tmp_path / "z.pt", weights_only=True)["meta"]["params"]
    rc = main(["train", "--model", "mlp", "--data", "cifar10", "--data-root", str(tmp_path), "--out",
               str(tmp_path / "y.pt")])
    assert rc == 2 and "CIFAR-10 not found under" in capsys.readouterr().err
