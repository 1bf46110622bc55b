"""torchrun's process group, shared by training and prediction: which process this is, how many there are,
and the few collective steps both need.

Under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1 in the environment) the group is started once per
process — NCCL with one GPU per process (LOCAL_RANK) on CUDA, gloo on the CPU. A plain `python` run is a
group of one: nothing is started and every collective step returns at once, so callers need no second path.
"""
from __future__ import annotations

import atexit
import datetime
import os
import time

import torch
import torch.distributed as dist


class Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process.

    device: "auto", "cpu", "cuda" (as `utils.select_device`) or a torch.device; under torchrun on CUDA each
        process takes the GPU of its LOCAL_RANK.
    timeout: how long a collective step waits for the slowest process (None: torch's default, 30 min for
        gloo, 10 for NCCL).
    """

    def __init__(self, device="auto", timeout: datetime.timedelta | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if isinstance(device, str):
            from utils import select_device
            device = select_device(device)
        self.device = torch.device(device)
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
                atexit.register(self.close)  # a command that returns early still leaves the group cleanly

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that alone writes results, logs and checkpoints."""
        return self.rank == 0

    def barrier(self, while_waiting=None, interval: float = 0.25) -> None:
        """Wait until every process got here; `while_waiting()` is called every `interval` seconds meanwhile
        (and once at the end), e.g. to move a progress bar."""
        if self.world == 1:
            return
        if while_waiting is None:
            dist.barrier()
            return
        work = dist.barrier(async_op=True)
        while not work.is_completed():
            while_waiting()
            time.sleep(interval)
        work.wait()
        while_waiting()

    def broadcast(self, obj):
        """Rank 0's `obj` on every process (picklable; what the other ranks pass is ignored)."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
