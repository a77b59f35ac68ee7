"""The one training loop every protocol uses (dense training, fine-tuning, Scratch-E/B, PFS gates).

Data path: batches come from a :class:`prunelab.data.feed.Feed`. In-memory splits are moved to the
training device once; every epoch draws a permutation from a generator seeded by ``(seed, epoch)``,
slices batches out of the resident tensors and augments them as whole batches (the airbench data
path). Streamed splits (a user's Dataset, image folders, tar shards) are read by DataLoader workers
in the same order and finished on the device, so both give the same numbers on the same samples.
Numerics: autocast (bfloat16, or float16 with a GradScaler) and channels_last on CUDA. Under
``torchrun`` the permutation is sharded by rank (a ``DistributedSampler`` with ``set_epoch``) and the
model wrapped in DistributedDataParallel.

Repeatability: the same seed gives the same numbers on CPU. ``torch.manual_seed(seed)`` is set at the
start of a fresh run (dropout); the permutation depends only on ``(seed, epoch)`` and the crop / flip
draws only on ``(seed, rank, epoch)``. Checkpoints hold everything else (model, optimiser, scheduler,
scaler, callback states, the global RNG states, step / epoch / position in the epoch), so a resumed
run ends with the same weights as an uninterrupted one.

Per batch the hooks run in this order (see :mod:`prunelab.train.callbacks`)::

    on_batch_start -> forward -> loss -> backward -> on_after_backward -> optimizer.step()
    -> masks re-applied -> scheduler.step() -> on_step_end

Masks: every ``<param>_mask`` buffer on the model (:mod:`prunelab.train.masks`) is enforced by the
trainer itself, whoever trains it and with whatever callbacks: after each optimiser step the pruned
weights and their optimiser state are zeroed again, so no path can train a pruned weight back.

Divergence: at each epoch end (where the losses are read back anyway) a NaN or infinite loss, or
weights gone NaN / infinite, stop the run with one line (``on_nonfinite='stop'``, the default) before
anything is evaluated or checkpointed, or warn once (``'warn'``); see :mod:`prunelab.train.divergence`.

``on_fit_start`` runs before any checkpoint is resumed, ``on_epoch_start`` at the start of each epoch
(not again when a run resumes inside an epoch), ``on_epoch_end(trainer, row)`` after each complete
epoch with its history row, and ``on_fit_end`` last. With a float16 GradScaler the gradients are
unscaled before ``on_after_backward`` so callbacks see true values.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.data.feed import Feed
from prunelab.devices import check_device_name
from prunelab.errors import PrunelabError
from prunelab.io import atomic_torch_save, torch_load
from prunelab.models.inputs import logits_of
from prunelab.train import distributed as ddp
from prunelab.train.callbacks import Callback
from prunelab.train.config import TrainConfig
from prunelab.train.divergence import (
    DivergenceWarning,
    TrainingDiverged,
    describe_loss,
    divergence_message,
    first_nonfinite_parameter,
)
from prunelab.train.losses import get_loss
from prunelab.train.masks import MaskEnforcer
from prunelab.train.optim import build_optimizer, build_scheduler

STATE_FORMAT = "prunelab-train-state"
_HOOKS = ("on_fit_start", "on_epoch_start", "on_batch_start", "on_after_backward", "on_step_end", "on_epoch_end",
          "on_fit_end")


@dataclass
class TrainResult:
    """``history``: one row per epoch (plus one for a run stopped inside an epoch); ``final``: the last
    row, always with validation and test metrics."""

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` means this process's local device."""
    spec = check_device_name(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunelabError(f"device {spec!r} requested but CUDA is not available; valid choices: auto, cpu")
        if dev.index is None:
            dev = torch.device("cuda", ddp.local_rank() if ddp.is_distributed() else torch.cuda.current_device())
    return dev


def _overrides(cb: Callback, hook: str) -> bool:
    """True when ``cb`` has its own ``hook`` (the base class's no-ops are skipped in the hot loop)."""
    fn = getattr(cb, hook, None)
    return callable(fn) and getattr(fn, "__func__", fn) is not getattr(Callback, hook)


class Trainer:
    """Train ``model`` on ``data`` with ``config``; see the module docstring for the loop.

    ``params`` restricts what the optimiser updates (PFS trains only the gates, Wang et al. 2020):
    other parameters keep their gradients (cleared every step) but get no optimiser state and no
    weight decay. Attributes: ``model`` (the plain module, never the DDP wrapper), ``optimizer``,
    ``scheduler``, ``step`` (optimiser steps taken), ``epoch`` (current epoch, 0-based), ``device``,
    ``stop`` (set True to end after the current step), ``config``, ``data``, ``history``, ``masks``
    (the :class:`~prunelab.train.masks.MaskEnforcer` holding the model's weight masks).
    """

    def __init__(self, model: nn.Module, data: DataBundle, config: TrainConfig | None = None,
                 callbacks: tuple[Callback, ...] | list[Callback] = (), params=None) -> None:
        self.config = (config or TrainConfig()).validate()
        self.data = data
        self.callbacks = list(callbacks)
        self.distributed = ddp.init_from_env()
        self.rank, self.world_size = ddp.rank(), ddp.world_size()
        self.device = resolve_device(self.config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device)
        self._image_input = len(data.input_shape) == 3
        self.loss = get_loss(self.config.loss)
        wanted = data.info.get("loss") if isinstance(data.info, dict) else None
        if wanted is not None and wanted != self.loss.name:  # e.g. token blocks trained as classification
            raise PrunelabError(f"data set {data.name!r} is trained with the {wanted!r} loss, not "
                                f"{self.loss.name!r}: set the training loss to {wanted} (train: {{loss: {wanted}}})")
        self._channels_last = bool(self.config.channels_last and self._image_input)
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._restricted = params is not None
        self.optimizer = build_optimizer(self.model, self.config, params)
        n_train = len(data.train)
        if n_train == 0:
            raise PrunelabError(f"dataset {data.name!r} has an empty training split")
        self.feed = Feed(data, self.device, batch_size=self.config.batch_size, seed=self.config.seed, rank=self.rank,
                         world_size=self.world_size, augment=self.config.augment and self._image_input,
                         drop_last=self.config.drop_last, resident=True)
        if self.feed.n_per_rank == 0:
            raise PrunelabError(f"{n_train} training samples cannot be shared by {self.world_size} processes")
        self.steps_per_epoch = self.feed.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, self.config, self.steps_per_epoch)
        self._amp = bool(self.config.amp and self.device.type == "cuda")
        amp_dtype = torch.float16 if self.config.amp_dtype == "float16" else torch.bfloat16
        if self._amp and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            amp_dtype = torch.float16
        self._amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda") if self._amp and amp_dtype == torch.float16 else None
        self.step = 0
        self.epoch = 0
        self.stop = False
        self.history: list[dict[str, Any]] = []
        self._batch_in_epoch = 0
        self._epoch_loss: list[torch.Tensor] = []
        self._epoch_sizes: list[int] = []
        self._epoch_correct: list[torch.Tensor] = []
        self._epoch_lrs: list[float] = []
        self._carry = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count restored from a checkpoint
        self._elapsed = 0.0
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        self._resumed = False
        self._net: nn.Module = self.model
        self.masks = MaskEnforcer()
        self._warned_nonfinite = False

    # ----------------------------------------------------------------------------------------- data
    @property
    def global_batch_size(self) -> int:
        """Samples per optimiser step over all data-parallel processes (batch_size x world_size)."""
        return self.feed.global_batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample order for ``epoch``: a permutation seeded by ``(seed, epoch)``, sharded by rank."""
        return self.feed.order(epoch).to(self.device, non_blocking=True)

    def _autocast(self):
        if self._amp:
            return torch.autocast(device_type="cuda", dtype=self._amp_dtype)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------------------------------- train
    def fit(self) -> TrainResult:
        """Train for ``config.epochs`` epochs (or until ``max_steps`` / ``stop``) and return the history."""
        cfg = self.config
        hooks = {h: [getattr(cb, h) for cb in self.callbacks if _overrides(cb, h)] for h in _HOOKS}
        if not self._resumed:
            torch.manual_seed(cfg.seed)
        for fn in hooks["on_fit_start"]:
            fn(self)
        if cfg.resume and cfg.checkpoint and Path(cfg.checkpoint).is_file():
            self.load_state(cfg.checkpoint)
        if self.distributed and self._net is self.model:
            # Wrapped after on_fit_start so masks or gates a callback attaches are part of the module;
            # DDP broadcasts rank 0's parameters and buffers here, so every rank starts identical.
            from torch.nn.parallel import DistributedDataParallel

            self._net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Masks are read after on_fit_start (callbacks may attach them), the resume and the DDP
        # broadcast, and enforced once before the first step (a mask attached to trained weights).
        masks = self.masks
        masks.refresh(self.model)
        masks.enforce(self.optimizer)
        spe = self.steps_per_epoch
        max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf
        total = int(min(max_steps, cfg.epochs * spe))
        bar = self._progress_bar(total)
        start = time.perf_counter() - self._elapsed
        net, opt, sched, scaler = self._net, self.optimizer, self.scheduler, self.scaler
        smoothing = cfg.label_smoothing
        loss_fn = self.loss
        stopped = self.stop or self.step >= max_steps
        epoch = self.epoch
        while not stopped and epoch < cfg.epochs:
            self.epoch = epoch
            if self._batch_in_epoch == 0:
                self._reset_epoch_metrics()
                for fn in hooks["on_epoch_start"]:
                    fn(self)
                masks.sync(opt)
            self.model.train()
            for b, (x, y) in enumerate(self.feed.epoch(epoch, start=self._batch_in_epoch), start=self._batch_in_epoch):
                if self._channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for fn in hooks["on_batch_start"]:
                    fn(self, x, y)
                opt.zero_grad(set_to_none=True)
                if self._restricted:
                    self.model.zero_grad(set_to_none=True)
                with self._autocast():
                    out = logits_of(net(x))
                    loss = loss_fn(out, y, label_smoothing=smoothing)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                for fn in hooks["on_after_backward"]:
                    fn(self)
                self._last_lr = opt.param_groups[0]["lr"]
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                masks.after_step(opt)
                sched.step()
                self.step += 1
                self._batch_in_epoch = b + 1
                self._epoch_loss.append(loss.detach())
                correct, counted = loss_fn.correct(out, y)
                self._epoch_sizes.append(counted)
                self._epoch_correct.append(correct)
                self._epoch_lrs.append(self._last_lr)
                for fn in hooks["on_step_end"]:
                    fn(self)
                masks.sync(opt)
                if bar is not None:
                    bar.update(1)
                if self.stop or self.step >= max_steps:
                    stopped = True
                    break
            if self._batch_in_epoch < spe:  # stopped inside the epoch
                self._elapsed = time.perf_counter() - start
                self._check_finite(ddp.all_reduce_(self._epoch_sums(), "sum"))
                if cfg.checkpoint:
                    self.save_state(cfg.checkpoint)
                break
            self._batch_in_epoch = 0
            last = epoch + 1 == cfg.epochs or stopped
            evaluate = last or (epoch + 1) % cfg.eval_every == 0
            row = self._history_row(epoch + 1, evaluate, start)
            self.history.append(row)
            for fn in hooks["on_epoch_end"]:
                fn(self, row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}")
            epoch += 1
            self.epoch = epoch
            stopped = stopped or self.stop
            self._elapsed = time.perf_counter() - start
            if cfg.checkpoint and (epoch % cfg.checkpoint_every == 0 or stopped or epoch == cfg.epochs):
                self.save_state(cfg.checkpoint)
        if bar is not None:
            bar.close()
        final = self._final_row(start)
        self.feed.close()
        for fn in hooks["on_fit_end"]:
            fn(self)
        return TrainResult(history=list(self.history), final=final)

    def _progress_bar(self, total: int):
        if not self.config.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=min(self.step, total), desc=f"train {self.data.name}", unit="step",
                    dynamic_ncols=True, leave=False)

    # -------------------------------------------------------------------------------------- metrics
    def _reset_epoch_metrics(self) -> None:
        self._epoch_loss, self._epoch_sizes, self._epoch_correct, self._epoch_lrs = [], [], [], []
        self._carry = torch.zeros(3, dtype=torch.float64)

    def _epoch_sums(self) -> torch.Tensor:
        """(loss sum, correct, count) of this epoch so far on this rank, as float64 on the CPU."""
        sums = self._carry.clone()
        if self._epoch_loss:
            sizes = torch.stack([torch.as_tensor(s, dtype=torch.float64).to(self.device) for s in self._epoch_sizes])
            losses = torch.stack(self._epoch_loss).double()
            sums += torch.stack([(losses * sizes).sum(), torch.stack(self._epoch_correct).double().sum(),
                                 sizes.sum()]).cpu()
        return sums

    def _check_finite(self, sums: torch.Tensor) -> None:
        """Stop (or warn once) when this epoch's loss sum (all ranks) or a weight is NaN or infinite."""
        if self._warned_nonfinite:
            return
        if not math.isfinite(float(sums[0])):
            epoch, step, what, lr = self._first_nonfinite_loss()
        else:
            name = first_nonfinite_parameter(self.model.named_parameters())
            if name is None:
                return
            epoch, step, what, lr = self.epoch + 1, self.step, f"weight {name} holds nan or inf", self._last_lr
        stop = self.config.on_nonfinite == "stop"
        message = divergence_message(epoch, step, what, lr, stop)
        if stop:
            raise TrainingDiverged(message, epoch=epoch, step=step, lr=lr)
        self._warned_nonfinite = True
        warnings.warn(message, DivergenceWarning, stacklevel=4)

    def _first_nonfinite_loss(self) -> tuple[int, int, str, float]:
        """(epoch from 1, step, description, lr) of this epoch's first non-finite loss on any rank."""
        if not self._epoch_loss:  # only the sums carried from a resumed state are bad
            return self.epoch + 1, self.step, "loss is nan", self._last_lr
        losses = torch.stack(self._epoch_loss).float().cpu()
        finite = ddp.all_reduce_(torch.isfinite(losses).double(), "min")
        i = int(torch.nonzero(finite == 0)[0]) if bool((finite == 0).any()) else 0
        value = float(losses[i]) if not math.isfinite(float(losses[i])) else float("nan")
        return self.epoch + 1, self.step - len(self._epoch_loss) + i + 1, describe_loss(value), self._epoch_lrs[i]

    def _history_row(self, epoch_mark: float, evaluate: bool, start: float) -> dict[str, Any]:
        sums = ddp.all_reduce_(self._epoch_sums(), "sum")
        self._check_finite(sums)
        n = max(float(sums[2]), 1.0)
        row: dict[str, Any] = {"epoch": epoch_mark, "step": self.step, "lr": float(self._last_lr),
                               "train_loss": float(sums[0]) / n, "train_acc": float(sums[1]) / n}
        for split in ("val", "test"):
            m = self.evaluate(split) if evaluate else {"loss": None, "acc": None}
            row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
        row["time"] = time.perf_counter() - start
        return row

    def _final_row(self, start: float) -> dict[str, Any]:
        if self.history and self._batch_in_epoch == 0 and self.history[-1]["test_acc"] is not None \
                and self.history[-1]["step"] == self.step:
            return dict(self.history[-1])
        if self._batch_in_epoch > 0:  # a run stopped inside an epoch gets a row for the partial epoch
            mark = round(self.epoch + self._batch_in_epoch / self.steps_per_epoch, 4)
            row = self._history_row(mark, True, start)
            self.history.append(row)
            return dict(row)
        row = {"epoch": self.epoch, "step": self.step, "lr": float(self._last_lr), "train_loss": None,
               "train_acc": None}
        for split in ("val", "test"):
            m = self.evaluate(split)
            row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
        row["time"] = time.perf_counter() - start
        return row

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float | None]:
        """Mean loss (the config's ``loss``, no label smoothing) and accuracy of the model on a split,
        per counted prediction (samples; tokens for ``next-token``).

        Under DDP every rank evaluates its share and the sums are all-reduced (call it on all ranks).
        """
        if len(self.data.split(split)) == 0:
            return {"loss": None, "acc": None}
        self._sync_buffers()
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in self.feed.evaluation(split, self.config.eval_batch_size):
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = logits_of(self.model(x))
            correct, counted = self.loss.correct(out, y)
            sums[0] += self.loss(out.float(), y, reduction="sum").double()
            sums[1] += correct
            sums[2] += counted
        self.model.train(was_training)
        sums = ddp.all_reduce_(sums.cpu(), "sum")
        n = max(float(sums[2]), 1.0)  # samples evaluated (a stream may skip unreadable ones)
        return {"loss": float(sums[0]) / n, "acc": float(sums[1]) / n}

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift apart after local forwards)."""
        if not self.distributed:
            return
        for buf in self.model.buffers():
            ddp.broadcast_(buf, 0)

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (tensors and plain containers only)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self._sync_buffers()
        return {
            "format": STATE_FORMAT,
            "version": 1,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "rng": ddp.all_gather_object(rng) if self.distributed else [rng],
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self._batch_in_epoch,
            "epoch_sums": ddp.all_reduce_(self._epoch_sums(), "sum"),
            "history": [dict(r) for r in self.history],
            "elapsed": float(self._elapsed),
            "world_size": self.world_size,
            "config": self.config.to_dict(),
        }

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically to ``path`` (rank 0 writes; every rank must call it)."""
        state = self.state_dict()
        if self.rank == 0:
            atomic_torch_save(state, path)
        ddp.barrier()

    def load_state(self, path: str | Path) -> None:
        """Continue from a state written by :meth:`save_state` (loaded with ``weights_only=True``)."""
        state = torch_load(path, what="training state")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise PrunelabError(f"training state {path} is not a prunelab training state")
        if int(state.get("world_size", 1)) != self.world_size:
            raise PrunelabError(f"training state {path} was written by {state.get('world_size')} processes; "
                                f"resume it with the same number, not {self.world_size}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = str(exc).strip().splitlines()[0]
            raise PrunelabError(f"training state {path} does not fit this model / optimiser: {detail}") from exc
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        cb_states = state.get("callbacks") or []
        if len(cb_states) != len(self.callbacks):
            raise PrunelabError(f"training state {path} holds {len(cb_states)} callback states but the trainer has "
                                f"{len(self.callbacks)} callbacks")
        for cb, s in zip(self.callbacks, cb_states):
            cb.load_state_dict(s)
        rng = state["rng"][self.rank if len(state["rng"]) > self.rank else 0]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self._batch_in_epoch = int(state["batch_in_epoch"])
        self._epoch_loss, self._epoch_sizes, self._epoch_correct, self._epoch_lrs = [], [], [], []
        self._carry = torch.zeros(3, dtype=torch.float64)
        if self._batch_in_epoch:
            self._carry = state["epoch_sums"].double().clone()
        if self.rank != 0:
            # the saved sums are already summed over ranks: rank 0 carries them, the all-reduce adds the rest
            self._carry = torch.zeros(3, dtype=torch.float64)
        self.history = [dict(r) for r in state.get("history", [])]
        self._elapsed = float(state.get("elapsed", 0.0))
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        self._resumed = True


def train(model: nn.Module, data: DataBundle, config: TrainConfig | None = None,
          callbacks: tuple[Callback, ...] | list[Callback] = (), params=None) -> TrainResult:
    """Train ``model`` in place and return its :class:`TrainResult` (``Trainer(...).fit()``)."""
    return Trainer(model, data, config, callbacks, params=params).fit()


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, split: str = "test", batch_size: int = 512,
             device: torch.device | str | None = None, loss: str | None = None) -> dict[str, float | None]:
    """Mean loss (cross-entropy unless ``loss`` names another registered loss, or the bundle names its
    own in ``data.info["loss"]``: next-token for token blocks) and accuracy of ``model`` on a split,
    per counted prediction (eval mode; the mode is restored after).

    ``device`` defaults to the device of the model's first parameter (or buffer, or the CPU).
    """
    if device is None:
        first = next(model.parameters(), None)
        if first is None:
            first = next(model.buffers(), None)
        device = first.device if first is not None else torch.device("cpu")
    if len(data.split(split)) == 0:
        return {"loss": None, "acc": None}
    was_training = model.training
    model.eval()
    loss_fn = get_loss(loss if loss is not None else (data.info or {}).get("loss"))
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in Feed(data, device, batch_size=batch_size).evaluation(split, batch_size, 0, 1):
            out = logits_of(model(x))
            loss_sum += float(loss_fn(out.float(), y, reduction="sum"))
            right, counted = loss_fn.correct(out, y)
            correct += int(right)
            n += int(counted)
    finally:
        model.train(was_training)
    n = max(n, 1)
    return {"loss": loss_sum / n, "acc": correct / n}
