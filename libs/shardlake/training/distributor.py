"""The second backend: the same training function under Spark's TorchDistributor (torch.distributed).

``TorchDistributor(local_mode=True).run(distributor_entry, job)`` starts ``torchrun`` with one
process per rank; each calls ``distributor_entry``, which joins the process group (Gloo on CPU,
NCCL when every rank has a GPU) and trains through ``TorchComm``.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from shardlake.training.comm import Comm
from shardlake.training.worker import TrainJob, threads_per_rank, train_and_test


@dataclass
class TorchComm(Comm):
    """Collectives over an initialised torch.distributed process group."""

    device: torch.device = torch.device("cpu")  # where collectives run: CUDA for NCCL, CPU for Gloo

    def _tensor(self, value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(value)).to(self.device)

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        tensor = self._tensor(value)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def allgather(self, value: np.ndarray) -> np.ndarray:
        """Uneven arrays: lengths first, then every array padded to the longest, then trimmed."""
        value = np.asarray(value)
        lengths = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        dist.all_gather(lengths, torch.tensor([len(value)], dtype=torch.int64, device=self.device))
        lengths_list = [int(n) for n in torch.cat(lengths).cpu()]
        longest = max(lengths_list)
        padded = np.zeros((longest, *value.shape[1:]), dtype=value.dtype)
        padded[:len(value)] = value
        parts = [torch.empty_like(self._tensor(padded)) for _ in range(self.size)]
        dist.all_gather(parts, self._tensor(padded))
        return np.concatenate([p.cpu().numpy()[:n] for p, n in zip(parts, lengths_list)])

    def distribute(self, model, optimizer):
        """DDP averages gradients during backward (bucketed allreduce), like Horovod's DistributedOptimizer."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids), optimizer

    def broadcast_state(self, model, optimizer) -> None:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor.data, src=0)
        state = [optimizer.state_dict() if self.rank == 0 else None]
        dist.broadcast_object_list(state, src=0, device=self.device if self.device.type == "cuda" else None)
        if self.rank != 0:
            optimizer.load_state_dict(state[0])

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_result(self, result: dict) -> dict:
        """Rank 0's result on every rank."""
        box = [result if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


def _backend() -> tuple[str, torch.device]:
    """NCCL on the rank's GPU when GPUs exist, else Gloo on the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return "nccl", device
    return "gloo", torch.device("cpu")


def distributor_entry(job: TrainJob) -> dict:
    """Entry point TorchDistributor runs on every rank (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, ...).

    Every rank returns rank 0's result: TorchDistributor keeps whichever rank writes its output
    last, so all of them must write the same thing.
    """
    backend, device = _backend()
    dist.init_process_group(backend=backend)
    try:
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(threads_per_rank(local_size, job.torch_threads))
        comm = TorchComm(rank=dist.get_rank(), size=dist.get_world_size(),
                         local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device)
        result = comm.broadcast_result(train_and_test(job, comm))
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_process_group()
    return result


def leave_process_group() -> None:
    """Tear the process group down only once every rank is done with every collective.

    A rank that exits while another still talks to it, or while DDP's reducer still holds Gloo work,
    can die in Gloo's destructor at interpreter exit (std::terminate, SIGABRT) after its work is
    done; torchrun then fails the whole run. Seen 1 in ~10 runs of two ranks on 2 busy cores.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
