"""Data-parallel calibration on torch.distributed (`torchrun --nproc-per-node N -m prunekit compress ...`).

Each rank runs the calibration batches `rank::world` through the same model and the sums that statistics,
grams and perplexities are made of are all-reduced (gloo on CPU, NCCL on GPU), so every rank holds the same
totals, computes the same scores, plan and refit, and ends with the same weights; rank 0 writes the artifact.
Outside torchrun (no WORLD_SIZE, or 1) every function here is the identity.
"""

from __future__ import annotations

import torch

from prunekit.env import torchrun_var

_created = False  # whether init_from_env made the process group (then finish() ends it)


def init_from_env(device: torch.device) -> int:
    """Join the process group torchrun describes in the environment; returns the world size."""
    n = torchrun_var("WORLD_SIZE", 1)
    if n <= 1:
        return 1
    import torch.distributed as dist

    global _created
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(torchrun_var("LOCAL_RANK", 0))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _created = True
    return dist.get_world_size()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: list) -> list:
    """This rank's share of a list (every world-th item from its rank on)."""
    rank, n = world()
    return items if n == 1 else items[rank::n]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, in place (every rank gets the same bits)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def all_sum_floats(*vals: float) -> list[float]:
    if world()[1] == 1:
        return list(vals)
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    return all_sum(torch.tensor(vals, dtype=torch.float64, device=device)).tolist()


def env_rank() -> int:
    """This process's rank as torchrun announces it, known before the group is joined."""
    return torchrun_var("RANK", 0)


def from_rank0(obj):
    """Rank 0's value of a picklable object, on every rank (decisions the ranks must agree on)."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_ranks() -> int:
    """Processes of this run on this host (they share its memory)."""
    return torchrun_var("LOCAL_WORLD_SIZE", 1)


def finish() -> None:
    """Leave the process group that init_from_env made (one a caller made is the caller's to end)."""
    global _created
    import torch.distributed as dist

    if _created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _created = False
