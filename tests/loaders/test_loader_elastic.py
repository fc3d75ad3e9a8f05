"""Loader state: ``state_dict``/``load_state_dict`` through JSON, elastic resume on another number of ranks or
workers (every unseen sample exactly once), bit-identical resume on the same configuration, and small splits
read by many ranks (every sample exactly once, equal steps)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from in21k.errors import DataError
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import digest, free_port, key_by_digest
from tests.loaders.prepared_data import make_prepared_dataset

BATCH = 3


def loaders(root: str, world: int, workers: int, split: str = "train", **kw) -> list:
    return [
        create_loader(
            data=root,
            split=split,
            batch_size=BATCH,
            num_workers=workers,
            seed=11,
            decode="none",
            rank=r,
            world_size=world,
            shuffle_block=5,
            **kw,
        )
        for r in range(world)
    ]


def keys_of(batch, table) -> list[str]:
    return [table[digest(img.numpy().tobytes())] for img in batch[0]]


def run(loader, table, *, steps: int | None = None) -> list[list[str]]:
    out = []
    for i, batch in enumerate(loader):
        if steps is not None and i == steps:
            break
        out.append(keys_of(batch, table))
    return out


def check_epoch(all_keys: set[str], runs: list[list[list[str]]], padding: int) -> None:
    seen = Counter(k for r in runs for b in r for k in b)
    assert set(seen) == all_keys  # nothing lost
    assert sum(seen.values()) - len(all_keys) == padding  # repeated only as much as the counted padding


@pytest.mark.parametrize(("old", "new"), [((4, 2), (2, 1)), ((4, 2), (3, 1)), ((2, 1), (3, 2)), ((3, 1), (1, 2))])
def test_elastic_resume_yields_every_unseen_sample_once(prepared: Path, old, new) -> None:
    table = key_by_digest(prepared, "train")
    first = loaders(str(prepared), *old)
    for ld in first:
        ld.set_epoch(1)
    cut_at = len(first[0]) // 2
    before = [run(ld, table, steps=cut_at) for ld in first]
    state = json.loads(json.dumps(first[0].state_dict(step=cut_at)))  # JSON round trip, as a checkpoint would
    assert state["epoch"] == 1 and state["segments"] == [[old[0], old[1], BATCH, cut_at]]
    assert 0 < state["samples_seen"] < state["samples"] == len(table)
    padding_before = sum(ld.plan(1).repeated for ld in first[:1])  # the plan is the same on every rank
    second = loaders(str(prepared), *new)
    for ld in second:
        ld.load_state_dict(state)
    after = [run(ld, table) for ld in second]
    assert len({len(r) for r in after}) == 1 and len(after[0]) == len(second[0])  # equal steps on every rank
    # Padding: what the first segment's steps repeated, plus the second segment's own.
    repeated_before = sum(len(b) for r in before for b in r) - len({k for r in before for b in r for k in b})
    check_epoch(set(table.values()), before + after, repeated_before + second[0].plan().repeated)
    assert repeated_before <= padding_before
    # The next epoch starts whole again, with the new configuration.
    for ld in second:
        ld.set_epoch(2)
    check_epoch(set(table.values()), [run(ld, table) for ld in second], second[0].plan(2).repeated)


def test_same_configuration_resume_is_bit_identical(prepared: Path) -> None:
    table = key_by_digest(prepared, "train")
    full = loaders(str(prepared), 2, 2)
    for ld in full:
        ld.set_epoch(3)
    reference = [run(ld, table) for ld in full]
    state = json.loads(json.dumps(full[0].state_dict(step=2)))
    again = loaders(str(prepared), 2, 2)
    for ld, ref in zip(again, reference, strict=True):
        ld.load_state_dict(state)
        assert ld.start_step == 2 and run(ld, table) == ref[2:]


def test_state_of_another_dataset_is_refused(prepared: Path, tmp_path: Path) -> None:
    other = make_prepared_dataset(
        tmp_path / "other", num_classes=3, shard_lengths_train=[5, 5], shard_lengths_val=[2], image_size=16, seed=9
    )
    state = loaders(str(prepared), 1, 1)[0].state_dict(step=0)
    with pytest.raises(DataError, match="another dataset"):
        loaders(str(other), 1, 1)[0].load_state_dict(state)


@pytest.mark.parametrize("world", [3, 4])
def test_one_validation_shard_on_many_ranks(tmp_path: Path, world: int) -> None:
    root = make_prepared_dataset(
        tmp_path / "one", num_classes=4, shard_lengths_train=[8, 8], shard_lengths_val=[10], image_size=16, seed=2
    )
    table = key_by_digest(root, "validation")
    ranks = [
        create_loader(
            data=str(root), split="validation", batch_size=2, num_workers=2, decode="none", rank=r, world_size=world
        )
        for r in range(world)
    ]
    runs = [run(ld, table) for ld in ranks]
    assert len({len(r) for r in runs}) == 1  # equal steps per rank
    stats = [ld.epoch_stats() for ld in ranks]
    check_epoch(set(table.values()), runs, sum(s["repeated"] for s in stats))
    assert all(s["shard_errors"] == 0 and s["corrupt_skipped"] == 0 for s in stats)


# ----------------------------------------------------------------------------------------- real processes
def _rank_main(rank: int, world: int, workers: int, root: str, port: int, out: str, state_file: str, stop: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        table = key_by_digest(root, "train")
        loader = create_loader(
            data=root, split="train", batch_size=BATCH, num_workers=workers, seed=11, decode="none", shuffle_block=5
        )
        if os.path.exists(state_file):
            loader.load_state_dict(json.loads(Path(state_file).read_text()))
        else:
            loader.set_epoch(1)
        keys = []
        for i, batch in enumerate(loader):
            if i == stop:
                break
            t = torch.tensor([len(batch[0])])
            dist.all_reduce(t)  # a collective per step, as DDP does: hangs if ranks disagree on the step count
            keys.append(keys_of(batch, table))
        if stop >= 0 and rank == 0:
            Path(state_file).write_text(json.dumps(loader.state_dict(step=stop)))
        Path(out, f"rank{rank}.json").write_text(json.dumps({"keys": keys, "repeated": loader.plan().repeated}))
    finally:
        dist.destroy_process_group()


def spawn(world: int, workers: int, root: Path, out: Path, state: Path, stop: int = -1) -> list[dict]:
    import torch.multiprocessing as mp

    out.mkdir()
    # fork: the ranks start in a moment (no re-import of torch), which matters on a 2-core machine.
    mp.start_processes(
        _rank_main,
        args=(world, workers, str(root), free_port(), str(out), str(state), stop),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.dist
@pytest.mark.slow
def test_four_ranks_checkpointed_resume_on_two_and_three(prepared: Path, tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    table = key_by_digest(prepared, "train")
    state = tmp_path / "state.json"
    first = spawn(4, 1, prepared, tmp_path / "four", state, stop=2)
    before = [r["keys"] for r in first]
    repeated_before = sum(len(b) for r in before for b in r) - len({k for r in before for b in r for k in b})
    for world, workers in ((2, 2), (3, 1)):
        after = spawn(world, workers, prepared, tmp_path / f"on{world}", state)
        assert len({len(r["keys"]) for r in after}) == 1  # equal steps per rank
        check_epoch(set(table.values()), before + [r["keys"] for r in after], repeated_before + after[0]["repeated"])


def test_a_range_inside_a_shard_starts_at_its_byte_offset(tmp_path: Path) -> None:
    """With the shards' sample offsets (``prepare`` writes them in the stats files) a reader whose range starts
    inside a shard opens it right there; without them (another tool's dataset) it reads up to that sample.
    Both give the same batches."""
    kw = dict(num_classes=4, shard_lengths_train=[9, 9], shard_lengths_val=[10], image_size=16, seed=6)
    with_offsets = make_prepared_dataset(tmp_path / "a", **kw)
    without = make_prepared_dataset(tmp_path / "b", stats=False, **kw)
    table = key_by_digest(with_offsets, "validation")
    runs = {}
    for name, root in (("offsets", with_offsets), ("read", without)):
        ranks = [
            create_loader(
                data=str(root), split="validation", batch_size=2, num_workers=0, decode="none", rank=r, world_size=3
            )
            for r in range(3)
        ]
        runs[name] = [run(ld, table) for ld in ranks]
        known = [ld.spec.read.offsets.known for ld in ranks[1:]]  # ranks 1 and 2 start inside the one shard
        if name == "offsets":
            assert all(k and all(isinstance(v, list) and len(v) == 10 for v in k.values()) for k in known)
        else:
            assert all(k and all(v is None for v in k.values()) for k in known)
    assert runs["offsets"] == runs["read"]
