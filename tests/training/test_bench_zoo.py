"""The model-zoo row of ``in21k bench train`` / ``in21k bench infer``: the maximal-batch search and a CPU run."""

from __future__ import annotations

import json

import pytest

from in21k.benchmarks.train import find_max_batch, is_oom
from in21k.cli import main

COLUMNS = "| Backbone | Maximal batch size | Maximal training speed (img/sec) | Maximal inference speed (img/sec) |"


@pytest.mark.parametrize("limit", [1, 7, 37, 100, 1000])
def test_search_finds_the_limit_by_doubling_then_bisection(limit):
    # An out-of-memory error above `limit` is what a GPU would raise; none can be provoked safely on this CPU.
    result = find_max_batch(lambda b: b <= limit, start=8)
    assert limit - limit // 64 <= result.max_batch <= limit and not result.capped
    tried = [b for b, _ in result.tried]
    doubling = [8 * 2**i for i in range(len(tried)) if 8 * 2**i <= limit]
    assert tried[: len(doubling)] == doubling  # doubling first, then bisection
    assert len(tried) <= 2 * (limit.bit_length() + 2)


def test_search_respects_the_cap_and_fails_clearly():
    result = find_max_batch(lambda b: True, start=1, cap=12)
    assert result.max_batch == 12 and result.capped and [b for b, _ in result.tried] == [1, 2, 4, 8, 12]
    with pytest.raises(RuntimeError, match="batch of 1"):
        find_max_batch(lambda b: False, start=4)


def test_oom_detection():
    import torch

    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _row_and_json(out: str) -> tuple[list[str], dict]:
    lines = out.strip().splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.slow
def test_bench_train_prints_a_complete_row_on_cpu(capsys):
    # Search start 2: BatchNorm cannot train on one sample whose feature map is 1x1 (32 px input).
    rc = main(
        [
            "bench",
            "train",
            "--model",
            "mobilenetv3_large_100",
            "--image-size",
            "32",
            "--max-batch",
            "6",
            "--search-start",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--amp",
            "none",
            "--no-channels-last",
        ]
    )
    assert rc == 0
    lines, r = _row_and_json(capsys.readouterr().out)
    assert lines[0] == COLUMNS
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "mobilenetv3_large_100" and cells[1].startswith("6") and len(cells) == 4
    assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0
    assert r["max_batch"] == 6 and r["max_batch_capped"] and r["batch_size"] == 5  # 90% of 6
    assert [b for b, _ in r["search"]] == [2, 4, 6]
    assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and r["num_classes"] == 11221
    assert r["reference_v100"] == {"max_batch": 488, "train_img_s": 1210, "infer_img_s": 5980}
    assert r["ratio"] == pytest.approx(r["train_img_s"] / 1210, rel=0.01, abs=1e-4)  # ratio is rounded
    assert "cross-machine" in r["ratio_baseline"] and "cross-machine" in lines[3]


@pytest.mark.slow
def test_bench_infer_prints_a_row_on_cpu_and_json_only(capsys):
    rc = main(
        [
            "bench",
            "infer",
            "--model",
            "mobilenetv3_small_050",
            "--image-size",
            "32",
            "--max-batch",
            "16",
            "--search-start",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--amp",
            "none",
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: the JSON line only
    r = json.loads(out[0])
    assert r["max_batch"] == 16 and r["batch_size"] == 14 and r["infer_img_s"] > 0
    assert r["ratio"] is None and r["reference_v100"] is None  # not in the original's table
    cells = [c.strip() for c in r["row"].strip("|").split("|")]
    assert cells[0] == "mobilenetv3_small_050" and cells[1].startswith("16") and float(cells[3]) > 0


def test_cpu_search_needs_a_cap(capsys):
    assert main(["bench", "infer", "--model", "resnet10t", "--device", "cpu"]) == 2
    assert "--max-batch" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["bench", "train"], ["bench", "infer"], ["finetune"], ["predict"], ["train"]])
def test_help_renders(command, capsys):
    # argparse %-formats every option's help: a stray "%" in a help string breaks --help only.
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0 and "--config" in capsys.readouterr().out


def test_cpu_defaults_are_cpu_sized(capsys):
    """On a CPU, --amp auto means no autocast (bf16 is emulated there) and the step counts are CPU-sized."""
    rc = main(
        [
            "bench",
            "infer",
            "--model",
            "mobilenetv3_small_050",
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["amp"] == "none" and result["infer_img_s"] > 0
