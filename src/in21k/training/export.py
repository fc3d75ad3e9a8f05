"""``in21k export``: a trained 21K model as a folder that timm loads without in21k (timm's hub layout).

Reads any model ``in21k predict`` reads (our ``model.pt``, a checkpoint of ``in21k train``, the original's
published state dict with ``--model`` and ``--tree``) through ``training.pretrained``, and writes the folder
``training.hub`` describes: ``model.safetensors``, ``config.json`` (labels = WordNet lemma names, descriptions =
WordNet glosses), ``tree.json`` and a model card, ``README.md``, with

- the data: the release, the classes and images, and the duplicate and evaluation-set checks, from the prepared
  dataset's ``report.json`` when the run's data can still be read from here (its ``clean`` section: copies removed
  per reason, images matched per evaluation set; "not checked" where that check did not run);
- the recipe: the run's saved config (credentials redacted);
- the per-level validation metrics of the run's last ``val`` record (``metrics.jsonl`` next to the model file);
- how to load it with timm and with in21k.

Nothing in the folder is secret: the config and every line of the card go through ``in21k.redact``. The folder
is checked before the command returns: timm loads it (``create_model("local-dir:DIR", pretrained=True)``) and
gives the source model's logits.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from in21k import storage
from in21k.errors import DataError, In21kError, SetupError
from in21k.redact import redact, redact_url, scrub_text, strip_redacted
from in21k.training import hub
from in21k.training.config import ExportConfig
from in21k.training.pretrained import TrainedModel, read_trained_model
from in21k.training.rundir import CHECKPOINTS, RunDir, read_metrics

log = logging.getLogger(__name__)


def glosses(tree: Any) -> list[str]:
    """WordNet 3.0's gloss of every class, in class order (the label descriptions)."""
    from in21k.tree.wordnet import gloss, load_wordnet

    try:
        load_wordnet()
    except SetupError as exc:
        first = str(exc).splitlines()[0]
        raise SetupError(f"the label descriptions are WordNet glosses: {first} (make wordnet)") from None
    return [gloss(wnid) or name for wnid, name in zip(tree.wnids, tree.names, strict=True)]


def run_dir_of(checkpoint: str, trained: TrainedModel) -> RunDir | None:
    """The run directory a model file or checkpoint of ours lies in (local files only)."""
    path = Path(checkpoint)
    if trained.kind not in ("model", "checkpoint") or storage.is_remote(checkpoint) or not path.is_file():
        return None
    root = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    return RunDir(root)


