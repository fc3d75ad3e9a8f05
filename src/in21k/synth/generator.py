"""A synthetic raw ImageNet-21K release, in the real layout, deterministic by seed.

The classes are real WordNet 3.0 noun wnids taken from the shipped fall11 tree as whole chains (a
class comes with all its dataset ancestors) plus siblings, so the synthetic set has a real multi-level
hierarchy. Each image is drawn as nested layers, one per node on the class's root-first path: a child
keeps its parent's layers and adds its own, so siblings share their parent's look and a small model can
learn the hierarchy; the object stands on a scene of the image's own, so two images of a class are different
pictures (``render``). Members have the real naming (``nXXXXXXXX_N.JPEG``), a realistic size mix and a
configurable share of the release's bad members; ``--plant`` and ``--eval-images`` add planted copies and an
evaluation set (``in21k.synth.planted``).

The same raw members also make the other inputs users start from (``in21k.synth.processed``): the processed
ImageNet-21K-P release (folders or its ``.tar.gz``) and a parquet set of its train and validation splits; and
``class_list.txt`` lists the release's WordNet-noun classes in a seeded order, a class list for
``prepare --classes`` whose order is not the sorted one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from in21k.config import saved_config
from in21k.errors import ConfigError
from in21k.progress import progress
from in21k.synth.planted import EVAL_DIR

log = logging.getLogger(__name__)

REPORT_NAME = "synth_report.json"
SYNSETS_NAME = "synsets.txt"
CLASS_LIST_NAME = "class_list.txt"
REPORT_SCHEMA = "in21k.synth-report/1"
# Readable members: decodable images (CMYK, grayscale and PNG-named-.JPEG are the release's odd ones).
READABLE_KINDS = ("jpeg", "cmyk", "gray", "png")
# Unreadable members: what the original's resize script dropped with "general failure".
UNREADABLE_KINDS = ("truncated", "empty", "garbage")
KINDS = READABLE_KINDS + UNREADABLE_KINDS
PROCESSED_LAYOUTS = ("processed", "processed-tar-gz", "parquet")  # made from the raw members (synth.processed)


@dataclass
class SynthConfig:
    out: str = field(default="synth_raw", metadata={"help": "output folder", "metavar": "OUT"})
    classes: int = field(default=24, metadata={"help": "number of classes (WordNet nouns plus non-noun ones)"})
    images: str = field(
        default="20:120",
        metadata={"help": "members per class, MIN:MAX (spread so some fall below --min-images)", "metavar": "MIN:MAX"},
    )
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same bytes"})
    layout: Literal["class-tars", "whole-tar", "folders", "processed", "processed-tar-gz", "parquet"] = field(
        default="class-tars",
        metadata={
            "help": "class-tars: OUT/nXXXXXXXX.tar; whole-tar: OUT/<whole-name> holding the class tars; "
            "folders: OUT/nXXXXXXXX/*.JPEG; processed: the members processed as the original's script did, in "
            "OUT/imagenet21k_resized/{imagenet21k_train,imagenet21k_val,imagenet21k_small_classes}/nXXXXXXXX/; "
            "processed-tar-gz: the same as OUT/imagenet21k_resized.tar.gz; parquet: its train and validation "
            "splits as OUT/data/{train,validation}-*.parquet (hub layout: image {bytes, path}, label index)"
        },
    )
    whole_name: str = field(
        default="fall11_whole.tar", metadata={"help": "outer archive name for --layout whole-tar (.tar.gz: gzipped)"}
    )
    bad_share: float = field(
        default=0.03, metadata={"help": "share of unreadable members (truncated, zero-byte, non-image bytes)"}
    )
    odd_share: float = field(
        default=0.04, metadata={"help": "share of readable odd members (CMYK JPEG, grayscale JPEG, PNG named .JPEG)"}
    )
    small_share: float = field(default=0.1, metadata={"help": "share of images under 224 px on the short side"})
    large_share: float = field(default=0.02, metadata={"help": "share of images over 2000 px on the long side"})
    non_noun_classes: int = field(
        default=1, metadata={"help": "how many of the classes have wnids that are not WordNet 3.0 noun synsets"}
    )
    quality: int = field(default=90, metadata={"help": "JPEG quality of the members (and of WebP in parquet)"})
    size: int = field(default=224, metadata={"help": "processed and parquet layouts: the processed image size"})
    min_images: int = field(
        default=60,
        metadata={"help": "processed and parquet layouts: a class with more readable members goes to train/val"},
    )
    val_per_class: int = field(
        default=10, metadata={"help": "processed and parquet layouts: validation members per class (name order)"}
    )
    image_format: Literal["jpeg", "webp"] = field(
        default="jpeg", metadata={"help": "parquet layout: the image bytes as the processed JPEGs, or as WebP"}
    )
    shape: Literal["drawn", "fall11"] = field(
        default="drawn",
        metadata={
            "help": "drawn: the small release of drawn images that the options above describe; fall11: "
            "fall11's real shape for load tests of prepare (21,841 class tars at full size, long-tailed class "
            "sizes, tiny JPEG members; see in21k.synth.scale), with --members and --seed only"
        },
    )
    plant: int = field(
        default=0,
        metadata={
            "help": "plant copies to find: N copies of each kind (exact, reencode, rescale, crop, border, colour) "
            "inside their class and N into another class; synth_report.json lists every planted pair"
        },
    )
    eval_images: int = field(
        default=0,
        metadata={
            "help": "also write OUT/eval_set/, an evaluation-set folder of N pictures of the release's classes: "
            "about half also go into the release, transformed (planted pairs), the rest must not match, and "
            "one is not an image"
        },
    )
    members: int = field(
        default=14_197_122,
        metadata={"help": "--shape fall11: members in all (fall11: 14,197,122); classes and their sizes scale with it"},
    )

    def image_range(self) -> tuple[int, int]:
        try:
            lo, hi = (int(x) for x in self.images.split(":"))
        except ValueError:
            raise ConfigError(f"--images must be MIN:MAX with integers, e.g. 20:120, got {self.images!r}") from None
        if not 1 <= lo <= hi:
            raise ConfigError(f"--images {self.images}: need 1 <= MIN <= MAX")
        return lo, hi

    def validate(self) -> None:
        if self.shape == "fall11":
            if self.layout != "class-tars":
                raise ConfigError("--shape fall11 writes class tars only: drop --layout or use --layout class-tars")
            return
        self.image_range()
        if self.classes < 2:
            raise ConfigError("--classes must be at least 2")
        if not 0 <= self.non_noun_classes < self.classes:
            raise ConfigError("--non-noun-classes must be >= 0 and smaller than --classes")
        for name in ("bad_share", "odd_share", "small_share", "large_share"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 0.5")
        if self.layout == "whole-tar" and not (self.whole_name.endswith(".tar") or self.whole_name.endswith(".tar.gz")):
            raise ConfigError("--whole-name must end in .tar or .tar.gz")
        if self.size < 8 or self.val_per_class < 1 or self.min_images < self.val_per_class:
            raise ConfigError("need --size >= 8, --val-per-class >= 1 and --min-images >= --val-per-class")
        if not 1 <= self.quality <= 100:
            raise ConfigError("--quality must be within 1..100")
        if self.plant < 0 or self.eval_images < 0:
            raise ConfigError("--plant and --eval-images must be >= 0")


# ---------------------------------------------------------------------------------------------- classes
def choose_classes(num_nouns: int, rng: np.random.Generator, tree_name: str = "fall11") -> list[str]:
    """Real wnids forming whole chains: anchors with all their dataset ancestors, plus their children."""
    from in21k.tree import SemanticTree

    tree = SemanticTree.builtin(tree_name)
    children: dict[int, list[int]] = {}
    for c in tree.classes:
        if c.parent >= 0:
            children.setdefault(c.parent, []).append(c.index)
    # Anchors: mid-depth classes with several children, so the set gets siblings and 3+ levels.
    anchors = [c.index for c in tree.classes if 2 <= c.depth <= 4 and len(children.get(c.index, ())) >= 3]
    rng.shuffle(anchors)
    chosen: list[int] = []
    seen: set[int] = set()

    def add(i: int) -> None:
        if i not in seen:
            seen.add(i)
            chosen.append(i)

    for anchor in anchors:
        if len(chosen) >= num_nouns:
            break
        chain = [i for i in reversed(tree.class_tree[anchor]) if i not in seen]
        kids = list(children[anchor])
        rng.shuffle(kids)
        kids = kids[: int(rng.integers(2, 5))]
        if len(chosen) + len(chain) + len(kids) > num_nouns:
            continue
        for i in chain + kids:
            add(i)
    # Fill the rest with children of chosen classes: their ancestors are already in the set.
    frontier = list(chosen)
    while len(chosen) < num_nouns and frontier:
        parent = frontier.pop(int(rng.integers(len(frontier))))
        for kid in children.get(parent, ()):
            if len(chosen) >= num_nouns:
                break
            if kid not in seen:
                add(kid)
                frontier.append(kid)
    if len(chosen) < num_nouns:
        raise ConfigError(f"could not pick {num_nouns} classes forming whole chains; ask for fewer --classes")
    return sorted(tree.wnids[i] for i in chosen)


def non_noun_wnids(count: int) -> list[str]:
    """wnid-shaped ids that are not WordNet 3.0 noun synset offsets (offsets inside the license header)."""
    return [f"n{k + 1:08d}" for k in range(count)]


# ---------------------------------------------------------------------------------------------- drawing
def _traits(wnid: str) -> dict:
    """Visual traits of one class, stable whatever else is in the set (seeded by the wnid alone)."""
    h = np.random.default_rng(int.from_bytes(hashlib.sha1(wnid.encode()).digest()[:8], "little"))
    return {
        "color": tuple(int(v) for v in h.integers(20, 236, size=3)),
        "shape": int(h.integers(0, 4)),
        "angle": float(h.uniform(0, math.pi)),
        "freq": int(h.integers(3, 9)),
    }


def _draw_layer(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], traits: dict, leaf: bool) -> None:
    x0, y0, x1, y1 = box
    color = traits["color"]
    shape = traits["shape"]
    if shape == 0:
        draw.ellipse(box, fill=color)
    elif shape == 1:
        draw.rectangle(box, fill=color)
    elif shape == 2:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=color)
    if leaf:
        # The class's own mark: stripes at its angle and frequency, in its colour's complement.
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = max(x1 - x0, y1 - y0) / 2
        dx, dy = math.cos(traits["angle"]), math.sin(traits["angle"])
        stripe = tuple(255 - c for c in color)
        n = traits["freq"]
        width = max(1, int(r / n / 2))
        for k in range(-n, n + 1):
            off = k * r / n
            px, py = cx - dy * off, cy + dx * off
            draw.line([(px - dx * r, py - dy * r), (px + dx * r, py + dy * r)], fill=stripe, width=width)


def render(path_wnids: list[str], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One image of the class whose root-first WordNet chain is ``path_wnids``.

    The class's object (nested layers, below) stands at a random place and size on a scene of its own: a smooth
    random colour field tinted with the root's colour, and a few random shapes. So two images of a class are two
    pictures of the same kind of thing, not one drawing moved about: the duplicate finder of ``prepare`` must
    not take them for copies (with one jittered layout per class, 2-3 % of same-class pairs were within its
    hash distance; docs/clean-data.md).
    """
    w, h = size
    base = 128  # draw small, then scale: drawing cost stays flat for 2000 px images
    bw, bh = (base, max(8, round(base * h / w))) if w >= h else (max(8, round(base * w / h)), base)
    root = _traits(path_wnids[0])
    field_ = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(field_, "RGB").resize((bw, bh), Image.BICUBIC), dtype=np.float32)
    grad = np.linspace(0.7, 1.1, bh, dtype=np.float32)[:, None, None]
    tint = np.array(root["color"], dtype=np.float32)[None, None, :] * grad
    img = Image.fromarray(np.clip(0.5 * tint + 0.5 * scene, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):  # clutter
        x, y, r = bw * rng.random(), bh * rng.random(), min(bw, bh) * rng.uniform(0.05, 0.15)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r), fill=colour)
    cx, cy = bw * rng.uniform(0.3, 0.7), bh * rng.uniform(0.3, 0.7)
    scale = min(bw, bh) * rng.uniform(0.28, 0.42)
    for depth, wnid in enumerate(path_wnids[1:], start=1):
        s = scale * (1.0 - 0.12 * (depth - 1))
        box = (cx - s, cy - s, cx + s, cy + s)
        _draw_layer(draw, box, _traits(wnid), leaf=depth == len(path_wnids) - 1)
    if len(path_wnids) == 1:
        _draw_layer(draw, (cx - scale, cy - scale, cx + scale, cy + scale), root, leaf=True)
    noise = rng.normal(0, 10, size=(bh, bw, 3)).astype(np.float32)
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").resize((w, h), Image.BILINEAR)


