"""The docs stay true: every shell and Python block of README.md and docs/*.md runs, or says why it cannot.

A fenced ```bash, ```sh, ```console or ```python block either runs here, as a user would type it, or has the
line ``<!-- docs-test: skip: REASON -->`` directly before its opening fence, REASON naming what a test cannot
have (a GPU, a Ray cluster, the real release, the network).

Blocks run one after the other in one workspace, a temporary folder that holds the repository's ``configs/``
and ``scripts/``, as a user's checkout does:

- ``in21k`` and ``python`` are this interpreter (``python -m in21k``); bash runs with ``set -euo pipefail``;
- ``s3://datasets/...`` is a bucket of the local S3 server (its credentials and endpoint in the environment):
  it holds a prepared dataset at ``imagenet21k-p/fall11`` and a synthetic ``imagenet21k/fall11_whole.tar``;
- the prepared dataset is the one docs/pipeline.md's first block makes (run once, with small sizes), also
  named ``DST``; ``runs/r50`` is a short training run on it; ``photo.jpg`` and ``more_photos/`` are real JPEGs;
- ``SUBSTITUTIONS`` make the few other changes a block needs (small sizes, a CPU for ``.cuda()``, a local Ray
  for ``--ray-address auto``), each keyed by text of the block it applies to;
- a shell command that an earlier block already ran in the workspace, to the letter, is not run again.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from in21k.dataset import SPLITS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("bash", "sh", "console", "python")
MARKER = re.compile(r"^<!-- docs-test: skip: (?P<reason>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")

# The small sizes and local stand-ins every command gets (after the per-block substitutions).
SMALL_SYNTH = "--classes 6 --images 22:30 --seed 5 --large-share 0"
SMALL_PREPARE = "--min-images 12 --val-per-class 3 --shard-size 16 --no-progress"
TRAIN = (
    "--model resnet10t --image-size 32 --epochs 1 --batch-size 8 --amp none --loader.num-workers 1 "
    "--run.max-steps-per-epoch 4 --run.val-max-batches 2 --no-plot"
)
PREPARED = "demo_out/prepared"
GENERIC = [
    (re.compile(r"\bDST\b"), PREPARED),
    (re.compile(r"/shared/runs/"), "runs/"),
]
# (file, text the block contains) -> [(old, new), ...]: what a block needs to run here.
SUBSTITUTIONS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("pipeline.md", "in21k synth demo_out/raw"): [
        ("--config configs/synth/demo.yaml", f"--config configs/synth/demo.yaml {SMALL_SYNTH}"),
        ("--config configs/prepare/demo.yaml", f"--config configs/prepare/demo.yaml {SMALL_PREPARE}"),
    ],
    ("clean-data.md", "--against synth-eval"): [
        ("--config configs/synth/demo.yaml", f"--config configs/synth/demo.yaml {SMALL_SYNTH}"),
        ("--config configs/prepare/demo.yaml", f"--config configs/prepare/demo.yaml {SMALL_PREPARE}"),
    ],
    ("pipeline.md", "--plan-only"): [
        ("--ray-address auto", "--ray-address local"),  # a local Ray stands in for the cluster
        ("--plan-only", f"--plan-only {SMALL_PREPARE}"),
    ],
    ("README.md", "create_loader("): [
        ("num_workers=8", "num_workers=1"),
        ("step=100", "step=1"),  # the small dataset's epoch has a few steps
    ],
    ("loader.md", "create_loader("): [
        ("s3://bucket/in21k-p", "s3://datasets/imagenet21k-p/fall11"),
        ("num_workers=8", "num_workers=1"),
        (".cuda(non_blocking=True)", ".to('cpu')"),  # no GPU here
    ],
}
# Names a Python block takes from its surroundings (the prose around it defines them).
PRELUDES: dict[tuple[str, str], str] = {
    ("loader.md", "create_loader("): "checkpoint, epochs, save = None, 1, lambda state: None\n",
    ("training.md", "SemanticSoftmaxLoss"): (
        "import json, torch\n"
        f"_n = json.load(open('{PREPARED}/tree.json'))['num_classes']\n"
        "logits, labels = torch.randn(8, _n), torch.randint(0, _n, (8,))\n"
    ),
}
BASH_PRELUDE = """set -euo pipefail
in21k() { "$PYTHON" -m in21k "$@"; }
python() { "$PYTHON" "$@"; }
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # the marker's reason

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def matches(self, key: tuple[str, str]) -> bool:
        return self.path.name == key[0] and key[1] in self.text


