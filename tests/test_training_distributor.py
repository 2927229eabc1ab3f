"""TorchComm on a real torch.distributed process group: two Gloo processes on this machine."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shardlake.training.distributor import TorchComm, leave_process_group
from shardlake.training.worker import lockstep

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scenario(rank: int, port: int, out: str) -> None:
    """What each rank does; its observations go to out/rank-N.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    comm = TorchComm(rank=rank, size=WORLD)
    seen: dict = {}
    mine = np.arange(rank * 10, rank * 10 + (3 if rank == 0 else 1), dtype=np.float32)  # uneven: 3 and 1
    seen["allgather"] = comm.allgather(mine).tolist()
    seen["allreduce"] = comm.allreduce_sum(np.array([rank + 1.0, 10.0])).tolist()
    stream = iter([np.full(2, rank)] * (5 if rank == 0 else 2))
    seen["lockstep"] = [None if b is None else int(b[0]) for b in lockstep(stream, comm, block=2)]

    torch.manual_seed(rank)  # different initial weights on each rank
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    comm.broadcast_state(model, optimizer)
    seen["broadcast"] = model.weight.detach().flatten().tolist()
    train_model, optimizer = comm.distribute(model, optimizer)
    data = torch.full((4, 3), float(rank + 1))  # different data on each rank
    train_model(data).sum().backward()
    seen["grad"] = model.weight.grad.flatten().tolist()
    optimizer.step()
    seen["after_step"] = model.weight.detach().flatten().tolist()
    seen["result"] = comm.broadcast_result({"rank": rank, "value": rank * 7})
    del train_model, optimizer, model
    leave_process_group()
    Path(out, f"rank-{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchcomm")
    mp.start_processes(_scenario, args=(_free_port(), str(out)), nprocs=WORLD, start_method="spawn", join=True)
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(WORLD)]


def test_allgather_concatenates_uneven_arrays_in_rank_order(seen):
    assert [s["allgather"] for s in seen] == [[0.0, 1.0, 2.0, 10.0]] * WORLD


def test_allreduce_sums_over_ranks(seen):
    assert [s["allreduce"] for s in seen] == [[3.0, 20.0]] * WORLD


def test_lockstep_pads_the_shorter_rank_to_the_same_number_of_steps(seen):
    assert [s["lockstep"] for s in seen] == [[0, 0, 0, 0, 0], [1, 1, None, None, None]]


def test_broadcast_state_gives_every_rank_rank_zeros_parameters(seen):
    torch.manual_seed(0)
    assert [s["broadcast"] for s in seen] == [torch.nn.Linear(3, 1).weight.flatten().tolist()] * WORLD


def test_gradients_are_averaged_over_ranks(seen):
    # d(sum(w.x))/dw over 4 rows of constant (rank + 1): 4 and 8; their mean is 6.
    assert [s["grad"] for s in seen] == [[6.0, 6.0, 6.0]] * WORLD


def test_ranks_hold_the_same_parameters_after_a_step(seen):
    assert seen[0]["after_step"] == seen[1]["after_step"]


def test_every_rank_returns_rank_zeros_result(seen):
    assert [s["result"] for s in seen] == [{"rank": 0, "value": 0}] * WORLD
