"""Several processes under torchrun: the process group, ranks, barriers and shards of image ids.

torchrun starts one process per rank and tells each its RANK, WORLD_SIZE and LOCAL_RANK through
the environment. Without torchrun (`python -m pipeline ...`) no process group is made and every
helper here answers as for the only process: rank 0 of 1, barriers that return at once.
"""
from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
# Ranks wait at barriers while rank 0 alone prepares a folder or runs a stage that is not split
# (data, eval, report), which on a large dataset takes far longer than torch's default timeouts
# (10 to 30 minutes). A rank that crashes still ends the job at once: torchrun stops the others.
WAIT = timedelta(hours=24)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def device(choice: str) -> torch.device:
    """The device `choice` ("auto", "cpu" or "cuda") means for this process: under torchrun, the
    GPU of its LOCAL_RANK."""
    if choice not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not '{choice}'")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA device")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init(device_choice: str) -> None:
    """Join torchrun's process group, once: nccl when this process trains on a GPU, else gloo."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    target = device(device_choice)
    if target.type == "cuda":
        torch.cuda.set_device(target)
        dist.init_process_group("nccl", timeout=WAIT, device_id=target)
    else:
        dist.init_process_group("gloo", timeout=WAIT)
    atexit.register(shutdown)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(ids: list) -> list:
    """This rank's share of `ids`: every world_size-th one from its rank on.

    Shards are disjoint and cover `ids`; shard the full list before dropping ids already done, so
    that what one rank has written does not move another rank's share.
    """
    return ids[rank()::world_size()]


def unwritten(ids: list, path_of: Callable[[Any], Path]) -> list:
    """This rank's `shard` of `ids` but those whose file `path_of(id)` exists: the work left where
    every finished image has written that file last, as a killed run leaves it."""
    return [i for i in shard(ids) if not path_of(i).is_file()]


def from_main(value: Any) -> Any:
    """Rank 0's `value`, on every rank: for decisions every rank must take the same way."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values