def blocks_of(path: Path) -> list[Block]:
    """The fenced shell and Python blocks of a Markdown file, with the skip marker before each, if any."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"{path.name}:{i + 1}: a code fence that is never closed")
        if fence["lang"] in LANGUAGES:
            marker = MARKER.match(lines[i - 1]) if i else None
            out.append(
                Block(
                    path,
                    i + 1,
                    fence["lang"],
                    "\n".join(lines[i + 1 : end]) + "\n",
                    marker["reason"] if marker else None,
                )
            )
        i = end + 1
    return out


ALL = [b for path in DOCS for b in blocks_of(path)]


def prepared_block() -> Block:
    return next(b for b in ALL if b.matches(("pipeline.md", "in21k synth demo_out/raw")))


def text_to_run(block: Block) -> str:
    text = block.text
    for key, pairs in SUBSTITUTIONS.items():
        if block.matches(key):
            for old, new in pairs:
                text = text.replace(old, new)
    for pattern, new in GENERIC:
        text = pattern.sub(new, text)
    return "".join(p for key, p in PRELUDES.items() if block.matches(key)) + text


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


DONE: set[str] = set()  # shell commands that already ran, as run, in the module's workspace


def run_block(block: Block, workspace: Path, env: dict[str, str]) -> None:
    """Run ``block`` (substituted) in ``workspace``; a shell command that an earlier block already ran there, to
    the letter, is not run twice (docs repeat ``in21k tree build --synsets fall11 ...``)."""
    text = text_to_run(block)
    if block.lang == "python":
        cmd = [sys.executable, "-c", text]
    else:
        commands = [c for c in shell_commands(text) if c not in DONE]
        cmd = ["bash", "-c", BASH_PRELUDE + "\n".join(commands)]
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{block.name} failed (exit {proc.returncode}); as run:\n{cmd[-1]}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-5000:]}"
    )
    if block.lang != "python":
        DONE.update(commands)


def in21k(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "in21k", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"in21k {' '.join(args)}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, s3_server) -> tuple[Path, dict[str, str]]:
    """A user's checkout with a prepared dataset (made by docs/pipeline.md's first block), a short training run
    ``runs/r50``, a couple of photos, and the bucket ``s3://datasets`` on the local S3 server."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("configs", "scripts"):
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, **s3_server.env, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    run_block(prepared_block(), work, env)
    in21k("train", "--data", PREPARED, "--out", "runs/r50", *TRAIN.split(), cwd=work, env=env)
    photos = []
    for tar_path in sorted((work / "demo_out" / "raw").glob("n*.tar"))[:3]:
        with tarfile.open(tar_path) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".JPEG") and m.size > 1000)
            photos.append(tar.extractfile(member).read())
    (work / "photo.jpg").write_bytes(photos[0])
    (work / "more_photos").mkdir()
    for i, data in enumerate(photos[1:]):
        (work / "more_photos" / f"p{i}.jpg").write_bytes(data)
    bucket = s3_server.make_bucket("datasets")
    client = s3_server.client()
    for path in sorted(p for p in (work / PREPARED).rglob("*") if p.is_file()):
        rel = path.relative_to(work / PREPARED).as_posix()
        if not rel.startswith("_work/"):  # the dataset as published, without the job's own bookkeeping
            client.upload_file(str(path), bucket, f"imagenet21k-p/fall11/{rel}")
    whole = work / "whole"
    in21k(
        "synth",
        str(whole),
        *SMALL_SYNTH.split(),
        "--layout",
        "whole-tar",
        "--whole-name",
        "fall11_whole.tar",
        cwd=work,
        env=env,
    )
    client.upload_file(str(whole / "fall11_whole.tar"), bucket, "imagenet21k/fall11_whole.tar")
    shutil.rmtree(whole)
    return work, env


def test_every_block_is_found_and_every_marker_says_why() -> None:
    assert len(ALL) >= 20
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("<!-- docs-test"):
                assert MARKER.match(line), f"{path.name}:{i + 1}: write the marker as <!-- docs-test: skip: REASON -->"
                assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), (
                    f"{path.name}:{i + 1}: a docs-test marker must stand directly before a code fence"
                )


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.parametrize("block", ALL, ids=lambda b: b.name)
def test_doc_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.skip:
        pytest.skip(f"marked: {block.skip}")
    work, env = request.getfixturevalue("workspace")  # made only when a block runs
    if block == prepared_block():  # the workspace fixture ran it: its output is there
        assert (work / PREPARED / "_info.json").exists() and (work / PREPARED / "tree.json").exists()
        return
    run_block(block, work, env)


