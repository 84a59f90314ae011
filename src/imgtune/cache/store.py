"""A folder of arrays keyed by strings, packed into shard files: the storage under both caches.

One shard per batch written (so an interrupted extraction keeps every batch it finished), each written
atomically. A shard is b"ITS1", the header length (uint32), a JSON header {"dtype", "shape", "keys"},
the rows, then the first 16 bytes of the SHA-256 of all that. A torn or altered shard fails the check
and its rows count as missing (they are recomputed); nothing is trusted that was not verified.

Packing rows keeps the cache near the size of its raw bytes: one file per row wasted most of a 4 KiB
disk block on each 5 KiB feature vector. `get_rows` reads single rows out of the shards (a shard is
verified, in chunks, the first time one of its rows is read), so that fine-tuning can read a batch at a
time in any order without holding the cache in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_json_atomic

MAGIC = b"ITS1"
SUFFIX = ".its"


class ShardStore:
    def __init__(self, folder: str | os.PathLike, info: dict, *, dtype: str = "<f4"):
        self.dir = Path(folder)
        self.info = info
        self.dtype = np.dtype(dtype)
        self._index: dict[str, tuple[Path, int]] | None = None
        self._body_at: dict[Path, int] = {}  # where each indexed shard's rows begin
        self._verified: set[Path] = set()  # shards whose checksum get_rows has checked

    # -- reading ---------------------------------------------------------------------------------
    def index(self) -> dict[str, tuple[Path, int]]:
        """key -> (shard, row), from the shards' headers (their contents are verified when read)."""
        if self._index is None:
            self._index, self._body_at = {}, {}
            for shard in sorted(self.dir.glob(f"*{SUFFIX}")):
                header = _read_header(shard)
                if header is not None:
                    keys, self._body_at[shard] = header
                    self._index.update((k, (shard, i)) for i, k in enumerate(keys))
        return self._index

    def refresh(self) -> None:
        """Forget the index (rebuilt from the shards' headers when next needed): to see shards other
        processes wrote, or to let its memory (a few hundred bytes a row) go."""
        self._index = None

    def __contains__(self, key: str) -> bool:
        return key in self.index()

    def get_many(self, keys: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The verified rows of `keys` that are stored with `shape`; missing or damaged ones are left out
        (and a damaged shard is removed, so its rows are written again)."""
        out = np.zeros((len(keys), *shape), dtype=self.dtype)
        found = self.read_into(keys, out)
        return {k: out[j] for j, k in enumerate(keys) if found[j]}

    def read_into(self, keys: list[str | None], out: np.ndarray) -> list[bool]:
        """The verified rows of `keys` into the rows of `out` (its row shape is theirs), a shard at a time
        (its bytes are let go once its rows are out); -> which were found. Missing, damaged (the shard is
        removed, so its rows are written again) and None keys leave their rows of `out` as they were."""
        found = [False] * len(keys)
        wanted: dict[Path, list[tuple[int, int]]] = {}
        for j, k in enumerate(keys):
            where = self.index().get(k) if k is not None else None
            if where:
                wanted.setdefault(where[0], []).append((j, where[1]))
        for shard, rows in wanted.items():
            data = self._read_shard(shard, out.shape[1:])
            if data is None:
                self._forget(shard)
                continue
            for j, i in rows:
                out[j] = data[i]
                found[j] = True
        return found

    def get_rows(self, keys: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, list[bool]]:
        """Rows of `keys` as one array [len(keys), *shape], read row by row from the shards (memory in
        proportion to `keys`, not to the store), and which of them were found. A shard is verified
        the first time a row of it is read; a damaged one is removed and its rows count as missing."""
        out = np.zeros((len(keys), *shape), dtype=self.dtype)
        row_bytes = out[0].nbytes if len(keys) else 0
        found = [False] * len(keys)
        wanted: dict[Path, list[tuple[int, int]]] = {}
        for j, k in enumerate(keys):
            where = self.index().get(k)
            if where:
                wanted.setdefault(where[0], []).append((j, where[1]))
        for shard, rows in wanted.items():
            if shard not in self._verified:
                if not _verify(shard, self._body_at[shard], row_bytes, self.dtype):
                    self._forget(shard)
                    continue
                self._verified.add(shard)
            try:
                with open(shard, "rb") as f:
                    for j, i in sorted(rows, key=lambda r: r[1]):
                        f.seek(self._body_at[shard] + i * row_bytes)
                        out[j] = np.frombuffer(f.read(row_bytes), dtype=self.dtype).reshape(shape)
                        found[j] = True
            except (OSError, ValueError):  # removed or cut short since it was verified
                self._forget(shard)
                for j, _ in rows:
                    found[j] = False
        return out, found

    def _read_shard(self, shard: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            blob = shard.read_bytes()
        except OSError:
            return None
        body, check = blob[:-16], blob[-16:]
        if len(blob) < 24 or body[:4] != MAGIC or hashlib.sha256(body).digest()[:16] != check:
            return None
        n = int.from_bytes(body[4:8], "little")
        try:
            header = json.loads(body[8:8 + n])
            data = np.frombuffer(body, dtype=np.dtype(header["dtype"]), offset=8 + n)
            return data.reshape(len(header["keys"]), *shape)
        except (ValueError, KeyError, TypeError):
            return None  # another shape or dtype than this store holds: not ours to use

    def _forget(self, shard: Path) -> None:
        self._index = {k: v for k, v in self.index().items() if v[0] != shard}
        self._verified.discard(shard)
        shard.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------------
    def put_many(self, keys: list[str], rows: np.ndarray) -> None:
        """Write one shard holding `rows` (first axis matches `keys`)."""
        if not len(keys):
            return
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        header = json.dumps({"dtype": self.dtype.str, "shape": list(rows.shape[1:]), "keys": list(keys)}).encode()
        body = MAGIC + len(header).to_bytes(4, "little") + header + rows.tobytes()
        if not (self.dir / "key.json").exists():
            write_json_atomic(self.dir / "key.json", self.info)
        shard = self.dir / f"{uuid.uuid4().hex}{SUFFIX}"
        # A cache can skip fsync: a shard torn by a power cut fails its checksum and is recomputed.
        write_bytes_atomic(shard, body + hashlib.sha256(body).digest()[:16], durable=False)
        index = self.index()
        index.update((k, (shard, i)) for i, k in enumerate(keys))
        self._body_at[shard] = 8 + len(header)

    def disk_bytes(self) -> int:
        """Bytes the shards occupy on disk (whole blocks), for the cache-size benchmark."""
        return sum(os.stat(p).st_blocks * 512 for p in self.dir.glob(f"*{SUFFIX}"))


def _read_header(shard: Path) -> tuple[list[str], int] | None:
    """(the shard's keys, the offset of its first row), or None when it is not a shard."""
    try:
        with open(shard, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[:4] != MAGIC:
                return None
            n = int.from_bytes(head[4:8], "little")
            header = json.loads(f.read(n))
        keys = header["keys"]
        return (keys, 8 + n) if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _verify(shard: Path, body_at: int, row_bytes: int, dtype: np.dtype, chunk: int = 1 << 20) -> bool:
    """The shard's checksum holds and its rows are `row_bytes` each of `dtype`, read in chunks."""
    try:
        size = os.path.getsize(shard)
        with open(shard, "rb") as f:
            header = json.loads(f.read(body_at)[8:])
            if np.dtype(header["dtype"]) != dtype or size - 16 - body_at != len(header["keys"]) * row_bytes:
                return False
            f.seek(0)
            h, left = hashlib.sha256(), size - 16
            while left:
                block = f.read(min(chunk, left))
                if not block:
                    return False
                h.update(block)
                left -= len(block)
            return h.digest()[:16] == f.read(16)
    except (OSError, ValueError, KeyError, TypeError):
        return False
