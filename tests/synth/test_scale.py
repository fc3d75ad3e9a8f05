"""``in21k synth --shape fall11``: fall11's shape scaled down, exact totals, tiny valid JPEGs, fast tars."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from in21k.errors import ConfigError
from in21k.synth import scale
from in21k.tarformat import ustar_header
from in21k.tree import SemanticTree
from in21k.tree.wordnet import noun_synset

MEMBERS = 20_000


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("fall11-shape")
    return out, scale.write_fall11_scale(out, members=MEMBERS, seed=1)


def test_shape_and_totals_scale_with_members(release) -> None:
    out, report = release
    f = MEMBERS / scale.FALL11_MEMBERS
    shape = report["fall11_shape"]
    assert shape["kept_classes"] == round(11_221 * f) and shape["dropped_classes"] == round(10_620 * f)
    assert shape["kept_members"] == round(12_358_684 * f)
    assert shape["kept_members"] + shape["dropped_members"] == report["totals"]["members"] == MEMBERS
    classes = report["classes"]
    assert len(classes) == len(report["files"]) == shape["kept_classes"] + shape["dropped_classes"]
    kept = [c for c in classes if c["kept"]]
    dropped = [c for c in classes if not c["kept"]]
    assert sum(c["members"] for c in kept) == shape["kept_members"]
    assert min(c["members"] for c in kept) >= 501 and max(c["members"] for c in dropped) <= 499
    fall11 = set(SemanticTree.builtin("fall11").wnids)
    assert all(c["wnid"] in fall11 for c in kept)
    assert all(c["wnid"] not in fall11 and noun_synset(c["wnid"]) is not None for c in dropped)
    assert (out / "synsets.txt").read_text().split() == sorted(c["wnid"] for c in kept)
    expected = report["expected_prepare"]
    assert expected["validation_samples"] == 50 * len(kept)
    assert expected["train_samples"] + expected["validation_samples"] == shape["kept_members"]
    assert json.loads((out / "synth_report.json").read_text())["totals"] == report["totals"]


def test_class_tars_hold_tiny_valid_jpegs_with_real_names(release) -> None:
    out, report = release
    pool = set()
    for c in report["classes"][:6]:
        with tarfile.open(out / f"{c['wnid']}.tar") as tar:
            members = tar.getmembers()
            assert len(members) == c["members"]
            names = [m.name for m in members]
            assert len(set(names)) == len(names)
            assert all(re.fullmatch(rf"{c['wnid']}_[0-9]+\.JPEG", n) for n in names)
            assert names != sorted(names)  # random order, like the real tars
            for m in members[:20]:
                data = tar.extractfile(m).read()
                assert len(data) <= 512
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    assert im.format == "JPEG" and max(im.size) <= 16
                pool.add(data)
    assert len(pool) > 20


def test_full_size_class_sizes_have_fall11_totals() -> None:
    rng = np.random.default_rng(0)
    kept = scale.class_sizes(rng, 11_221, 12_358_684, 501, scale.KEPT_MAX, scale.KEPT_SIGMA)
    dropped = scale.class_sizes(rng, 10_620, 14_197_122 - 12_358_684, 1, 499, scale.DROPPED_SIGMA)
    assert kept.sum() == 12_358_684 and kept.min() >= 501 and kept.max() <= scale.KEPT_MAX
    assert dropped.sum() == 1_838_438 and dropped.min() >= 1 and dropped.max() <= 499
    assert np.median(kept) < kept.mean() and np.median(dropped) < dropped.mean()  # long right tails
    assert (dropped >= 498).sum() < 100  # no pile of classes at the cap


def test_headers_are_ustar_headers() -> None:
    make = scale._Headers([301, 455])
    for name, size in (("n01440764_1.JPEG", 301), ("n01440764_123456.JPEG", 455)):
        assert make(name.encode(), size) == ustar_header(name, size)


def test_too_few_members_and_other_layouts_are_refused(tmp_path) -> None:
    from in21k.synth import SynthConfig, write_synthetic_release

    with pytest.raises(ConfigError, match="at least 1,000"):
        scale.write_fall11_scale(tmp_path, members=500)
    with pytest.raises(ConfigError, match="class tars only"):
        write_synthetic_release(SynthConfig(out=str(tmp_path), shape="fall11", layout="folders"))


def test_command_line(tmp_path, capsys) -> None:
    from in21k.cli import main

    assert main(["synth", str(tmp_path / "a"), "--shape", "fall11", "--members", "3000", "--seed", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["members"] == 3000 and printed["layout"] == "class-tars"
    scale.write_fall11_scale(tmp_path / "b", members=3000, seed=2)
    for name in json.loads((tmp_path / "a" / "synth_report.json").read_text())["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
