"""``in21k demo``: the whole product in miniature, on a synthetic release, on this machine's CPUs.

synth (with planted copies and an evaluation set) -> prepare (local Ray, ``--against`` that set) -> train
(semantic softmax, CPU) -> predict (held-out images) -> a report folder with ``report.md`` and figures, among
them the precision and recall of prepare's duplicate finder against the planted copies. Each stage runs as the
``in21k`` command a user would type, with the demo configs under ``configs/``
(``configs/{synth,prepare,train}/demo.yaml``), so the demo shows the real commands; a rerun reuses finished
stages (prepare and train resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from in21k.config import add_config_args, config_from_args, print_config_requested, save_config
from in21k.errors import ConfigError, DataError
from in21k.redact import redact
from in21k.training.rundir import CURVES, EVENTS, METRICS, MODEL, RunDir, read_metrics

EVAL_NAME = "synth-eval"  # the --against name of the synthetic evaluation set

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class DemoConfig:
    out: str = field(
        default="demo_out", metadata={"help": "output folder of every stage and the report", "metavar": "OUT"}
    )
    configs_dir: str = field(
        default=str(CONFIGS), metadata={"help": "folder holding synth/, prepare/, train/ demo.yaml", "metavar": "DIR"}
    )
    epochs: int | None = field(default=None, metadata={"help": "override the training epochs of train/demo.yaml"})
    heldout_classes: int = field(default=8, metadata={"help": "classes to draw held-out images of for predict"})
    heldout_per_class: int = field(default=2, metadata={"help": "held-out images per class"})
    seed: int = field(default=1234, metadata={"help": "seed of the held-out images (unseen in training)"})

    def validate(self) -> None:
        for stage in ("synth", "prepare", "train"):
            if not (Path(self.configs_dir) / stage / "demo.yaml").exists():
                raise ConfigError(
                    f"{Path(self.configs_dir) / stage / 'demo.yaml'} not found: run the demo from a checkout "
                    "(`make demo`) or pass --configs-dir pointing at the repository's configs/ folder"
                )
        if self.heldout_classes < 1 or self.heldout_per_class < 1:
            raise ConfigError("--heldout-classes and --heldout-per-class must be at least 1")


def _run(stage: str, argv: list[str], timings: dict[str, float]) -> str:
    """Run ``in21k ARGV`` as a user would; stream its progress; return its stdout."""
    cmd = [sys.executable, "-m", "in21k", *argv]
    log.info("[%s] in21k %s", stage, " ".join(argv))
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (logs, progress) goes to the terminal
    timings[stage] = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"demo stage {stage!r} failed (exit {proc.returncode}): in21k {' '.join(argv)}")
    return proc.stdout


def _heldout_images(cfg: DemoConfig, prepared: Path, out: Path) -> list[dict[str, Any]]:
    """Fresh images of kept classes, drawn with a seed the training data never used."""
    import numpy as np

    from in21k.dataset import PreparedDataset
    from in21k.synth import drawing_paths, render
    from in21k.tree import SemanticTree

    raw_report = json.loads((Path(cfg.out) / "raw" / "synth_report.json").read_text())
    all_wnids = [c["wnid"] for c in raw_report["classes"]]
    paths = drawing_paths(all_wnids)
    tree = SemanticTree.from_dict(PreparedDataset.open(str(prepared)).tree_data())
    rng = np.random.default_rng(cfg.seed)
    # Prefer the deepest classes: their predicted path has the most levels to get right.
    order = sorted(range(tree.num_classes), key=lambda i: (-tree.classes[i].depth, rng.random()))
    chosen = order[: cfg.heldout_classes]
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for i in chosen:
        wnid = tree.wnids[i]
        for k in range(cfg.heldout_per_class):
            size = (int(rng.integers(300, 500)), int(rng.integers(300, 500)))
            path = out / f"{wnid}_heldout{k}.jpg"
            render(paths[wnid], size, rng).save(path, quality=90)
            images.append({"file": str(path), "wnid": wnid, "index": i})
    return images


def _chance_semantic_top1(tree: Any, val_counts: dict[int, int], levels: list[int]) -> float:
    """Semantic top-1 of uniform guessing on each level, weighted like the metric (valid pairs)."""
    hits = pairs = 0.0
    for c, n in val_counts.items():
        for k in levels:
            if tree.targets[c, k] >= 0:
                hits += n / len(tree.levels[k])
                pairs += n
    return hits / pairs if pairs else 0.0


def _figures(out: Path, prepared: Path, report: dict[str, Any], run: RunDir, min_images: int) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    figs: dict[str, str] = {}
    manifest = pq.read_table(prepared / "manifest", columns=["wnid", "src_bytes"]).to_pydict()
    sizes: dict[str, int] = {}
    for wnid, nbytes in zip(manifest["wnid"], manifest["src_bytes"], strict=True):
        sizes[wnid] = sizes.get(wnid, 0) + (1 if nbytes and nbytes > 0 else 0)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(sizes.values()), bins=20, color="#4c72b0")
    ax.axvline(min_images, color="#c44e52", linestyle="--", label=f"--min-images {min_images}")
    ax.set_xlabel("non-empty members per class")
    ax.set_ylabel("classes")
    ax.set_title("class sizes and the pruning threshold")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "class_sizes.png", dpi=100)
    plt.close(fig)
    figs["class sizes"] = "class_sizes.png"

    reasons = {**{f"rejected: {k}": v for k, v in report["rejection_reasons"].items()}}
    for d in report["dropped_classes"]:
        key = f"dropped class: {d['reason']}"
        reasons[key] = reasons.get(key, 0) + d["members"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = sorted(reasons, key=reasons.get)
    ax.barh(names, [reasons[n] for n in names], color="#dd8452")
    ax.set_xlabel("raw members")
    ax.set_title("members not written, by reason")
    fig.tight_layout()
    fig.savefig(out / "rejections.png", dpi=100)
    plt.close(fig)
    figs["rejection reasons"] = "rejections.png"

    if run.curves.exists():
        shutil.copyfile(run.curves, out / "training_curves.png")
        figs["training curves"] = "training_curves.png"
    vals = read_metrics(run.metrics, "val")
    if vals:
        per_level = vals[-1]["per_level"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([f"level {k}" for k in per_level], list(per_level.values()), color="#55a868")
        ax.set_ylim(0, 1)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"per-level accuracy (semantic top-1 {vals[-1]['semantic_top1']:.3f})")
        fig.tight_layout()
        fig.savefig(out / "per_level_accuracy.png", dpi=100)
        plt.close(fig)
        figs["per-level accuracy"] = "per_level_accuracy.png"
    return figs


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage and write ``OUT/report/``; returns the summary printed at the end."""
    import yaml

    from in21k.dataset import PreparedDataset
    from in21k.tree import SemanticTree

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    conf = Path(cfg.configs_dir)
    raw, prepared, run = out / "raw", out / "prepared", RunDir(out / "run")
    report_dir = out / "report"
    timings: dict[str, float] = {}
    if not (raw / "synth_report.json").exists():
        _run("synth", ["synth", str(raw), "--config", str(conf / "synth" / "demo.yaml")], timings)
    prep_cfg = conf / "prepare" / "demo.yaml"
    from in21k.synth.planted import EVAL_DIR

    prep_argv = ["prepare", "--raw", str(raw), "--out", str(prepared), "--config", str(prep_cfg)]
    if (raw / EVAL_DIR).is_dir():  # the synthetic release's evaluation set: its pictures must not be trained on
        prep_argv += ["--against", f"{EVAL_NAME}={raw / EVAL_DIR}"]
    _run("prepare", prep_argv, timings)
    train_cfg = str(conf / "train" / "demo.yaml")
    train_argv = ["train", "--data", str(prepared), "--out", str(run.root), "--config", train_cfg, "--resume", "auto"]
    if cfg.epochs is not None:
        train_argv += ["--epochs", str(cfg.epochs)]
    _run("train", train_argv, timings)
    heldout = _heldout_images(cfg, prepared, out / "heldout")
    report_dir.mkdir(parents=True, exist_ok=True)
    predict_out = _run(
        "predict",
        [
            "predict",
            "--checkpoint",
            str(run.model),
            "--json",
            "--plot",
            str(report_dir / "predictions.png"),
            *[h["file"] for h in heldout],
        ],
        timings,
    )
    predictions = [json.loads(line) for line in predict_out.splitlines() if line.strip().startswith("{")]
    dataset = PreparedDataset.open(str(prepared))
    tree = SemanticTree.from_dict(dataset.tree_data())
    by_file = {p["input"]: p for p in predictions}
    rows = []
    correct_levels = total_levels = 0
    for h in heldout:
        pred = by_file.get(h["file"], {"path": []})
        truth = [tree.wnids[j] for j in tree.path(h["index"])]
        got = [p["wnid"] for p in pred["path"]]
        ok = sum(1 for a, b in zip(truth, got, strict=False) if a == b)
        correct_levels += ok
        total_levels += len(truth)
        rows.append(
            {
                "image": Path(h["file"]).name,
                "correct": f"{ok}/{len(truth)}",
                "true": [tree.names[j].split(",")[0] for j in tree.path(h["index"])],
                "names": [p["name"].split(",")[0] for p in pred["path"]],
            }
        )
    prep_report = dataset.report()
    if prep_report is None:
        raise DataError(f"{prepared} has no report.json: run the demo again with a new --out")
    min_images = int(yaml.safe_load(prep_cfg.read_text()).get("min_images", 500))
    figs = _figures(report_dir, prepared, prep_report, run, min_images)
    vals = read_metrics(run.metrics, "val")
    final = vals[-1] if vals else {}
    levels_used = [int(k) for k in final.get("per_level", {})]
    val_counts = {c["index"]: c["validation"] for c in prep_report["classes"]}
    chance = _chance_semantic_top1(tree, val_counts, levels_used)
    clean = _clean_scores(raw, prepared, prep_report, report_dir)
    summary = redact(
        {  # what it quotes was written redacted already; the demo's own paths go through it too
            "out": str(out),
            "report": str(report_dir / "report.md"),
            "clean": clean,
            "semantic_top1": final.get("semantic_top1"),
            "chance_semantic_top1": round(chance, 4),
            "heldout_path_levels_correct": f"{correct_levels}/{total_levels}",
            "timings_s": timings,
            "totals": prep_report["totals"],
        }
    )
    _write_report(report_dir, summary, final, rows, figs, prep_report)
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _clean_scores(raw: Path, prepared: Path, prep_report: dict[str, Any], report_dir: Path) -> dict[str, Any] | None:
    """Precision and recall of prepare's duplicate finder against the synthetic release's planted copies;
    ``prep_report``: the prepared dataset's report."""
    import pyarrow.parquet as pq

    from in21k.synth.planted import score

    planted = json.loads((raw / "synth_report.json").read_text()).get("planted")
    if not planted or not prep_report.get("clean"):  # null: prepare ran without the duplicate check
        return None
    columns = ["wnid", "member", "phash", "match", "dup_group"]
    scores = score(pq.read_table(prepared / "manifest", columns=columns).to_pydict(), planted)
    picture = prep_report["clean"].get("picture")
    if picture and (prepared / picture).exists():
        shutil.copyfile(prepared / picture, report_dir / "matched_pairs.png")
    return {
        **scores,
        "removed": prep_report["clean"]["removed"],
        "eval_sets": prep_report["clean"]["eval_sets"],
        "groups": prep_report["clean"]["groups"],
    }


