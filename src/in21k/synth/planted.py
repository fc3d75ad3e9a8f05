"""Planted copies in a synthetic release, and the score of a duplicate finder against them.

``in21k synth --plant N`` adds, for each kind of copy below, N copies of existing members inside their class and
N into another class; ``--eval-images M`` writes an evaluation-set folder (``eval_set/``) of M pictures, about
half of which also go into the release, transformed. ``synth_report.json`` lists every planted pair under
``planted``; ``score`` compares that list with what ``in21k prepare`` found (its manifest), so the demo and
``in21k bench dedup`` report measured precision and recall, per kind.

The kinds, each from the original member's decoded pixels (originals are quality-90 JPEGs):

- ``exact``: the same bytes under another name;
- ``reencode``: JPEG quality 50..85;
- ``rescale``: 0.5..0.8 of the size (a quarter of them 1.2..1.5), then quality 90;
- ``crop``: 1..5 % of the width and of the height cut off, at a random place, then quality 90;
- ``border``: a frame of one colour, 2..8 % of each side, around the whole picture;
- ``colour``: brightness, contrast and saturation each changed by up to 15 %.

The scoring reads only documented manifest columns: ``dup_group`` (members found to be copies of each other share
it) and ``match`` (``NAME:member`` of the evaluation image a member matched; sample keys never hold a colon).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from in21k.errors import ConfigError

PLANT_KINDS = ("exact", "reencode", "rescale", "crop", "border", "colour")
SCOPES = ("within_class", "across_classes")
EVAL_DIR = "eval_set"  # the evaluation-set folder, under the release's folder
COPY_QUALITY = 90


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def transform(data: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, float]:
    """A planted copy of the image ``data`` of ``kind``, and its parameter (quality, scale, percent, ...)."""
    if kind == "exact":
        return data, 0.0
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if kind == "reencode":
        quality = int(rng.integers(50, 86))
        return _encode(img, quality), float(quality)
    if kind == "rescale":
        f = float(rng.uniform(1.2, 1.5) if rng.random() < 0.25 else rng.uniform(0.5, 0.8))
        return _encode(img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BILINEAR), COPY_QUALITY), f
    if kind == "crop":
        p = float(rng.uniform(1.0, 5.0))
        cw, ch = round(w * (1 - p / 100)), round(h * (1 - p / 100))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return _encode(img.crop((x, y, x + cw, y + ch)), COPY_QUALITY), p
    if kind == "border":
        b = float(rng.uniform(2.0, 8.0))
        bw, bh = max(1, round(w * b / 100)), max(1, round(h * b / 100))
        u = rng.random()
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        colour = (0, 0, 0) if u < 0.3 else (255, 255, 255) if u < 0.6 else colour
        canvas = Image.new("RGB", (w + 2 * bw, h + 2 * bh), colour)
        canvas.paste(img, (bw, bh))
        return _encode(canvas, COPY_QUALITY), b
    if kind == "colour":
        factors = rng.uniform(0.85, 1.15, size=3)
        out = ImageEnhance.Brightness(img).enhance(factors[0])
        out = ImageEnhance.Contrast(out).enhance(factors[1])
        out = ImageEnhance.Color(out).enhance(factors[2])
        return _encode(out, COPY_QUALITY), float(np.abs(factors - 1).max() * 100)
    raise ValueError(f"unknown planted kind {kind!r}")


def plant_copies(
    classes: dict[str, list[list[Any]]],
    eligible: list[str],
    per_kind: int,
    rng: np.random.Generator,
    new_name: Any,
) -> list[dict[str, Any]]:
    """Add ``per_kind`` copies of each kind inside their class and as many into another class.

    ``classes`` maps a wnid to its members ``[name, bytes, kind]`` (changed in place: copies are appended);
    originals are plain JPEG members of the ``eligible`` classes, each used once; ``new_name(wnid)`` gives an
    unused member name. Returns the planted pairs.
    """
    pool = [(w, i) for w in eligible for i, m in enumerate(classes[w]) if m[2] == "jpeg"]
    need = per_kind * len(PLANT_KINDS) * len(SCOPES)
    if need > len(pool):
        raise ConfigError(
            f"--plant {per_kind}: {need} plain-JPEG originals needed, the release has {len(pool)}; give a smaller "
            "--plant, or more --classes or --images"
        )
    picks = rng.choice(len(pool), size=need, replace=False)
    pairs = []
    k = 0
    for kind in PLANT_KINDS:
        for scope in SCOPES:
            for _ in range(per_kind):
                wnid, i = pool[int(picks[k])]
                k += 1
                name, data, _ = classes[wnid][i]
                target = wnid
                if scope == "across_classes":
                    others = [w for w in eligible if w != wnid]
                    target = others[int(rng.integers(len(others)))]
                copy, param = transform(data, kind, rng)
                copy_name = new_name(target)
                classes[target].append([copy_name, copy, "jpeg"])
                pairs.append(
                    {
                        "kind": kind,
                        "scope": scope,
                        "param": round(param, 3),
                        "original": {"wnid": wnid, "member": name},
                        "copy": {"wnid": target, "member": copy_name},
                    }
                )
    return pairs


def plant_eval_set(
    folder: Any,
    classes: dict[str, list[list[Any]]],
    eligible: list[str],
    images: int,
    rng: np.random.Generator,
    draw: Any,
    new_name: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write an evaluation-set folder of ``images`` files and plant copies of about half of them in the release.

    ``draw(wnid)`` renders a fresh picture of a class (a PIL image). The first half are drawn, written and copied
    (transformed, kinds in turn) into their class; the others are drawn and written only (pictures of the same
    classes that must not match); the last file is not an image (real folders have such files, and they are
    counted, not fatal). Returns the planted pairs and the folder's description for the report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    planted = images // 2
    pairs = []
    for i in range(images):
        name = f"eval_{i + 1:05d}.JPEG"
        if i == images - 1 and images >= 4:
            (folder / name).write_bytes(b"<html>not an image</html>\n")
            continue
        wnid = eligible[int(rng.integers(len(eligible)))]
        data = _encode(draw(wnid), COPY_QUALITY)
        (folder / name).write_bytes(data)
        if i < planted:
            kind = PLANT_KINDS[i % len(PLANT_KINDS)]
            copy, param = transform(data, kind, rng)
            copy_name = new_name(wnid)
            classes[wnid].append([copy_name, copy, "jpeg"])
            pairs.append(
                {
                    "kind": kind,
                    "scope": "eval",
                    "param": round(param, 3),
                    "original": {"eval": name},
                    "copy": {"wnid": wnid, "member": copy_name},
                }
            )
    info = {"dir": EVAL_DIR, "images": images, "planted": len(pairs), "unreadable": 1 if images >= 4 else 0}
    return pairs, info


# ----------------------------------------------------------------------------------------- scoring
def score(manifest: dict[str, list], planted: dict[str, Any]) -> dict[str, Any]:
    """Recall per kind and scope, precision and the false-flag rate of a prepared release against its plants.

    ``manifest``: columns ``wnid``, ``member``, ``phash``, ``match``, ``dup_group`` of every manifest row (lists).
    A planted pair counts only where the copy (and a release original) was decoded (has a ``phash``): members of
    dropped classes are never read. Found: a release pair shares a ``dup_group``; an evaluation pair's copy has
    ``match`` ``NAME:<original>``. Flagged: a member with a ``dup_group`` or an evaluation ``match``.
    """
    rows = {
        (w, m): (p is not None, g, x)
        for w, m, p, g, x in zip(
            manifest["wnid"],
            manifest["member"],
            manifest["phash"],
            manifest["dup_group"],
            manifest["match"],
            strict=True,
        )
    }
    by_kind: dict[str, dict[str, int]] = {}
    in_pairs: set[tuple[str, str]] = set()
    for pair in planted.get("pairs", []):
        copy = (pair["copy"]["wnid"], pair["copy"]["member"])
        original = pair["original"]
        stats = by_kind.setdefault(f"{pair['kind']}/{pair['scope']}", {"planted": 0, "findable": 0, "found": 0})
        stats["planted"] += 1
        decoded, group, match = rows.get(copy, (False, None, None))
        if "eval" in original:
            if not decoded:
                continue
            stats["findable"] += 1
            if match is not None and match.split(":", 1)[-1] == original["eval"]:
                stats["found"] += 1
                in_pairs.add(copy)
            continue
        source = (original["wnid"], original["member"])
        decoded_a, group_a, _ = rows.get(source, (False, None, None))
        if not (decoded and decoded_a):
            continue
        stats["findable"] += 1
        if group is not None and group == group_a:
            stats["found"] += 1
            in_pairs.update((copy, source))
    flagged = {k for k, (_, g, x) in rows.items() if g is not None or (x is not None and ":" in x)}
    eval_flagged = {k for k, (_, _, x) in rows.items() if x is not None and ":" in x}
    copies = {(p["copy"]["wnid"], p["copy"]["member"]) for p in planted.get("pairs", [])}
    own = sum(1 for k, (d, _, _) in rows.items() if d and k not in copies)  # decoded members that are not copies
    wrong = flagged - in_pairs
    eval_pairs = {(p["copy"]["wnid"], p["copy"]["member"]) for p in planted.get("pairs", []) if "eval" in p["original"]}
    per_kind: dict[str, dict[str, Any]] = {}
    for key, st in sorted(by_kind.items()):
        per_kind[key] = {**st, "recall": round(st["found"] / st["findable"], 4) if st["findable"] else None}
    totals: dict[str, dict[str, int]] = {}
    for key, st in by_kind.items():
        kind = key.split("/")[0]
        t = totals.setdefault(kind, {"planted": 0, "findable": 0, "found": 0})
        for f in ("planted", "findable", "found"):
            t[f] += st[f]
    return {
        "recall": {k: round(t["found"] / t["findable"], 4) if t["findable"] else None for k, t in totals.items()},
        "pairs": per_kind,
        "flagged_members": len(flagged),
        "precision": round(len(flagged & in_pairs) / len(flagged), 4) if flagged else None,
        "wrongly_flagged": len(wrong),
        "own_members": own,
        "false_flag_rate": round(len(wrong) / own, 5) if own else None,
        "eval_false_matches": len(eval_flagged - (eval_pairs & in_pairs)),
        "wrongly_flagged_examples": sorted(f"{w}/{m}" for w, m in wrong)[:10],
    }
