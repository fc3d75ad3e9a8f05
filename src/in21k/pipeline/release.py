"""Which release is this: the input identified against the known ImageNet-21K releases, and the run's result
compared with the published ImageNet-21K-P figures.

What is compared, and why only this: the class and image counts of ImageNet-21K-P (``PUBLISHED``) were
published with the original work; the raw releases' class counts (fall11 21,841, winter21 19,167) and fall11's
image count (14,197,122) are ImageNet's own published figures. We know of no authoritative published size or
MD5 of the outer archives, so none is built in: a release is identified by its layout and its counts, and the
report shows the outer file's measured size and, where the whole file was streamed anyway (a ``.tar.gz``), its
MD5, for the user to check against their download source. A run on part of a release, or on another set,
is "not a known release"; its result is still shown beside both published variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RAW_LAYOUTS = ("class-tars", "whole-tar", "whole-tar-gz", "folders")
PROCESSED_LAYOUTS = ("processed", "processed-tar-gz")


@dataclass(frozen=True)
class Published:
    """ImageNet-21K-P as published with the original work."""

    variant: str
    classes: int
    train: int
    validation: int


PUBLISHED = (Published("fall11", 11_221, 11_797_632, 561_052), Published("winter21", 10_450, 11_060_223, 522_500))


@dataclass(frozen=True)
class KnownRelease:
    name: str
    variant: str  # whose ImageNet-21K-P figures apply
    layouts: tuple[str, ...]
    classes: int  # classes of the input (for a split input: the classes of its train and validation split)
    members: int | None  # members of the input (split input: train + validation), where published


KNOWN = (
    KnownRelease("fall11 (fall11_whole.tar or its class tars)", "fall11", RAW_LAYOUTS, 21_841, 14_197_122),
    KnownRelease("winter21 (winter21_whole.tar.gz or its class tars)", "winter21", RAW_LAYOUTS, 19_167, None),
    KnownRelease(
        "winter21 ImageNet-21K-P, processed (imagenet21k_train/ imagenet21k_val/ imagenet21k_small_classes/)",
        "winter21",
        PROCESSED_LAYOUTS,
        10_450,
        11_060_223 + 522_500,
    ),
    KnownRelease("ImageNet-21K-P winter21 classes, as parquet", "winter21", ("parquet",), 10_450, None),
    KnownRelease("ImageNet-21K-P fall11 classes, as parquet", "fall11", ("parquet",), 11_221, None),
)


def identify(
    layout: str, facts: dict[str, Any], counts: dict[str, int], *, classes_seen: int, split_classes: int | None
) -> dict[str, Any]:
    """The identification record of the report: layout, outer size and MD5 (where measured), member counts, and
    the known release it matches by layout and class count (``None`` if none), with any count that differs."""
    members = int(counts.get("raw_members", 0))
    split = split_classes is not None
    classes = split_classes if split else classes_seen
    in_split = int(counts.get("given_train", 0)) + int(counts.get("given_validation", 0))
    record: dict[str, Any] = {
        "layout": layout,
        "outer_size": facts.get("size"),
        "md5": facts.get("md5"),
        "members": members,
        "classes": classes_seen,
        "split_classes": split_classes,
        "given": {k[len("given_") :]: v for k, v in counts.items() if k.startswith("given_")},
        "outside_class_folders": (facts.get("outside") or {}).get("count", 0),
        "files": facts.get("files"),
        "match": None,
        "variant": None,
        "differences": [],
    }
    for known in KNOWN:
        if layout in known.layouts and classes == known.classes:
            record["match"], record["variant"] = known.name, known.variant
            have = in_split if split else members
            if known.members is not None and have != known.members:
                record["differences"].append(f"{have:,} members where the release has {known.members:,}")
            break
    return record


def summary_line(r: dict[str, Any]) -> str:
    """One line for logs and the plan's text."""
    what = f"identified as {r['match']}" if r["match"] else "not a known release"
    size = f", {r['outer_size']:,} bytes" if r.get("outer_size") else ""
    md5 = f", MD5 {r['md5']}" if r.get("md5") else ""
    diff = f" ({'; '.join(r['differences'])})" if r["differences"] else ""
    return f"{what}{diff}: layout {r['layout']}, {r['classes']:,} classes, {r['members']:,} members{size}{md5}"


def markdown(r: dict[str, Any], totals: dict[str, int]) -> list[str]:
    """The report's section: the identification, then "this run vs published"."""
    lines = ["## Release", ""]
    if r["match"]:
        lines.append(f"- identified as **{r['match']}** by its layout and class count")
    else:
        known = ", ".join(f"{k.name}: {k.classes:,} classes" for k in KNOWN if r["layout"] in k.layouts)
        lines.append(f"- not a known release by its layout and class count ({known or 'none has this layout'})")
    lines += [f"- differs: {d}" for d in r["differences"]]
    lines.append(f"- layout: {r['layout']}; members: {r['members']:,}; classes: {r['classes']:,}")
    if r["split_classes"] is not None:
        given = ", ".join(f"{k} {v:,}" for k, v in r["given"].items())
        lines.append(f"- its own split: {given} members; {r['split_classes']:,} classes in train and validation")
    if r.get("files"):
        lines.append(f"- parquet files: {r['files']:,}")
    if r.get("outer_size"):
        lines.append(
            f"- outer file: {r['outer_size']:,} bytes"
            + (
                f", MD5 `{r['md5']}`"
                if r.get("md5")
                else " (MD5 not computed: the file is read by byte range, not streamed)"
            )
        )
    if r["outside_class_folders"]:
        lines.append(
            f"- files outside the class folders (not images of a class, counted only): {r['outside_class_folders']:,}"
        )
    mine = (totals["classes_kept"], totals["train_samples"], totals["validation_samples"])
    lines += [
        "",
        "### This run vs published ImageNet-21K-P",
        "",
        "| | this run | " + " | ".join(f"{p.variant} published" for p in PUBLISHED) + " |",
        "|---|---:|" + "---:|" * len(PUBLISHED),
    ]
    for i, what in enumerate(("classes", "train images", "validation images")):
        row = [f"{(p.classes, p.train, p.validation)[i]:,}" for p in PUBLISHED]
        marked = [f"**{v}**" if p.variant == r["variant"] else v for p, v in zip(PUBLISHED, row, strict=True)]
        lines.append(f"| {what} | {mine[i]:,} | " + " | ".join(marked) + " |")
    if r["variant"]:
        p = next(p for p in PUBLISHED if p.variant == r["variant"])
        delta = [mine[0] - p.classes, mine[1] - p.train, mine[2] - p.validation]
        lines.append("")
        lines.append(
            f"Difference to {p.variant} (this run minus published): classes {delta[0]:+,}, train "
            f"{delta[1]:+,}, validation {delta[2]:+,}."
        )
    return lines + [""]