# ------------------------------------------------------------------------------------- names in backticks
# Names in backticks that are neither ours nor outputs of ours: the original's scripts and files, timm's class
# lists, the release's own archives and folders, and the system's files.
FOREIGN = {
    "Transfer_learning.md",
    "visualize_detector.py",
    "resize.py",
    "train.py",
    "resnet50_miil_21k.pth",
    "imagenet21k_miil_synsets.txt",
    "imagenet21k_miil_w21_synsets.txt",
    "fall11_whole.tar",
    "winter21_whole.tar.gz",
    "train/",
    "val/",
    "small_classes/",
    "ROOT/train/<class>/*",
    "ROOT/val/<class>/*",
    "ROOT/.../nXXXXXXXX/*.JPEG",
    ".../nXXXXXXXX/*.JPEG",
    "nXXXXXXXX.tar",
    "n01440764.tar",
    "n01440764_10026.JPEG",
    ".venv/",
    ".venv/nltk_data/",
}
TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".ci"}
PACKAGE = ROOT / "src" / "in21k"
SPAN = re.compile(r"`([^`\n]+)`")
PATHLIKE = re.compile(r"^[A-Za-z0-9_./*<>{},-]+$")
# Parts of a documented name that stand for something: <step>, NNNNNN, nXXXXXXXX, *, ..., DST, RUN_DIR, KEY, R.
FILE_TYPES = "py|md|yaml|yml|json|jsonl|tar|gz|pt|pth|parquet|tsv|png|sh|txt|toml|log|jpg|JPEG|cls|sbatch|csv"
PLACEHOLDER = re.compile(r"<[^>]+>|\*|\.\.\.|\{[^}]*\}|n?X{4,}|N{4,}|(?<![A-Za-z])[A-Z][A-Z_]*(?![a-z])")


def documented_names() -> dict[str, str]:
    """Spans in backticks (outside code blocks) of README.md and docs/*.md that name a file or folder."""
    out: dict[str, str] = {}
    for path in DOCS:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for span in SPAN.findall(prose):
            if not PATHLIKE.match(span) or span.startswith(("/", "-")) or span in FOREIGN:
                continue  # not a name, a system path or a flag, or not ours
            parts = [p for p in span.split("/") if p]
            named = "/" in span or re.search(rf"[A-Za-z0-9*>]\.({FILE_TYPES})$", span)
            if named and any(re.match(r"[A-Za-z_][A-Za-z0-9_.-]+$", p) for p in parts):
                out.setdefault(span, path.name)
    return out


def glob_of(name: str) -> str:
    return PLACEHOLDER.sub("*", name)


@functools.cache
def _meet(doc: str, code: str) -> bool:
    """Whether a documented name (its placeholders ``*``) can be a name the code makes (its f-string fields ``*``).

    A placeholder stands for anything; a field of the code stands for digits or a split name only (what the code
    fills in: shard numbers, steps, ranks, ``train``), so ``index.parquet`` is not ``f"{x}.parquet"``.
    """
    if not doc or not code:
        return doc.strip("*") == code.strip("*") == ""
    if doc[0] == "*":
        return _meet(doc[1:], code) or _meet(doc, code[1:])
    if code[0] == "*":
        run = re.match(r"[^*]*", doc)[0]
        fills = [k for k in range(1, len(run) + 1) if run[:k].isdigit() or run[:k] in SPLITS]
        return _meet(doc, code[1:]) or any(_meet(doc[k:], code[1:]) for k in fills)
    return doc[0] == code[0] and _meet(doc[1:], code[1:])


def _has_docstring(node: ast.AST) -> bool:
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return isinstance(node, scopes) and bool(node.body) and isinstance(node.body[0], ast.Expr)


def code_names() -> set[str]:
    """Every path component of every string constant of ``src/`` (f-string fields as ``*``), docstrings left out."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree) if _has_docstring(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            else:
                continue
            for token in re.split(r"[\s,;:()'\"`=\[\]]+", text):
                found.update(p for p in token.split("/") if p.strip("*"))
    return found


def expand(name: str) -> list[str]:
    """Brace sets spelled out: ``training/{kd,finetune}.py`` -> ``training/kd.py``, ``training/finetune.py``."""
    m = re.search(r"\{([^}]*)\}", name)
    if not m:
        return [name]
    return [n for alt in m.group(1).split(",") for n in expand(name[: m.start()] + alt + name[m.end() :])]


def exists_in_repository(name: str) -> bool:
    """Whether ``name`` (a glob where it has placeholders) is a file or folder of the repository: from its root,
    ``src/``, ``src/in21k/`` (module paths) or ``docs/``; a bare ``x.py`` anywhere in the package."""
    for variant in expand(name):
        pattern = glob_of(variant).rstrip("/")
        if any(any(base.glob(pattern)) for base in (ROOT, ROOT / "src", PACKAGE, ROOT / "docs")):
            continue
        if "/" in pattern or not any(PACKAGE.rglob(pattern)):
            return False
    return True


def test_every_documented_path_exists_or_is_a_name_the_code_writes() -> None:
    names, known, bad = documented_names(), code_names(), []
    assert len(names) > 50
    for name, doc in sorted(names.items()):
        if exists_in_repository(name):
            continue
        if name.split("/", 1)[0] in TOP_LEVEL:
            bad.append(f"{doc}: `{name}` is not in the repository")
            continue
        parts = [glob_of(p) for p in name.split("/") if p]
        missing = [p for p in parts if p.strip("*") and not any(_meet(p, k) for k in known)]
        if missing:
            bad.append(f"{doc}: `{name}`: {', '.join(missing)} is neither a repository path nor a name in the code")
    assert not bad, "\n".join(bad)