def _clean_lines(clean: dict[str, Any]) -> list[str]:
    removed = ", ".join(f"{k} {v}" for k, v in clean["removed"].items())
    lines = [
        "## Duplicates and the evaluation set",
        "",
        f"The synthetic release holds planted copies (exact, re-encoded, rescaled, cropped, framed, recoloured; inside "
        f"a class and across classes) and an evaluation set whose pictures partly appear in it. prepare found "
        f"{clean['groups']} groups of copies and removed: {removed} (`prepared/report.md` has the counts).",
        "",
        "| kind | recall (found / findable planted pairs) |",
        "|---|---:|",
    ]
    totals: dict[str, list[int]] = {}
    for key, st in clean["pairs"].items():
        t = totals.setdefault(key.split("/")[0], [0, 0])
        t[0] += st["found"]
        t[1] += st["findable"]
    lines += [f"| {kind} | {clean['recall'][kind]} ({f}/{n}) |" for kind, (f, n) in totals.items()]
    for e in clean["eval_sets"]:
        lines.append("")
        lines.append(
            f"- evaluation set `{e['name']}`: {e.get('images', e['readable'])} pictures, "
            f"{e.get('unreadable', 0)} unreadable, {e['matched_images']} found in the release "
            f"({e['matched_release_members']} release images removed)"
        )
    lines += [
        f"- precision (flagged images that are planted copies or their originals): {clean['precision']}",
        f"- the release's own images wrongly flagged: {clean['wrongly_flagged']} of {clean['own_members']} "
        f"({clean['false_flag_rate']}); evaluation matches that are not planted: {clean['eval_false_matches']}",
        "",
    ]
    return lines


