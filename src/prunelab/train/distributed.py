"""Data-parallel helpers: one training run spread over processes launched by ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_env` reads them
and joins the process group: NCCL when CUDA is available, gloo on CPU. Without those variables (or
with ``WORLD_SIZE=1``) everything here is a no-op, so the same code runs in one process.

Pruning criteria that accumulate statistics over batches (Fisher, activation x gradient, BN scales
under data parallelism) must sum them over ranks before ranking: ``all_reduce_(scores)`` does that in
place, so every rank takes the same pruning decision.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "product": "PRODUCT", "mean": "SUM"}


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


#: how a command's ``--batch-size`` and ``--lr`` are read under torchrun (see :func:`scale_for_world`)
BATCH_SCALINGS = ("keep-global", "scale-lr")


def scale_for_world(config, world: int, scaling: str = "keep-global"):
    """The per-process training config of a command run on ``world`` data-parallel processes.

    ``keep-global`` (the default): ``config.batch_size`` is the global batch; each process takes
    ``batch_size / world`` samples a step, so the run takes the steps, batches and learning rates of
    the single-process run (the batch must divide by ``world``). ``scale-lr``: each process takes
    ``batch_size`` samples (global batch ``batch_size x world``, ``world`` times fewer steps) and the
    learning rate is scaled by ``world``, the linear scaling rule of Goyal et al. (2017, sec. 2.1).
    Unchanged for one process.
    """
    from dataclasses import replace

    from prunelab.errors import PrunelabError, unknown_choice

    if scaling not in BATCH_SCALINGS:
        raise unknown_choice("batch scaling", scaling, BATCH_SCALINGS)
    if world <= 1:
        return config
    if scaling == "scale-lr":
        return replace(config, lr=config.lr * world)
    if config.batch_size % world:
        raise PrunelabError(f"--batch-size {config.batch_size} does not split over {world} processes "
                            f"(--batch-scaling keep-global); use a multiple of {world}, or --batch-scaling scale-lr")
    return replace(config, batch_size=config.batch_size // world)


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    Returns True when running distributed (``WORLD_SIZE > 1``). The backend is NCCL when CUDA is
    available and gloo otherwise, unless ``backend`` says. On CUDA the process's device is set to
    ``cuda:LOCAL_RANK``. Calling it again, or without torchrun, is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1 or not dist.is_available():
        return False
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda and backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return dist.get_world_size() > 1


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over all ranks in place (``sum``, ``mean``, ``max``, ``min``, ``product``).

    Works whatever device the tensor lives on: it is moved to the backend's device for the collective
    and copied back. A no-op outside a distributed run. Returns ``tensor``.
    """
    if op not in _OPS:
        from prunelab.errors import unknown_choice

        raise unknown_choice("reduce op", op, _OPS)
    if not is_distributed():
        return tensor
    dev = _collective_device()
    work = tensor if tensor.device == dev else tensor.to(dev)
    dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]))
    if op == "mean":
        work.div_(dist.get_world_size()) if work.is_floating_point() else work.floor_divide_(dist.get_world_size())
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy ``tensor`` from rank ``src`` to every rank, in place (no-op when not distributed)."""
    if not is_distributed():
        return tensor
    dev = _collective_device()
    work = tensor if tensor.device == dev else tensor.to(dev)
    dist.broadcast(work, src=src)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(obj):
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def destroy() -> None:
    """Leave the process group if one was joined.

    Every rank first meets at a barrier: a rank that tears its gloo connections down while a peer is
    still sending aborts the peer's process.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
