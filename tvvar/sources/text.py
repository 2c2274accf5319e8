"""Text corpora: a UTF-8 file read as characters (or any file as raw bytes), a deterministic contiguous
train/validation split, random contiguous windows; :class:`Vocab` maps symbols to ids and back."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.sources.base import CORPUS_KIND, SPLITS, DataSource, check_sizes, check_split, split_key
from tvvar.typing import Array, PRNGKey

__all__ = ["TextCorpus", "Vocab"]


@dataclass(frozen=True)
class Vocab:
    """Symbols ↔ ids. Character level: ``symbols`` is the sorted list of distinct characters; byte
    level: the 256 byte values (text is UTF-8 encoded, ids are bytes)."""

    symbols: tuple[str, ...] = field(default=())
    byte_level: bool = False

    def __post_init__(self):
        if not self.byte_level and len(self.symbols) < 1:
            raise ValueError("a character vocabulary needs at least one symbol")
        if not self.byte_level and len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocabulary symbols must be distinct")

    @property
    def size(self) -> int:
        return 256 if self.byte_level else len(self.symbols)

    def encode(self, text: str | bytes) -> np.ndarray:
        """Ids of ``text``; at byte level ``text`` may be raw bytes (any binary data) or a str (UTF-8)."""
        if self.byte_level:
            raw = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8")
            return np.frombuffer(bytes(raw), np.uint8).astype(np.int32)
        if not isinstance(text, str):
            raise TypeError(f"text must be a str for a character vocabulary, got {type(text).__name__}")
        index = {c: i for i, c in enumerate(self.symbols)}
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise ValueError(f"text contains characters outside the vocabulary: {missing[:10]!r}")
        return np.fromiter((index[c] for c in text), np.int32, len(text))

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if self.byte_level:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return "".join(self.symbols[int(i)] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"byte_level": self.byte_level, "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Vocab:
        return cls(tuple(d.get("symbols", ())), bool(d.get("byte_level", False)))


def _read_corpus_bytes(path: Path) -> bytes:
    """The file's bytes; a name ending in ``.gz`` is gunzipped first (the repository ships its corpus so)."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"corpus file {str(path)!r} ends in .gz but is not a complete gzip file ({e})") from None


class TextCorpus(DataSource):
    """A file as one long token stream: UTF-8 characters, or with ``byte_level=True`` its raw bytes (any
    file, binary included: nothing is decoded). A path ending in ``.gz`` is read decompressed, so
    ``data/tinyshakespeare.txt.gz`` and the same file gunzipped give the same corpus.

    The split is deterministic and contiguous: the first ``1 − val_fraction`` of the stream is train,
    the rest validation. ``batch`` draws random contiguous windows of seq_len + 1 tokens from the split.
    Errors: missing file (FileNotFoundError), empty file, undecodable UTF-8 in character mode and a window
    longer than a split (ValueError) — each names the path and what was expected.
    """

    kind = CORPUS_KIND

    def __init__(self, path: str | Path, *, byte_level: bool = False, val_fraction: float = 0.1):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"corpus file {str(self.path)!r} does not exist")
        if not self.path.is_file():
            raise ValueError(f"corpus path {str(self.path)!r} is not a regular file")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        raw = _read_corpus_bytes(self.path)
        if len(raw) == 0:
            raise ValueError(f"corpus file {str(self.path)!r} is empty")
        if not isinstance(byte_level, bool):
            raise TypeError(f"byte_level must be a bool, got {byte_level!r}")
        self.byte_level, self.val_fraction = byte_level, float(val_fraction)
        if byte_level:
            self.vocab = Vocab(byte_level=True)
            ids = self.vocab.encode(raw)
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"corpus file {str(self.path)!r} is not valid UTF-8 (byte {e.start}: {e.reason}); "
                                 "read it with byte_level=True") from None
            self.vocab = Vocab(tuple(sorted(set(text))))
            ids = self.vocab.encode(text)
        self.vocab_size = self.vocab.size
        n_val = max(1, int(round(len(ids) * val_fraction)))
        if len(ids) - n_val < 1:
            raise ValueError(f"corpus file {str(self.path)!r} has {len(ids)} tokens: too short to split")
        dt = np.uint8 if self.vocab_size <= 256 else (np.uint16 if self.vocab_size <= 65536 else np.int32)
        self._splits = {"train": ids[:-n_val].astype(dt), "val": ids[-n_val:].astype(dt)}

    def split_size(self, split: str) -> int:
        return int(self._splits[check_split(split)].shape[0])

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        check_sizes(batch_size, seq_len)
        data = self._splits[check_split(split)]
        n = data.shape[0]
        if seq_len + 1 > n:
            raise ValueError(f"a window of seq_len + 1 = {seq_len + 1} tokens is longer than the {split} split "
                             f"of {str(self.path)!r} ({n} tokens); use a smaller seq_len")
        starts = jax.random.randint(split_key(key, split), (batch_size,), 0, n - seq_len)
        data = jnp.asarray(data)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(data, s, seq_len + 1))(starts)
        return {"tokens": win.astype(jnp.int32)}

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "byte_level": self.byte_level,
                "val_fraction": self.val_fraction, "vocab_size": self.vocab_size, "vocab": self.vocab.to_json(),
                "sizes": {s: self.split_size(s) for s in SPLITS}}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TextCorpus | Vocab:
        """The corpus if its file is still there with the same vocabulary, else the saved :class:`Vocab`."""
        vocab = Vocab.from_json(info["vocab"])
        p = Path(info["path"])
        if p.is_file():
            corpus = cls(p, byte_level=info["byte_level"], val_fraction=info["val_fraction"])
            if corpus.vocab == vocab:
                return corpus
        return vocab
