"""torch.distributed on its own engines, 2 processes on gloo (CPU): DDP, FSDP2 (`fully_shard`, DTensor
parameters) and ZeroRedundancyOptimizer over gradfused optimizers each equal one process on the full batch.
Under FSDP2, GradientAlignment sums <g,a>, ‖g‖², ‖a‖² over the shards, so it equals the unsharded run."""
from __future__ import annotations

import json
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch was built without distributed/gloo")

WORLD = 2
STEPS = 4
BATCH = 8  # split evenly over the ranks; each rank's loss is its half's mean, as DDP/FSDP average


def _model():
    # 5 output rows: uneven shards (3 + 2) under FSDP2
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def _batches():
    gen = torch.Generator().manual_seed(123)
    return [(torch.randn(BATCH, 6, generator=gen), torch.randn(BATCH, 5, generator=gen)) for _ in range(STEPS)]


def _train(model, opt, batches, rank=None):
    for x, y in batches:
        if rank is not None:
            half = BATCH // WORLD
            x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def _single_process(make):
    torch.manual_seed(0)
    model = _model()
    _train(model, make(list(model.parameters())), _batches())
    return [p.detach() for p in model.parameters()]


def _compare(got, want):
    for p, q in zip(got, want, strict=True):
        torch.testing.assert_close(p, q)


def _run_ddp(rank, make):
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    _train(model, make(list(model.parameters())), _batches(), rank)
    return [p.detach() for p in model.parameters()]


def _run_fsdp2(rank, make):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = _model()
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    _train(model, make(list(model.parameters())), _batches(), rank)
    return [p.full_tensor().detach() for p in model.parameters()]


def _run_zero(rank, make):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    cls, kwargs = make
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **kwargs)
    _train(model, opt, _batches(), rank)
    return [p.detach() for p in model.parameters()]


def _worker(rank, port, scenario, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import gradfused as gf
    from optim_table import CASES

    results = {}
    try:
        if scenario == "zero":
            cases = [("AdamW", (gf.AdamW, dict(lr=1e-2))), ("PersistentSGD", (gf.PersistentSGD, dict(lr=0.1, decay=0.9)))]
            for name, make in cases:
                got = _run_zero(rank, make)
                cls, kwargs = make
                results[name] = _check(got, lambda p, cls=cls, kwargs=kwargs: cls(p, **kwargs))
        else:
            run = {"ddp": _run_ddp, "fsdp2": _run_fsdp2}[scenario]
            for case in CASES:
                if scenario == "fsdp2" and case.random:
                    continue  # rejected for DTensor parameters (tests/test_randomness.py)
                make = lambda p, case=case: case.make(p, True)  # noqa: E731
                results[case.name] = _check(run(rank, make), make)
    finally:
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(results, f)
        dist.destroy_process_group()


def _check(got, make) -> str:
    try:
        _compare(got, _single_process(make))
        return "ok"
    except Exception:  # noqa: BLE001  (reported per case by the test)
        return traceback.format_exc(limit=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scenario", ["ddp", "fsdp2", "zero"])
def test_data_parallel_equals_one_process_on_the_full_batch(scenario, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                   os.environ.get("PYTHONPATH")])))
    out = tmp_path / "results.json"
    mp.spawn(_worker, args=(_free_port(), scenario, str(out)), nprocs=WORLD, join=True)
    results = json.loads(out.read_text())
    assert results, "no case ran"
    failed = {name: msg for name, msg in results.items() if msg != "ok"}
    assert not failed, "\n".join(f"{name}:\n{msg}" for name, msg in failed.items())
