"""DDP plumbing: init from torchrun's environment (gloo on CPU, NCCL on GPU), rank-0 writing, sharding."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from nasdeploy.errors import ConfigError
from nasdeploy.utils.rng import capture_rng_state, restore_rng_state, seed_everything


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def launched_as_main() -> bool:
    """True unless this process is a non-zero rank of a torchrun launch (for CLI output)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cpu' / 'cuda' / 'cuda:N' as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available on this machine")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, initialized_here=True)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistContext]:
    """init_distributed for the duration of a run (the group is left afterwards if this call joined it)."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        shutdown_distributed(ctx)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group if this context created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum float metrics over ranks (float64 on the context's device)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def local_batch_size(global_batch: int, ctx: DistContext, section: str) -> int:
    """The per-process share of a global batch (divisible by the world size, >= 2 for BatchNorm)."""
    if global_batch % ctx.world_size:
        raise ConfigError(f"{section}.batch_size ({global_batch}) must be divisible by the {ctx.world_size} DDP processes")
    local = global_batch // ctx.world_size
    if local < 2:
        raise ConfigError(f"{section}.batch_size ({global_batch}) gives {local} image per process; "
                          f"BatchNorm needs >= 2, use >= {2 * ctx.world_size}")
    return local


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """`model` in DistributedDataParallel when several processes take part, else `model` itself."""
    if not ctx.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def gather_rng_states(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's RNG states (capture_rng_state), in rank order, on every rank (for the checkpoint)."""
    state = capture_rng_state()
    if not ctx.distributed:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rank_rng(states: Any, ctx: DistContext, epoch: int) -> None:
    """Restore this rank's saved RNG state; under another world size re-seed by (epoch, rank) instead.

    `states` is gather_rng_states()'s list.
    """
    if isinstance(states, list) and len(states) == ctx.world_size:
        restore_rng_state(states[ctx.rank])
    else:  # a different number of processes: continue deterministically, but not bitwise
        seed_everything(7919 * epoch + 1000 * ctx.rank + 1)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank."""
    if ctx.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def train_sampler(dataset: Dataset, ctx: DistContext, seed: int) -> DistributedSampler:
    """A shuffling sampler sharded over ranks; call set_epoch(e) each epoch for a new deterministic order."""
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                              drop_last=True)


class ShardSampler(Sampler[int]):
    """Every rank-th index in order, without padding: exact evaluation over ranks."""

    def __init__(self, length: int, ctx: DistContext):
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SharedShuffleSampler(Sampler[int]):
    """This rank's share (every world-th index, tail dropped) of a shuffle drawn from `generator`.

    Every rank seeds its generator alike (by seed and epoch) so all draw the same permutation. Passed as
    DataLoader(sampler=this, generator=generator), one process gets DataLoader(shuffle=True, generator=...)'s order.
    """

    def __init__(self, length: int, ctx: DistContext, generator: torch.Generator):
        self.shuffle = RandomSampler(range(length), generator=generator)
        self.rank, self.world = ctx.rank, ctx.world_size
        self.per_rank = length // ctx.world_size

    def __iter__(self) -> Iterator[int]:
        order = list(self.shuffle)
        return iter(order[self.rank: self.per_rank * self.world: self.world])

    def __len__(self) -> int:
        return self.per_rank


def shard_loader(dataset: Dataset, batch_size: int, ctx: DistContext, num_workers: int = 0) -> DataLoader:
    """An evaluation loader of this rank's shard, in order (ShardSampler): every sample once over all ranks."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx), num_workers=num_workers)


def shared_shuffle_loader(dataset: Dataset, batch_size: int, ctx: DistContext, generator: torch.Generator,
                          num_workers: int = 0) -> DataLoader:
    """A training loader of this rank's share of the shuffle `generator` draws (SharedShuffleSampler), tail dropped."""
    return DataLoader(dataset, batch_size=batch_size, sampler=SharedShuffleSampler(len(dataset), ctx, generator),
                      drop_last=True, generator=generator, num_workers=num_workers, worker_init_fn=rank_worker_init(ctx))


def _offset_worker_seed(rank: int, worker_id: int) -> None:
    torch.manual_seed((torch.initial_seed() + 7919 * rank) % 2**63)


def rank_worker_init(ctx: DistContext) -> Callable[[int], None] | None:
    """A DataLoader worker_init_fn giving each rank's workers their own torch RNG stream (None on rank 0).

    Loaders whose generator every rank seeds alike (SharedShuffleSampler) hand out the same worker seeds on
    every rank; without this the ranks' workers would draw the same augmentations.
    """
    return functools.partial(_offset_worker_seed, ctx.rank) if ctx.rank else None
