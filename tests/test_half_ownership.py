"""Auto-decoding split by half: balanced batches, each half's particles dealt to its owners only, its
gradients reduced among them alone, and each half's map and Adam moments handed to every process; and
work shared out one item per process (``DataParallel.map``)."""

import numpy as np
import torch
import torch.multiprocessing as mp

from napari_cryospin.engine import distributed
from napari_cryospin.engine.distributed import DataParallel, balanced_order
from napari_cryospin.engine.optimizers import adam
from napari_cryospin.model.volume import HartleyVolume
from process_group import free_port, join_as


def test_balanced_order_interleaves_the_halves_in_every_batch():
    rng = np.random.default_rng(0)
    halves = (rng.random(1000) < 0.4).astype(np.int64)  # unequal halves: 60 % and 40 %
    perm = rng.permutation(1000)
    order = balanced_order(perm, halves)
    assert sorted(order.tolist()) == list(range(1000))
    for h in (0, 1):  # each half's own order is kept
        assert (order[halves[order] == h] == perm[halves[perm] == h]).all()
    share = np.mean(halves == 1)
    for start in range(0, 1000, 64):
        batch = order[start : start + 64]
        assert abs(np.sum(halves[batch] == 1) - share * len(batch)) <= 1.0


def test_a_split_by_half_deals_each_half_to_its_owners_only():
    halves = np.array([0, 1] * 10 + [0] * 5)
    idx = np.arange(25)
    shares = [DataParallel(rank, 4).split(idx, halves, by_half=True) for rank in range(4)]
    assert sorted(np.concatenate(shares).tolist()) == idx.tolist()
    for rank, share in enumerate(shares):
        assert (halves[share] == rank % 2).all()
    assert abs(len(shares[0]) - len(shares[2])) <= 1 and abs(len(shares[1]) - len(shares[3])) <= 1
    assert len(DataParallel(1, 2).split(np.array([0, 2, 4]), halves, by_half=True)) == 0  # may be empty
    dp = DataParallel(0, 3)  # an odd number of processes cannot own halves: the usual split
    assert not dp.owns_halves and (halves[dp.split(idx, halves, by_half=True)] == 1).any()


def _owner_worker(rank: int, world: int, port: int) -> None:
    join_as(rank, world, port)
    torch.set_num_threads(1)
    dp = distributed.from_env(torch.device("cpu"))
    halves = np.array([0, 1] * 8)
    local = dp.split(np.arange(16), halves, by_half=True)  # 8 per half, 4 per owner
    volume = HartleyVolume(4, torch.zeros(4, 4, 4), copies=2)
    optimizer = adam(volume.parameters(), 0.1, torch.device("cpu"))
    half = rank % 2
    for p in volume.parameters():  # the other copy's gradient is never used: its owners' sum must not see it
        p.grad = torch.full_like(p, 1000.0)
        p.grad[half] = float(rank + 1)
    dp.average_gradients(volume)
    owners = range(half, world, 2)
    expected = sum((r + 1) * len(local) / 16 for r in owners)  # Σ over the half's owners of weight × grad
    assert torch.allclose(volume.mantissa.grad[half], torch.full((4, 4, 4), expected))
    optimizer.step()
    with torch.no_grad():  # the other copy has gone its own way here; its owners' copy must win
        volume.mantissa[1 - half] = -100.0 - rank
    dp.sync_copies(volume, optimizer)
    for h in (0, 1):
        for t in [volume.mantissa, *optimizer.state[volume.mantissa].values()]:
            if t.dim() == 4:
                got = t.detach()[h].clone()
                everyone = [torch.empty_like(got) for _ in range(world)]
                torch.distributed.all_gather(everyone, got)
                assert all(torch.equal(got, other) for other in everyone)
    assert (volume.mantissa[1 - half] > -100).all()  # taken from the owner, which never wrote -100
    assert dp.map(lambda x: (x * x, rank), range(6)) == [(x * x, x % world) for x in range(6)]  # one each
    distributed.shutdown()


def test_four_processes_reduce_each_half_among_its_owners_and_share_both_maps_and_work():
    mp.spawn(_owner_worker, args=(4, free_port()), nprocs=4)
