"""Class lists: a file of wnids, or one of the synset lists timm ships, by name.

A class list fixes both *which* classes a dataset has and their *order*: label index ``i`` is the ``i``-th wnid
of the list. That is what published weights need: timm's ``*.miil_in21k`` models have an 11,221-row head in the
order of ``imagenet21k_miil_synsets.txt``, its ``in12k`` models 11,821 rows in the order of
``imagenet12k_synsets.txt``. A list recomputed from a class-size threshold can differ from the published one by a
few classes at the margin (it depends on how images are counted), and a sorted list loses an unsorted list's
order (``imagenet22k_ms`` puts the 1,000 ImageNet-1K classes first).

The named lists are read from the installed timm package (``timm/data/_info/<name>_synsets.txt``), so the names
are those of the installed timm (``timm_list_names()``): ``imagenet21k_miil`` (fall11 ImageNet-21K-P, 11,221),
``imagenet21k_miil_w21`` (winter21 ImageNet-21K-P, 10,450), ``imagenet12k`` (11,821), ``imagenet22k`` (fall11,
21,841), ``imagenet22k_ms``, ``imagenet21k_goog``, ``imagenet`` (ImageNet-1K), ... ``fall11`` and ``winter21``
are kept as aliases of the two ImageNet-21K-P lists.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from in21k.errors import ConfigError, DataError

SYNSETS_SUFFIX = "_synsets.txt"
ALIASES = {"fall11": "imagenet21k_miil", "winter21": "imagenet21k_miil_w21"}
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ClassList:
    """An ordered list of distinct wnids and where it came from (a timm list name, or a file)."""

    name: str  # timm's list name, or the file as given
    wnids: tuple[str, ...]
    origin: str  # "timm <version>: timm/data/_info/<file>" or the file's URL

    def __len__(self) -> int:
        return len(self.wnids)


def _timm_info() -> Path:
    """timm's ``data/_info`` folder, found without importing timm (which imports torch: seconds)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("timm is not installed, so its class lists are not available; install timm")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def timm_list_names() -> list[str]:
    """The names of the synset lists the installed timm ships (file ``<name>_synsets.txt``), sorted."""
    return sorted(p.name[: -len(SYNSETS_SUFFIX)] for p in _timm_info().iterdir() if p.name.endswith(SYNSETS_SUFFIX))


def parse_wnids(text: str, where: str) -> list[str]:
    """One wnid per line (its first column); blank lines and ``#`` comments ignored; checked, no repeats."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        wnid = line.split()[0]
        if not _WNID.match(wnid):
            raise DataError(
                f"{where}, line {number}: {wnid!r} is not a wnid (n + 8 digits); a class list holds one wnid per line"
            )
        out.append(wnid)
    if not out:
        raise DataError(f"{where} lists no classes (one wnid per line)")
    seen: set[str] = set()
    repeated = [w for w in out if w in seen or seen.add(w)]  # type: ignore[func-returns-value]
    if repeated:
        raise DataError(
            f"{where} lists {len(repeated)} wnid(s) twice (first: {repeated[0]}); a label index needs "
            "exactly one class: remove the repeats"
        )
    return out


def load_class_list(spec: str, *, storage_options: dict[str, Any] | None = None) -> ClassList:
    """The class list ``spec``: one of timm's list names (or ``fall11``/``winter21``), else a file (local or URL).

    A name that is neither raises a ``ConfigError`` listing the known names.
    """
    from in21k import storage

    name = ALIASES.get(spec, spec)
    known = timm_list_names()
    if name in known:
        from importlib.metadata import version  # not `import timm`: that imports torch, seconds for a version

        ref = _timm_info() / f"{name}{SYNSETS_SUFFIX}"
        where = f"timm {version('timm')}: timm/data/_info/{name}{SYNSETS_SUFFIX}"
        return ClassList(name, tuple(parse_wnids(ref.read_text(), where)), where)
    try:
        text = storage.read_bytes(spec, storage_options=storage_options).decode()
    except (storage.NotFoundError, IsADirectoryError):
        raise ConfigError(
            f"class list {spec!r} is neither a file nor one of timm's lists ({', '.join(known)}; also fall11, "
            "winter21): give a file of wnids, one a line, or one of those names"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"class list {spec!r} is not a text file of wnids") from None
    return ClassList(spec, tuple(parse_wnids(text, f"class list {spec}")), spec)
