"""2 ranks x 2 workers under a real torch.distributed (gloo) group, over shards of unequal lengths."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.loaders.loader_helpers import TRAIN_LENGTHS, digest, free_port, key_by_digest

WORLD, WORKERS, BATCH, RESUME_AT = 2, 2, 4, 3


def _rank_main(rank: int, root: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from in21k.loaders import create_loader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        table = key_by_digest(root, "train")
        # rank and world_size come from the initialised process group.
        loader = create_loader(data=root, split="train", batch_size=BATCH, num_workers=WORKERS, seed=7, decode="none")
        result = {"len": len(loader), "num_classes": loader.num_classes}
        runs = {}
        for name, epoch, start in (("e0", 0, 0), ("e0_again", 0, 0), ("e1", 1, 0), ("e0_resumed", 0, RESUME_AT)):
            loader.set_epoch(epoch, start_step=start)
            keys = []
            for images, labels in loader:
                # What DDP does every step: a collective that would hang if one rank ran out of batches.
                t = torch.tensor([len(images)], dtype=torch.int64)
                dist.all_reduce(t)
                keys.append([table[d] for d in _digests(images)])
                if labels.dtype != torch.int64 or len(labels) != len(images):
                    raise RuntimeError(f"bad labels {labels}")
            runs[name] = {"keys": keys, "stats": loader.epoch_stats()}
        result["runs"] = runs
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _digests(images) -> list[str]:
    return [digest(img.numpy().tobytes()) for img in images]


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_two_workers(prepared: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # fork: the ranks start in a moment (no re-import of torch), which matters on a 2-core machine.
    mp.start_processes(
        _rank_main, args=(str(prepared), free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    steps = math.ceil(math.ceil(sum(TRAIN_LENGTHS) / WORLD) / BATCH)
    assert [r["len"] for r in ranks] == [steps, steps]
    for name in ("e0", "e0_again", "e1"):
        assert [len(r["runs"][name]["keys"]) for r in ranks] == [steps, steps], name
        assert all(len(b) == BATCH for r in ranks for b in r["runs"][name]["keys"])
        # Disjoint: a sample is read by one rank only.
        per_rank = [{k for b in r["runs"][name]["keys"] for k in b} for r in ranks]
        assert not per_rank[0] & per_rank[1], name
        stats = [r["runs"][name]["stats"] for r in ranks]
        assert [s["batches"] for s in stats] == [steps, steps]
        # Every sample is yielded; the only repeats are the counted padding.
        assert len(per_rank[0] | per_rank[1]) == sum(TRAIN_LENGTHS)
        assert steps * BATCH * WORLD == sum(TRAIN_LENGTHS) + sum(s["repeated"] for s in stats)
    for r in ranks:
        runs = r["runs"]
        assert runs["e0"]["keys"] == runs["e0_again"]["keys"]  # same seed and epoch: same order
        assert runs["e0"]["keys"] != runs["e1"]["keys"]  # next epoch: another order
        assert runs["e0_resumed"]["keys"] == runs["e0"]["keys"][RESUME_AT:]  # exactly the remaining batches
        assert runs["e0_resumed"]["stats"]["batches"] == steps - RESUME_AT
    # The next epoch reshuffles the shard-to-rank assignment too, not only the order inside a rank.
    e0 = {k for b in ranks[0]["runs"]["e0"]["keys"] for k in b}
    e1 = {k for b in ranks[0]["runs"]["e1"]["keys"] for k in b}
    assert e0 != e1
