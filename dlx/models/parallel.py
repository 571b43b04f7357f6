"""Tensor-parallel state for model layers: this process's rank and group size, and the reductions.
Set once per worker by the process that owns the torch.distributed group; defaults to one rank."""
import torch
import torch.distributed as dist

_tp_group: dist.ProcessGroup | None = None
_tp_rank = 0
_tp_size = 1


def set_tensor_parallel(group: dist.ProcessGroup | None, rank: int, size: int) -> None:
    global _tp_group, _tp_rank, _tp_size
    _tp_group, _tp_rank, _tp_size = group, rank, size


def tp_rank() -> int:
    return _tp_rank


def tp_size() -> int:
    return _tp_size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum partial results of row-parallel layers across the tensor-parallel group."""
    if _tp_size > 1:
        dist.all_reduce(x, group=_tp_group)
    return x


def divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size ({parts})")
    return total // parts
