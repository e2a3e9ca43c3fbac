"""The read side of a prepared dataset: meta.json plus memory-mapped token shards (and, for data
with one, a loss mask of one byte per token beside them: fewshot.data.prepare.add_loss_mask)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from fewshot.errors import FewshotError
from fewshot.tokenizer import load_tokenizer

FORMAT = "fewshot-tokens"
FORMAT_VERSION = 1
META = "meta.json"


class TokenSplit:
    """One split (train or val) of a prepared dataset: a sequence of tokens over its shards."""

    def __init__(self, name: str, shards: list[np.ndarray], dtype: np.dtype):
        self.name = name
        self.shards = shards
        self.dtype = dtype
        self.offsets = np.cumsum([0] + [len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length): a view when they sit in one shard, a copy otherwise."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) is outside the {self.name} split ({len(self)} tokens)")
        parts = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while length > 0:
            local = start - int(self.offsets[shard])
            part = self.shards[shard][local: local + length]
            parts.append(part)
            start, length, shard = start + len(part), length - len(part), shard + 1
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


class TokenData:
    """A directory written by `prepare`: meta.json plus memory-mapped shards."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta

    @classmethod
    def open(cls, path: Path) -> TokenData:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FewshotError(f"{path} is a file; --data takes a prepared dataset directory (fewshot prepare makes one)")
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError:
            raise FewshotError(f"{path} is not a prepared dataset (no {META}); create one with: fewshot prepare") from None
        except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            raise FewshotError(f"{path / META} is corrupt; prepare the data again") from None
        except OSError as error:
            raise FewshotError(f"{path / META}: cannot read ({error.strerror})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise FewshotError(f"{path / META} does not describe a fewshot token dataset; prepare the data again")
        if meta.get("format_version") != FORMAT_VERSION:
            raise FewshotError(
                f"{path} uses dataset format version {meta.get('format_version')} but this fewshot reads version "
                f"{FORMAT_VERSION}; prepare the data again"
            )
        return cls(path, meta)

    def split(self, name: str) -> TokenSplit:
        splits = self.meta["splits"]
        if name not in splits:
            raise FewshotError(f"{self.path} has no split {name!r}; it has: {', '.join(splits)}")
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        return TokenSplit(name, [self._map(shard, dtype) for shard in splits[name]["shards"]], dtype)

    def loss_mask(self, name: str) -> TokenSplit | None:
        """Where a split's tokens are learned (1) or only read (0), for data that says
        (fewshot.data.prepare.add_loss_mask); None: every token is learned."""
        if "loss_mask" not in self.meta:
            return None
        split = self.meta["loss_mask"].get(name) if isinstance(self.meta["loss_mask"], dict) else None
        if not isinstance(split, dict) or split.get("tokens") != self.meta["splits"][name]["tokens"] \
                or not isinstance(split.get("shards"), list):
            raise FewshotError(f"{self.path / META}: the {name} split's loss mask does not match its tokens; prepare the data again")
        dtype = np.dtype("u1")
        return TokenSplit(f"{name} loss mask", [self._map(shard, dtype) for shard in split["shards"]], dtype)

    def _map(self, shard: dict, dtype: np.dtype) -> np.ndarray:
        file = self.path / shard["file"]
        expected = shard["tokens"] * dtype.itemsize
        size = file.stat().st_size if file.is_file() else None
        if size != expected:
            found = "missing" if size is None else f"{size} bytes"
            raise FewshotError(f"{file}: shard is {found}, expected {expected} bytes; prepare the data again")
        if expected == 0:
            return np.zeros(0, dtype=dtype)   # np.memmap cannot map an empty file
        return np.memmap(file, dtype=dtype, mode="r")

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.meta["tokenizer"], self.path)
