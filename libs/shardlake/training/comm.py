"""How training ranks talk: the collectives the training function needs, single-process or over Horovod."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Comm:
    """The collectives training needs; this base is the single-process case (identity)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        return value

    def allgather(self, value: np.ndarray) -> np.ndarray:
        """Concatenate every rank's array along axis 0 (lengths may differ), in rank order."""
        return value

    def distribute(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(module to train through, optimizer) that average gradients over ranks."""
        return model, optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Make every rank start from rank 0's parameters and optimizer state."""

    def barrier(self) -> None:
        pass


@dataclass
class HorovodComm(Comm):
    """Horovod's collectives (Gloo on CPU, NCCL when built for GPUs)."""

    hvd: object | None = None

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        return self.hvd.allreduce(torch.as_tensor(value), op=self.hvd.Sum).numpy()

    def allgather(self, value: np.ndarray) -> np.ndarray:
        return self.hvd.allgather(torch.as_tensor(value)).numpy()

    def distribute(self, model, optimizer):
        return model, self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def broadcast_state(self, model, optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def barrier(self) -> None:
        self.hvd.barrier()
