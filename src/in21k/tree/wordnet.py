"""Finding and loading WordNet 3.0 through nltk, offline.

This module is the only place that knows where WordNet lives. Search order:

1. ``$NLTK_DATA`` (nltk's own variable; several folders separated by ``:``);
2. nltk's default folders, which include ``<venv>/nltk_data``: ``make wordnet`` builds that folder
   from Debian's ``wordnet-base`` + ``wordnet-sense-index`` (copied, not linked) and the ``lexnames``
   file committed under ``third_party/wordnet/``;
3. nothing: a ``SetupError`` that names the command which fixes it.

On a machine with internet, ``python -m nltk.downloader wordnet`` gives the same data.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

from in21k.errors import SetupError

FIX_HINT = (
    "WordNet 3.0 was not found by nltk. Fix it with one of:\n"
    "  make wordnet                      # from a checkout: copies Debian's WordNet into .venv/nltk_data\n"
    "  python -m nltk.downloader wordnet # where the internet is reachable\n"
    "or point NLTK_DATA at a folder that holds corpora/wordnet/ (data.noun, index.noun, lexnames, ...)."
)


def nltk_search_path() -> list[str]:
    import nltk

    return list(nltk.data.path)


@functools.lru_cache(maxsize=1)
def load_wordnet() -> Any:
    """Return nltk's WordNet corpus reader, checked to be version 3.0."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as exc:  # pragma: no cover - nltk is a core dependency
        raise SetupError("nltk is not installed; run `make test` or `pip install nltk`") from exc
    try:
        root = nltk.data.find("corpora/wordnet")
    except LookupError:
        searched = "\n  ".join(nltk_search_path())
        raise SetupError(f"{FIX_HINT}\nSearched:\n  {searched}") from None
    try:
        with warnings.catch_warnings():
            # nltk warns that the Open Multilingual Wordnet is absent; we only use English WordNet 3.0.
            warnings.simplefilter("ignore", UserWarning)
            reader = WordNetCorpusReader(root, None)
    except (OSError, LookupError) as exc:
        raise SetupError(f"WordNet at {root} is incomplete ({exc}).\n{FIX_HINT}") from None
    version = reader.get_version()
    if version != "3.0":
        raise SetupError(
            f"WordNet at {root} is version {version}, but ImageNet wnids are WordNet 3.0 offsets.\n{FIX_HINT}"
        )
    return reader


def wordnet_location() -> str:
    """Where the loaded WordNet lives (for logs and reports)."""
    return str(load_wordnet().root)


def noun_synset(wnid: str) -> Any | None:
    """The WordNet 3.0 noun synset of an ImageNet wnid (``n`` + 8-digit offset), or ``None``."""
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        return None
    wn = load_wordnet()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nltk warns, then returns None, for a bad offset
            return wn.synset_from_pos_and_offset("n", int(wnid[1:]))
    except Exception:  # nltk raises WordNetError, ValueError or AttributeError for a bad offset
        return None


def wnid_of(synset: Any) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


def env_nltk_data() -> str | None:
    return os.environ.get("NLTK_DATA")


def gloss(wnid: str) -> str:
    """WordNet 3.0's definition (gloss) of a wnid's noun synset, ``""`` when the wnid is not one."""
    synset = noun_synset(wnid)
    return str(synset.definition()) if synset is not None else ""
