"""torchrun environment detection: none set, all set, half set (must name what is missing)."""

from __future__ import annotations

import pytest

from in21k.training.distributed import get_rank, get_world_size, init_distributed, is_main_process, read_env

FULL = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_no_environment_means_single_process(monkeypatch):
    for k in FULL:
        monkeypatch.delenv(k, raising=False)
    assert read_env({}) is None
    info = init_distributed()
    assert (info.rank, info.world_size, info.enabled) == (0, 1, False)
    assert get_rank() == 0 and get_world_size() == 1 and is_main_process()


def test_full_environment_is_read():
    assert read_env(FULL) == FULL


@pytest.mark.parametrize("missing", ["MASTER_PORT", "LOCAL_RANK"])
def test_half_set_environment_names_missing_variable(missing):
    env = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(RuntimeError, match=f"{missing} missing.*torchrun"):
        read_env(env)


def test_bad_values_are_rejected():
    with pytest.raises(RuntimeError, match="RANK=2 is not below WORLD_SIZE=2"):
        read_env({**FULL, "RANK": "2"})
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        read_env({**FULL, "MASTER_PORT": "http"})
