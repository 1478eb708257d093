"""``TopkAccuracy.all_reduce`` over 2 Gloo processes equals one process over all the data."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smoothtopk import TopkAccuracy


def _data():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (50, 8), generator=generator).float()  # many ties
    return scores, torch.randint(0, 8, (50,), generator=generator)


def _meters():
    return {
        "micro": TopkAccuracy(k=(1, 3)),
        "macro": TopkAccuracy(k=(1, 3), average="macro", num_classes=8),
        "idle rank": TopkAccuracy(k=(1, 3)),  # rank 1 counts nothing: its state must line up
    }


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    scores, target = _data()
    shard = slice(0, 30) if rank == 0 else slice(30, None)
    meters = _meters()
    for name, meter in meters.items():
        if name != "idle rank":
            meter.update(scores[shard], target[shard])
        elif rank == 0:
            meter.update(scores, target)
        meter.all_reduce()
    torch.save({name: tuple(m.state()) for name, m in meters.items()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_sums_counts_exactly(tmp_path):
    out = str(tmp_path / "state")
    store = str(tmp_path / "store")
    mp.start_processes(_worker, args=(store, out), nprocs=2, start_method="fork")  # no re-import
    scores, target = _data()
    for name, meter in _meters().items():
        meter.update(scores, target)
        expected = meter.state()
        for rank in (0, 1):
            got = torch.load(f"{out}.{rank}")[name]
            for value, reference in zip(got, expected, strict=True):
                assert value.dtype == reference.dtype
                torch.testing.assert_close(value, reference, rtol=1e-15, atol=0)
