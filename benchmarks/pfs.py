"""Cost of one Pruning-from-Scratch gate-learning epoch vs one plain training epoch.

Wang et al. (2020) learn gates on a frozen network: no weight gradients are needed, only the
activation gradients that reach the gates, so a gate epoch should cost no more than a training
epoch (goal: <= 1.2x). Both run through prunelab's one trainer on the same model, data and batch
size; the plain epoch trains every weight with SGD, the gate epoch trains only the gates with Adam,
adds the sparsity penalty, clamps the gates after each step and evaluates the held-out split for
model selection (the plain epoch evaluates the same split). Runs alternate, plain and gate, so a
shared machine slows both alike; medians over the rounds are compared.

    .venv/bin/python benchmarks/pfs.py [--model resnet20] [--samples 1024] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


class EpochTimer:
    """Wall time of each epoch (from its start to its end hook) and of its training steps alone."""

    def __init__(self, device: torch.device | str) -> None:
        from prunelab.train.callbacks import Callback

        self.device = torch.device(device)
        self.epochs: list[float] = []
        self.steps: list[float] = []
        timer = self

        class _Hook(Callback):
            def on_epoch_start(self, trainer) -> None:
                timer._sync()
                timer._t0 = timer._last = time.perf_counter()

            def on_step_end(self, trainer) -> None:
                timer._sync()
                timer._last = time.perf_counter()

            def on_epoch_end(self, trainer, metrics) -> None:
                timer._sync()
                now = time.perf_counter()
                timer.epochs.append(now - timer._t0)
                timer.steps.append(timer._last - timer._t0)

        self.callback = _Hook()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--samples", type=int, default=1024, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (plus one warm-up round)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import dataclasses

    from prunelab.data import load
    from prunelab.models import create, resolve
    from prunelab.protocols.build import fit_spec_to_data
    from prunelab.protocols.pfs import PFSConfig, learn_gates
    from prunelab.train import TrainConfig, Trainer, resolve_device

    device = resolve_device(args.device)
    data = load("synthetic", shape="3x32x32", n_train=args.samples, n_val=max(1, args.samples // 10), n_test=0)
    spec = fit_spec_to_data(resolve(args.model), data)
    base = TrainConfig(epochs=1, batch_size=args.batch_size, device=str(device), seed=0)
    plain_cfg = dataclasses.replace(base, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="constant")
    pfs = PFSConfig(epochs=1, batch_size=args.batch_size, holdout=0.0)  # held-out = the bundle's val split

    torch.manual_seed(0)
    plain_model = create(spec)
    gate_model = create(spec)
    plain_t, gate_t = EpochTimer(device), EpochTimer(device)
    for _ in range(args.rounds + 1):
        Trainer(plain_model, data, plain_cfg, callbacks=[plain_t.callback]).fit()
        learn_gates(spec, data, pfs, base, model=gate_model, callbacks=[gate_t.callback])
        for p in gate_model.parameters():  # learn_gates froze them; the next round freezes again
            p.requires_grad_(True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs[1:])  # the first round warms up

    steps = -(-len(data.train) // args.batch_size)
    print(f"PFS gate learning vs plain training: {args.model}, {len(data.train)} samples/epoch, batch "
          f"{args.batch_size}, {steps} steps/epoch, held-out {len(data.val)}, device {device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"{'':24}{'plain s':>10}{'gates s':>10}{'ratio':>8}")
    for name, p, g in (("epoch (steps + eval)", plain_t.epochs, gate_t.epochs),
                       ("training steps only", plain_t.steps, gate_t.steps)):
        print(f"{name:24}{med(p):10.3f}{med(g):10.3f}{med(g) / med(p):8.3f}")
    ratio = med(gate_t.epochs) / med(plain_t.epochs)
    print(f"gate epoch / plain epoch = {ratio:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
