"""The CLIP BPE tokenizer ModelScope's OpenCLIP text tower expects (77 tokens, padded with id 0).

The diffusers layout ships it in ``tokenizer/`` (vocab.json + merges.txt). The original ModelScope
release does not (open_clip bundles its vocabulary, ``bpe_simple_vocab_16e6.txt.gz``), so for
that layout `find_tokenizer` looks, in order, for ``<model>/tokenizer/``, ``<model>/bpe_simple_
vocab_16e6.txt.gz`` and the file inside an installed ``open_clip`` package (located, not imported).
"""
from __future__ import annotations

import gzip
import json
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer keeps this many merges
START, END = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table, in vocabulary order.

    Printable bytes map to themselves and come first; the others follow in byte order as
    chr(256 + n).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    rest = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def vocab_and_merges_from_bpe_gz(path: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """open_clip's vocabulary file -> (vocab, merges) in the order open_clip numbers them."""
    try:
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"tokenizer: {str(path)!r} is not a readable gzip BPE file: {e}") from e
    merges = [ln for ln in lines[1:OPEN_CLIP_MERGES + 1] if ln.strip()]
    if not merges or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"tokenizer: {str(path)!r} has no 'a b' merge lines after its header")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [START, END]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def clip_tokenizer_from_bpe_gz(path: str | os.PathLike) -> Any:
    """A transformers CLIPTokenizer equivalent to open_clip's tokenizer (pad "!" = id 0, as open_clip pads)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges_from_bpe_gz(path)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token="!", model_max_length=77)


def load_tokenizer_folder(folder: str | os.PathLike) -> Any:
    """A transformers CLIPTokenizer from a folder (tokenizer.json, or vocab.json + merges.txt). A folder whose path
    is not valid UTF-8 (which the tokenizers library cannot open) is read through a temporary copy. ValueError
    naming the folder when its files are not a tokenizer."""
    import shutil
    import tempfile

    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"tokenizer: {str(folder)!r} has no tokenizer.json and lacks {', '.join(missing)}")
    try:
        try:
            str(folder).encode("utf-8")
        except UnicodeEncodeError:
            with tempfile.TemporaryDirectory(prefix="ezvtb-tokenizer.") as tmp:
                for f in folder.iterdir():
                    if f.is_file():
                        shutil.copyfile(f, Path(tmp) / f.name)
                return CLIPTokenizer.from_pretrained(tmp)
        return CLIPTokenizer.from_pretrained(str(folder))
    except (TypeError, ValueError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"tokenizer: {str(folder)!r} does not hold a readable CLIP tokenizer: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def find_tokenizer(model_dir: str | os.PathLike) -> Any:
    """The tokenizer for a ModelScope-layout folder (see the module docstring for the search order)."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer").is_dir():
        return load_tokenizer_folder(model_dir / "tokenizer")
    candidates = [model_dir / OPEN_CLIP_BPE]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / OPEN_CLIP_BPE)
    for c in candidates:
        if c.is_file():
            log.info("tokenizer: open_clip vocabulary %s", c)
            return clip_tokenizer_from_bpe_gz(c)
    raise FileNotFoundError(
        f"tokenizer: {str(model_dir)!r} has no tokenizer/ folder (vocab.json, merges.txt) and no {OPEN_CLIP_BPE}, "
        f"and open_clip is not installed. Copy the tokenizer/ folder of a diffusers text-to-video model (e.g. "
        f"ali-vilab/text-to-video-ms-1.7b) or open_clip's {OPEN_CLIP_BPE} into the model folder, or "
        f"pip install open-clip-torch"
    )


def tokenize(tokenizer: Any, texts: list[str], max_length: int = 77) -> "Any":
    """(len(texts), max_length) int64 token ids: start, BPE, end, then padding (truncated to fit)."""
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids
