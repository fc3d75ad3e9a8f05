"""Config merging: defaults < YAML < flags, unknown keys rejected by name, merged config saved."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from in21k.config import add_config_args, config_from_args, resolve_config, save_config


@dataclass
class Example:
    size: int = 224
    quality: int = 95
    resize: Literal["squash", "short-edge", "none"] = "squash"
    exclude: list[str] = field(default_factory=list)
    ratio: float = 0.5
    flag: bool = False
    name: str | None = None


def test_precedence_defaults_yaml_flags(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("size: 256\nquality: 90\n")
    cfg = resolve_config(Example, config_file=cfg_file, overrides={"quality": 80, "size": None})
    assert (cfg.size, cfg.quality, cfg.resize) == (256, 80, "squash")


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("sise: 256\nbogus: 1\n")
    with pytest.raises(ValueError) as info:
        resolve_config(Example, config_file=cfg_file)
    assert "'sise' (did you mean 'size'?)" in str(info.value) and "'bogus'" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"size": "big"}, "integer"),
        ({"resize": "crop"}, "not one of"),
        ({"flag": "yes"}, "true or false"),
        ({"ratio": True}, "number"),
    ],
)
def test_types_are_checked(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(Example, overrides=overrides)


def test_flags_round_trip_and_saved_config_reloads(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_args(parser, Example)
    args = parser.parse_args(["--size", "128", "--exclude", "n1", "n2", "--flag", "--resize", "none"])
    cfg = config_from_args(args, Example)
    assert (cfg.size, cfg.exclude, cfg.flag, cfg.resize, cfg.quality) == (128, ["n1", "n2"], True, "none", 95)
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load(saved.read_text())["exclude"] == ["n1", "n2"]
    assert resolve_config(Example, config_file=saved) == cfg


def test_config_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        resolve_config(Example, config_file=f)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config(Example, config_file=tmp_path / "nope.yaml")


def test_a_partial_section_completes_the_commands_own_default():
    """``--loader.transform eval`` on ``bench loader`` keeps that command's worker default (one per core)."""
    import os

    from in21k.benchmarks.options import LoaderBenchConfig
    from in21k.config import resolve_config

    cfg = resolve_config(LoaderBenchConfig, overrides={"data": "d", "loader": {"transform": "eval"}})
    assert cfg.loader.transform == "eval" and cfg.loader.num_workers == (os.cpu_count() or 1)
