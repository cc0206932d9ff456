"""Several processes, one run: who owns the run folder, and how the others wait for it.

``torchrun --nproc_per_node=2 -m relcast run ...`` (or ``srun`` under SLURM) starts the same
command in every process. Rank 0 owns the run folder: it prepares the market, writes every
file, extracts and evaluates; the other ranks wait at barriers and read what rank 0 wrote.
Every training step (Stage1, its out-of-fold fold models, Stage3) runs data-parallel on all
ranks through Lightning's ``ddp`` strategy, which finds the process group started here and the
launcher's environment (``TorchElasticEnvironment``, ``SLURMEnvironment``), so it never starts
processes of its own (docs/scaling.md).

The process group is started once, by :func:`init`, from the launcher's variables (gloo on CPU,
nccl when CUDA is present). Without a launcher every function here is the one-process answer
(rank 0 of 1) and costs nothing.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT_ENV = "RELCAST_DIST_TIMEOUT"  # seconds a rank waits at a barrier (rank 0 may evaluate)
DEFAULT_TIMEOUT = 6 * 3600


class RankFailed(RuntimeError):
    """Rank 0 failed in a step the other ranks were waiting for."""


def _environment():
    """Lightning's description of the launcher, or None when this is one plain process."""
    if not ("WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ):
        return None  # no launcher: keep Lightning's import cost out of the plain CLI
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return SLURMEnvironment()
    return None


def launched() -> bool:
    """True in a process started by torchrun or srun with more than one process in all."""
    env = _environment()
    return env is not None and env.world_size() > 1


def init(accelerator: str = "auto") -> bool:
    """Start the process group from the launcher's environment (once); False without one.

    The backend is nccl when the run trains on CUDA GPUs (``accelerator`` gpu/cuda/auto with
    CUDA present), gloo otherwise (CPU).

    Also gives each process ``cores / local processes`` torch threads, so ranks on one machine
    do not fight over the cores (torchrun sets ``OMP_NUM_THREADS=1`` otherwise).
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    env = _environment()
    if env is None or env.world_size() <= 1:
        return False
    local = local_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    backend = "nccl" if gpu else "gloo"
    if gpu:  # each process owns one GPU of its machine (Lightning picks the same one)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", env.local_rank())))
    seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    dist.init_process_group(
        backend,
        rank=env.global_rank(),
        world_size=env.world_size(),
        timeout=datetime.timedelta(seconds=seconds),
    )
    return True


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    if _group_ready():
        import torch.distributed as dist

        return dist.get_rank()
    env = _environment()
    return env.global_rank() if env is not None else 0


def world_size() -> int:
    """Number of processes of the run (1 without a launcher)."""
    if _group_ready():
        import torch.distributed as dist

        return dist.get_world_size()
    env = _environment()
    return env.world_size() if env is not None else 1


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``, SLURM's tasks per node)."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "").split("(")[0]  # SLURM may write "2(x3)"
        if value.isdigit():
            return int(value)
    nodes = int(os.environ.get("SLURM_NNODES", "1") or 1)
    return max(1, world_size() // nodes)


def is_main() -> bool:
    """True on the process that owns the run folder (global rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank is here (nothing to wait for in one process)."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not _group_ready():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(step: str, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; the other ranks wait, and fail too if rank 0 fails."""
    if not _group_ready():
        return fn()
    error: str | None = None
    result = None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast(f"{type(exc).__name__}: {exc}")  # release the waiting ranks
            raise
        broadcast(None)
        return result
    error = broadcast(None)
    if error is not None:
        raise RankFailed(f"rank 0 failed in step {step}: {error}")
    return None


def trainer_settings(settings: Any) -> Any:
    """``trainer.*`` as Lightning must see it in this process: under a launcher, ``ddp`` over
    every process (devices = processes per node, num_nodes = nodes), whatever the config said
    for one process; without one, the config unchanged.

    A config asking for several devices with ``ddp`` outside a launcher is refused: Lightning
    would start the other processes itself, each re-running the whole command.
    """
    from relcast.config import RelcastConfigError

    n = world_size()
    if n <= 1:
        devices = settings.devices
        many = (
            settings.num_nodes > 1
            or devices == -1
            or (isinstance(devices, int) and devices > 1)
            or (isinstance(devices, str) and "," in devices)
        )
        if many and settings.strategy in ("ddp", "ddp_find_unused_parameters_true", "fsdp"):
            raise RelcastConfigError(
                f"trainer.strategy={settings.strategy} on devices={devices}, num_nodes="
                f"{settings.num_nodes} needs one process per device: launch with `torchrun "
                f"--nproc_per_node={devices if isinstance(devices, int) and devices > 0 else 'N'}"
                " -m relcast run ...` (docs/scaling.md), or use trainer.strategy=ddp_spawn"
            )
        return settings
    if "spawn" in settings.strategy:
        raise RelcastConfigError(
            f"trainer.strategy={settings.strategy} starts processes itself, but this command "
            f"already runs in {n} processes (torchrun/srun): use trainer.strategy=ddp or auto"
        )
    local = local_world_size()
    strategy = "ddp" if settings.strategy == "auto" else settings.strategy
    return settings.model_copy(
        update={"strategy": strategy, "devices": local, "num_nodes": max(1, n // local)}
    )


def per_rank(batch: int) -> int:
    """This rank's share of a global batch: the config's batch sizes mean the whole step, so
    the same config trains on the same batches in one process or in several."""
    return max(1, int(batch) // world_size())
