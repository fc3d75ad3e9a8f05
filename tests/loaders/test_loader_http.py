"""Streaming over HTTP from a local server (127.0.0.1) gives the batches of local disk, whether the server
answers byte-range requests (ranges start mid-shard at byte offsets) or only whole files (the loader then
reads each shard from byte 0 and skips to the offset)."""

from __future__ import annotations

from pathlib import Path

import pytest

from in21k.loaders import create_loader
from tests.http_static import ranges_served, static_server
from tests.loaders.loader_helpers import batch_keys, key_by_digest


@pytest.mark.parametrize("ranges", [False, True], ids=["whole-files", "byte-ranges"])
def test_http_gives_the_same_batches_as_local_disk(prepared: Path, ranges: bool) -> None:
    table = key_by_digest(prepared, "train")
    kw = dict(split="train", batch_size=4, num_workers=2, seed=2, decode="none")
    local = create_loader(data=str(prepared), **kw)
    before = ranges_served()
    with static_server(prepared, ranges=ranges) as http_root:
        remote = create_loader(data=http_root, **kw)
        assert batch_keys(remote, table) == batch_keys(local, table)
        assert (ranges_served() > before) == ranges
        with pytest.raises(FileNotFoundError, match="_info.json"):
            create_loader(data=http_root + "/nowhere", split="train", batch_size=4, num_workers=0)