def data_report(config: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The prepared dataset's ``report.json`` of the run's ``--data``, or ``None`` and why not."""
    from in21k.dataset import PreparedDataset

    data = config.get("data")
    if not data:
        return None, "the model file does not name its training data"
    options = strip_redacted((config.get("loader") or {}).get("storage_options"))[0]
    try:
        report = PreparedDataset.open(str(data), storage_options=options).report()
    except (In21kError, OSError) as exc:
        return None, f"the run's data ({redact_url(str(data))}) cannot be read from here: {exc}"
    if report is None:
        return None, f"the run's data ({redact_url(str(data))}) has no report.json"
    return report, ""


def clean_lines(report: dict[str, Any]) -> list[str]:
    """The model card's lines on duplicates and evaluation-set overlap, from the ``clean`` section of the dataset's
    ``report.json`` (written by ``prepare``'s duplicate and evaluation-set check; absent or null when it did not
    run)."""
    clean = report.get("clean")
    if not isinstance(clean, dict):
        return [
            "- duplicates and evaluation-set overlap: not checked (prepared with --no-dedup and no --against, "
            "or by an in21k version without the check)"
        ]
    policy = clean.get("policy") or {}
    removed = clean.get("removed") or {}
    lines = [
        f"- duplicates inside the release: {'looked for' if policy.get('dedup', True) else 'not looked for'} "
        f"(hash distance <= {policy.get('max_distance')} bits, colour distance <= {policy.get('max_color_distance')}; "
        f"in a class: {policy.get('in_class')}, across classes: {policy.get('across_classes')}); removed: "
        + (", ".join(f"{reason} {n:,}" for reason, n in removed.items()) or "none")
    ]
    sets = clean.get("eval_sets") or []
    if sets:
        lines += [
            f"- evaluation set {e.get('name')}: {e.get('matched_images', 0):,} of its images found in the "
            f"release, {e.get('matched_release_members', 0):,} release images removed"
            for e in sets
        ]
    else:
        lines.append("- evaluation-set overlap: no evaluation set was given (prepare --against)")
    return lines


def _data_section(report: dict[str, Any] | None, why: str, tree: Any) -> list[str]:
    lines = ["## Data", ""]
    if report is None:
        return [
            *lines,
            f"- classes: {tree.num_classes:,} (the head's rows; tree.json lists them)",
            f"- the prepared dataset's report is not available: {why}",
            "- duplicates and evaluation-set overlap removed: unknown (not recorded with this model)",
            "",
        ]
    t = report.get("totals") or {}
    release = report.get("release") or {}
    if release:
        what = release.get("match") or "not a known release"
        lines.append(
            f"- release: {what} (layout {release.get('layout')}, {release.get('classes', 0):,} classes, "
            f"{release.get('members', 0):,} members)"
        )
    else:
        lines.append(f"- release: not identified (layout {report.get('layout', 'unknown')})")
    lines.append(
        f"- classes: {t.get('classes_kept', tree.num_classes):,} kept of {t.get('classes_seen', 0):,} seen "
        f"({t.get('classes_dropped', 0):,} dropped); tree levels: {t.get('tree_levels', tree.num_levels)}"
    )
    lines.append(
        f"- images: {t.get('train_samples', 0):,} train + {t.get('validation_samples', 0):,} validation, of "
        f"{t.get('raw_members', 0):,} raw members ({t.get('rejected', 0):,} rejected, "
        f"{t.get('dropped_class', 0):,} in dropped classes)"
    )
    lines += clean_lines(report)
    return [*lines, ""]


def _metrics_section(run: RunDir | None, tree: Any) -> list[str]:
    lines = ["## Validation metrics", ""]
    records = read_metrics(run.metrics, "val") if run is not None else []
    if not records:
        where = "no run directory (a foreign file)" if run is None else "no val record in metrics.jsonl"
        return [*lines, f"Not available: {where}.", ""]
    last = records[-1]
    head = [
        f"Last validation of the run (epoch {last.get('epoch')}, step {last.get('step')}, "
        f"{last.get('samples', 0):,} images):",
        "",
    ]
    summary = [f"- {k}: {last[k]:.4f}" for k in ("semantic_top1", "top1", "loss") if isinstance(last.get(k), float)]
    ema = last.get("ema") or {}
    if isinstance(ema.get("semantic_top1"), float):
        summary.append(f"- EMA weights, semantic top-1: {ema['semantic_top1']:.4f}")
    per_level = last.get("per_level") or {}
    table = []
    if per_level:
        table = ["", "| level | classes | accuracy |", "|---:|---:|---:|"]
        for k, acc in per_level.items():
            level = int(k)
            size = len(tree.levels[level]) if level < len(tree.levels) else 0
            table.append(f"| {level} | {size:,} | {acc:.4f} |")
    return [*lines, *head, *summary, *table, ""]


def model_card(
    *,
    out_name: str,
    trained: TrainedModel,
    config: dict[str, Any],
    head: str,
    report: dict | None,
    why: str,
    run: RunDir | None,
    source: str,
) -> str:
    """``README.md`` of an export (module docstring)."""
    import yaml

    tree = trained.tree
    cfg = config["pretrained_cfg"]
    lines = [
        "---",
        "library_name: timm",
        "tags:",
        "- image-classification",
        "- timm",
        "- in21k",
        "---",
        "",
        f"# {trained.model_name}, ImageNet-21K semantic softmax",
        "",
        f"A `{trained.model_name}` with a head of {tree.num_classes:,} ImageNet-21K classes ({tree.num_levels} levels "
        f"of the WordNet hierarchy), trained with the semantic softmax; exported by in21k from `{source}`.",
        "",
        f"- input: {cfg['input_size'][1]} x {cfg['input_size'][2]} px, `crop_mode={cfg['crop_mode']}`, "
        f"`crop_pct={cfg['crop_pct']}`, {cfg['interpolation']}, mean {cfg['mean']}, std {cfg['std']}",
        "- labels: `label_names` are WordNet lemma names in head order (a repeated name carries its wnid), "
        "`label_descriptions` WordNet 3.0 glosses; `tree.json` gives each class's wnid and parent",
        "",
    ]
    lines += _data_section(report, why, tree)
    lines += _metrics_section(run, tree)
    lines += ["## Reading the head", ""]
    if head == hub.SEMANTIC_HEAD:
        sizes = ", ".join(f"level {k}: {len(lv):,}" for k, lv in enumerate(tree.levels))
        lines += [
            "The model was trained with the semantic softmax: one softmax per level of the tree, over that level's "
            f"classes ({sizes}). `tree.json` keeps the levels (`levels[k]`: the class indices of level k, "
            "`class_tree[i]`: class i and its ancestors), so the head is read as it was trained:",
            "",
            "```python",
            "import json",
            "import torch",
            "",
            'levels = json.load(open("tree.json"))["levels"]',
            "logits = model(x)  # [batch, num_classes]",
            "per_level = [torch.softmax(logits[:, idx], dim=1) for idx in map(torch.tensor, levels)]",
            "```",
            "",
            "`in21k predict --checkpoint DIR IMAGE` prints the predicted path down the tree, level by level.",
            "",
        ]
    else:
        lines += [
            "Read as one softmax over all classes, as timm reads any classifier (the model was trained with "
            "one softmax per tree level; export with `in21k export --tree-head` to keep the levels).",
            "",
        ]
    lines += [
        "## How to load",
        "",
        "With timm alone (no in21k needed):",
        "",
        "```python",
        "import timm",
        "import torch",
        "from PIL import Image",
        "",
        f'model = timm.create_model("local-dir:{out_name}", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        'labels = model.pretrained_cfg["label_names"]',
        'x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)',
        "with torch.no_grad():",
        "    top = model(x).softmax(-1).topk(5)",
        "print([labels[i] for i in top.indices[0]])",
        "```",
        "",
        "With in21k:",
        "",
        "```bash",
        f"in21k predict --checkpoint {out_name} photo.jpg",
        f"in21k finetune --checkpoint {out_name} --data /data/imagenet --out runs/ft --head-init map",
        f"in21k train --init {out_name} --data DST --out runs/next",
        "```",
        "",
        "## Recipe",
        "",
        "The run's config (`in21k train --config`), credentials redacted:",
        "",
        "```yaml",
        yaml.safe_dump(redact(trained.config), sort_keys=False).rstrip() or "{}",
        "```",
        "",
    ]
    return scrub_text("\n".join(lines))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def verify(out: Path, trained: TrainedModel, labels: list[str]) -> float:
    """Load ``out`` with timm's own hub code and compare its logits with the source model's; the largest
    difference. A ``RuntimeError`` (a bug of ours) when timm reads something else than what was written."""
    import timm

    loaded = timm.create_model(f"local-dir:{out.resolve()}", pretrained=True).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, trained.image_size, trained.image_size, generator=generator)
    with torch.no_grad():
        want, got = trained.model.eval()(x), loaded(x)
    diff = float((want - got).abs().max())
    if got.shape != want.shape or diff > 1e-4 * max(1.0, float(want.abs().max())):
        raise RuntimeError(f"timm reads {out} as another model: logits differ by {diff:g}")
    if list(loaded.pretrained_cfg.get("label_names") or []) != labels:
        raise RuntimeError(f"timm reads other label names from {out / hub.CONFIG}")
    return diff


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Run ``in21k export``; returns the summary line's fields."""
    from safetensors.torch import save_file

    trained = read_trained_model(
        cfg.checkpoint, model_name=cfg.model, tree=cfg.tree, image_size=cfg.image_size, weights=cfg.weights
    )
    head = hub.SEMANTIC_HEAD if cfg.tree_head else hub.FLAT_HEAD
    tree = trained.tree
    loader = trained.config.get("loader") or {}
    preprocess = hub.preprocessing(
        trained.transform,
        image_size=trained.image_size,
        mean=trained.mean,
        std=trained.std,
        timm_args=loader.get("timm_args"),
    )
    source = redact_url(str(cfg.checkpoint))
    # Only the run's config is redacted as a mapping: label names are WordNet words, and "key" or "token" are some.
    config = hub.hub_config(
        trained.model,
        model_name=trained.model_name,
        tree=tree,
        descriptions=glosses(tree),
        preprocess=preprocess,
        head=head,
        transform=trained.transform,
        source=source,
        run_config=redact(trained.config),
    )
    report, why = data_report(trained.config)
    run = run_dir_of(str(cfg.checkpoint), trained)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {cfg.out!r} is a file; give a folder to write the export into")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in trained.model.state_dict().items()}
    tmp = out / f".{hub.WEIGHTS}.{os.getpid()}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # (safetensors makes its file private; the other files are the user's default)
    os.replace(tmp, out / hub.WEIGHTS)
    _write(out / hub.CONFIG, (scrub_text(json.dumps(config, indent=1, ensure_ascii=False)) + "\n").encode())
    _write(out / hub.TREE, json.dumps(hub.tree_file(tree, head=head), separators=(",", ":")).encode())
    card = model_card(
        out_name=str(cfg.out), trained=trained, config=config, head=head, report=report, why=why, run=run, source=source
    )
    _write(out / hub.CARD, card.encode())
    diff = verify(out, trained, config["label_names"])
    log.info(
        "exported %s to %s (%s head); timm loads it with the same logits (max difference %.2g)", source, out, head, diff
    )
    return {
        "out": str(out),
        "architecture": trained.model_name,
        "num_classes": tree.num_classes,
        "head": head,
        "files": [hub.WEIGHTS, hub.CONFIG, hub.TREE, hub.CARD],
        "data_report": report is not None,
        "max_logit_difference": diff,
    }