def _size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    u = rng.random()
    if u < cfg.small_share:
        short = int(rng.integers(64, 224))
    elif u < cfg.small_share + cfg.large_share:
        short = int(rng.integers(1400, 2000))
        long_ = int(rng.integers(2001, 2600))
        return (long_, short) if rng.random() < 0.5 else (short, long_)
    else:
        short = int(rng.integers(280, 500))
    aspect = float(rng.uniform(1.0, 1.5))
    long_ = int(short * aspect)
    return (long_, short) if rng.random() < 0.7 else (short, long_)


def _encode(img: Image.Image, kind: str, quality: int, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"<html><body>404 Not Found</body></html>\n" + rng.bytes(int(rng.integers(16, 256)))
    if kind == "png":
        # What matters is that the member is a PNG, not its size: zlib's default level took ~0.2 s per textured image.
        img.save(buf, format="PNG", compress_level=1)
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, format="JPEG", quality=quality)
    elif kind == "gray":
        img.convert("L").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: max(64, len(data) // 3)]
    return data


def _pick_kind(rng: np.random.Generator, cfg: SynthConfig) -> str:
    u = rng.random()
    if u < cfg.bad_share:
        return UNREADABLE_KINDS[int(rng.integers(len(UNREADABLE_KINDS)))]
    if u < cfg.bad_share + cfg.odd_share:
        return ("cmyk", "gray", "png")[int(rng.integers(3))]
    return "jpeg"


# ---------------------------------------------------------------------------------------------- writing
def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar with fixed headers, so the same seed gives the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1318000000  # the fall11 era; any fixed value keeps output stable
            info.mode = 0o644
            info.uname = info.gname = "imagenet"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def drawing_paths(wnids: list[str]) -> dict[str, list[str]]:
    """Root-first chains used to draw each class: its fall11 chain restricted to ``wnids``.

    A wnid outside fall11 (the non-noun classes) is drawn as a root of its own. Rendering more images
    of a class later (held-out images, say) with the same set gives the same look.
    """
    from in21k.tree import SemanticTree

    fall11 = SemanticTree.builtin("fall11")
    chosen = set(wnids)
    paths = {}
    for wnid in wnids:
        if wnid in fall11.wnid_to_index:
            chain = [fall11.wnids[i] for i in fall11.path(fall11.wnid_to_index[wnid])]
            paths[wnid] = [w for w in chain if w in chosen]
        else:
            paths[wnid] = [wnid]
    return paths


def _plant(
    cfg: SynthConfig,
    out: Path,
    generated: dict[str, list[list]],
    numbers: dict[str, set[int]],
    nouns: list[str],
    paths: dict[str, list[str]],
) -> dict:
    """Planted copies and the evaluation set (``in21k.synth.planted``), from a random stream of their own, so that
    the rest of the release is the same with or without them."""
    from in21k.synth.planted import PLANT_KINDS, plant_copies, plant_eval_set

    rng = np.random.default_rng([cfg.seed, 16])
    # Plant into the larger noun classes: those a prepare keeps, whatever its --min-images within the range.
    median = float(np.median([len(generated[w]) for w in nouns]))
    eligible = sorted(w for w in nouns if len(generated[w]) >= median)
    top = max(max(v) for v in numbers.values())

    def new_name(wnid: str) -> str:
        nonlocal top
        top += 1
        return f"{wnid}_{top}.JPEG"

    pairs = plant_copies(generated, eligible, cfg.plant, rng, new_name) if cfg.plant else []
    info = None
    if cfg.eval_images:

        def draw(wnid: str) -> Image.Image:
            s = int(rng.integers(280, 500))
            return render(paths[wnid], (int(s * rng.uniform(1.0, 1.5)), s), rng)

        more, info = plant_eval_set(out / EVAL_DIR, generated, eligible, cfg.eval_images, rng, draw, new_name)
        pairs += more
    return {"kinds": list(PLANT_KINDS), "per_kind_and_scope": cfg.plant, "eval_set": info, "pairs": pairs}


def write_synthetic_release(cfg: SynthConfig) -> dict:
    """Write the release described by ``cfg`` and return its report (also saved as ``synth_report.json``)."""
    from in21k.tree import SemanticTree

    cfg.validate()
    if cfg.shape == "fall11":
        from in21k.synth.scale import write_fall11_scale

        return write_fall11_scale(cfg.out, members=cfg.members, seed=cfg.seed)
    lo, hi = cfg.image_range()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    nouns = choose_classes(cfg.classes - cfg.non_noun_classes, rng)
    fake = non_noun_wnids(cfg.non_noun_classes)
    fall11 = SemanticTree.builtin("fall11")
    chosen = set(nouns)
    paths = drawing_paths(nouns + fake)
    names = {w: fall11.names[fall11.wnid_to_index[w]] for w in nouns}
    # Class sizes spread evenly over MIN..MAX (shuffled), so a threshold inside the range drops some.
    all_wnids = sorted(nouns + fake)
    sizes = np.linspace(lo, hi, num=len(all_wnids)).round().astype(int)
    rng.shuffle(sizes)
    generated: dict[str, list[list]] = {}  # wnid -> members [name, bytes, kind], in tar order
    numbers_by_class: dict[str, set[int]] = {}
    with progress(total=len(all_wnids), desc="synth classes", unit="class") as bar:
        for wnid, n in zip(all_wnids, sizes, strict=True):
            numbers = rng.choice(np.arange(1, 10 * hi + 100), size=int(n), replace=False)
            numbers_by_class[wnid] = {int(x) for x in numbers}
            members: list[list] = []
            for number in numbers:  # random order, like the real tars
                kind = _pick_kind(rng, cfg)
                img = render(paths[wnid], _size(rng, cfg), rng)
                members.append([f"{wnid}_{int(number)}.JPEG", _encode(img, kind, cfg.quality, rng), kind])
            generated[wnid] = members
            bar.update()
    planted = _plant(cfg, out, generated, numbers_by_class, nouns, paths) if cfg.plant or cfg.eval_images else None
    report_classes = []
    members_by_class: dict[str, dict[str, str]] = {}
    raw_members: dict[str, list[tuple[str, bytes]]] = {}
    class_blobs: list[tuple[str, bytes]] = []
    for wnid in all_wnids:
        members = [(name, data) for name, data, _ in generated[wnid]]
        kinds = Counter(kind for _, _, kind in generated[wnid])
        members_by_class[wnid] = {name: kind for name, _, kind in generated[wnid]}
        report_classes.append(
            {
                "wnid": wnid,
                "name": names.get(wnid, ""),
                "wordnet_noun": wnid in chosen,
                "members": len(members),
                "readable": sum(kinds[k] for k in READABLE_KINDS),
                "kinds": {k: kinds[k] for k in KINDS},
            }
        )
        if cfg.layout in PROCESSED_LAYOUTS:
            raw_members[wnid] = members
        elif cfg.layout == "folders":
            folder = out / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in members:
                (folder / name).write_bytes(data)
        else:
            blob = tar_bytes(members)
            if cfg.layout == "class-tars":
                (out / f"{wnid}.tar").write_bytes(blob)
            else:
                class_blobs.append((f"{wnid}.tar", blob))
    own = (REPORT_NAME, SYNSETS_NAME, CLASS_LIST_NAME, EVAL_DIR)
    files = sorted(p.name for p in out.iterdir() if p.name not in own)
    processed_members = None
    if cfg.layout in PROCESSED_LAYOUTS:
        from in21k.synth import processed

        release = processed.processed_release(
            raw_members, size=cfg.size, min_images=cfg.min_images, val_per_class=cfg.val_per_class
        )
        processed_members = processed.report_of(release, members_by_class)
        if cfg.layout == "parquet":
            files = processed.write_parquet(
                out, release, image_format=cfg.image_format, quality=cfg.quality, seed=cfg.seed
            )
        else:
            files = processed.write_processed(out, release, archive=cfg.layout == "processed-tar-gz")
    if cfg.layout == "whole-tar":
        outer = tar_bytes(class_blobs)
        if cfg.whole_name.endswith(".gz"):
            outer = gzip.compress(outer, compresslevel=1, mtime=0)
        (out / cfg.whole_name).write_bytes(outer)
        files = [cfg.whole_name]
    totals = Counter()
    for c in report_classes:
        totals.update(c["kinds"])
    report = {
        "schema": REPORT_SCHEMA,
        "config": saved_config(cfg),
        "layout": cfg.layout,
        "files": files,
        "totals": {
            "classes": len(report_classes),
            "wordnet_noun_classes": len(nouns),
            "members": int(sum(c["members"] for c in report_classes)),
            "readable": int(sum(totals[k] for k in READABLE_KINDS)),
            "unreadable": int(sum(totals[k] for k in UNREADABLE_KINDS)),
            "kinds": {k: int(totals[k]) for k in KINDS},
        },
        "classes": report_classes,
        "members": members_by_class,
    }
    if processed_members is not None:
        # The processed release's own members (what prepare reads): wnid -> name -> split, raw kind, copied.
        report["processed"] = processed_members
    if planted is not None:
        report["planted"] = planted
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1))
    (out / SYNSETS_NAME).write_text("".join(w + "\n" for w in nouns))
    order = list(nouns)
    np.random.default_rng(cfg.seed + 1).shuffle(order)
    (out / CLASS_LIST_NAME).write_text("".join(w + "\n" for w in order))
    log.info("wrote %d members of %d classes to %s", report["totals"]["members"], len(all_wnids), out)
    return report