def _write_report(
    report_dir: Path, summary: dict, final: dict, rows: list[dict], figs: dict[str, str], prep_report: dict
) -> None:
    t = summary["totals"]
    lines = [
        "# in21k demo report",
        "",
        "synth -> prepare (local Ray) -> train (semantic softmax, CPU) -> predict on held-out images.",
        "",
        "## Data",
        "",
        f"- raw members: {t['raw_members']:,} = written {t['written']:,} + rejected {t['rejected']:,} + "
        f"in dropped classes {t['dropped_class']:,} (every one is a manifest row: `prepared/manifest/`)",
        f"- classes: {t['classes_seen']} seen, {t['classes_kept']} kept, {t['classes_dropped']} dropped; "
        f"tree levels: {t['tree_levels']}",
        f"- train {t['train_samples']:,} samples in {t['train_shards']} shards; validation "
        f"{t['validation_samples']:,} in {t['validation_shards']}",
        "- dropped classes: " + ", ".join(f"{d['wnid']} ({d['reason']})" for d in prep_report["dropped_classes"]),
        "",
        *(_clean_lines(summary["clean"]) if summary.get("clean") else []),
        "## Training",
        "",
        f"- validation semantic top-1: **{summary['semantic_top1']:.3f}** "
        f"(chance: {summary['chance_semantic_top1']:.3f})"
        if summary["semantic_top1"] is not None
        else "- no validation record",
        "- per-level accuracy: " + ", ".join(f"level {k}: {v:.3f}" for k, v in final.get("per_level", {}).items()),
        "",
        "## Held-out predictions",
        "",
        f"Levels of the true chain predicted correctly: {summary['heldout_path_levels_correct']} "
        "(threshold 0.5; a path stops at the first level below it).",
        "",
        "| image | true chain | predicted path | levels right |",
        "|---|---|---|---:|",
    ]
    for r in rows:
        predicted = " > ".join(r["names"]) or "(none above threshold)"
        lines.append(f"| {r['image']} | {' > '.join(r['true'])} | {predicted} | {r['correct']} |")
    lines += ["", "## Figures", ""]
    for title, name in figs.items():
        lines.append(f"### {title}\n\n![{title}]({name})\n")
    if (report_dir / "predictions.png").exists():
        lines.append("### predicted paths\n\n![predictions](predictions.png)\n")
    if (report_dir / "matched_pairs.png").exists():
        lines.append(
            "### matched pairs at and near the thresholds (release image | its match)\n\n"
            "![matched pairs](matched_pairs.png)\n"
        )
    lines += ["## Stage times (s)", "", *[f"- {k}: {v}" for k, v in summary["timings_s"].items()], ""]
    (report_dir / "report.md").write_text("\n".join(lines))


def _main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, DemoConfig)
    if print_config_requested(args, cfg):
        return 0
    summary = run_demo(cfg)
    print(json.dumps(summary))
    out = Path(cfg.out)
    print(
        f"\nDemo done. Everything is under {out}/:\n"
        f"  report:        {out / 'report' / 'report.md'} (figures beside it)\n"
        f"  raw release:   {out / 'raw'} (synth_report.json counts every member)\n"
        f"  prepared data: {out / 'prepared'} (report.md, manifest/, train/, validation/)\n"
        f"  training run:  {out / 'run'} ({METRICS}, {EVENTS}/ for TensorBoard, {CURVES}, {MODEL})\n"
        f"  semantic top-1 {summary['semantic_top1']:.3f} vs chance {summary['chance_semantic_top1']:.3f}",
        file=sys.stderr,
    )
    return 0


def register(commands) -> None:
    parser = commands.add(
        "demo",
        help="synth -> prepare -> train -> predict on a small synthetic release, with a report",
        description=__doc__,
    )
    add_config_args(parser, DemoConfig)
    parser.set_defaults(func=_main)
