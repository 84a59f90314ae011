"""A folder of arrays keyed by strings, packed into shard files: the storage under both caches.

One shard per batch written (so an interrupted extraction keeps every batch it finished), each written
atomically. A shard is b"ITS1", the header length (uint32), a JSON header {"dtype", "shape", "keys"},
the rows, then the first 16 bytes of the SHA-256 of all that. A torn or altered shard fails the check
and its rows count as missing (they are recomputed); nothing is trusted that was not verified.

Packing rows keeps the cache near the size of its raw bytes: one file per row wasted most of a 4 KiB
disk block on each 5 KiB feature vector.
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

    # -- reading ---------------------------------------------------------------------------------
    def index(self) -> dict[str, tuple[Path, int]]:
        """key -> (shard, row), from the shards' headers (their contents are verified when read)."""
        if self._index is None:
            self._index = {}
            for shard in sorted(self.dir.glob(f"*{SUFFIX}")):
                keys = _read_keys(shard)
                if keys is not None:
                    self._index.update((k, (shard, i)) for i, k in enumerate(keys))
        return self._index

    def refresh(self) -> None:
        """Forget the index, so that shards written by other processes are seen."""
        self._index = None

    def __contains__(self, key: str) -> bool:
        return key in self.index()

    def get_many(self, keys: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The verified rows of `keys` that are stored with `shape`; missing or damaged ones are left out
        (and a damaged shard is removed, so its rows are written again)."""
        wanted: dict[Path, list[tuple[str, int]]] = {}
        for k in keys:
            where = self.index().get(k)
            if where:
                wanted.setdefault(where[0], []).append((k, where[1]))
        out: dict[str, np.ndarray] = {}
        for shard, rows in wanted.items():
            data = self._read_shard(shard, shape)
            if data is None:
                self._forget(shard)
                continue
            for k, i in rows:
                out[k] = data[i].copy()  # the shard's bytes are released once its rows are out
        return out

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

    def disk_bytes(self) -> int:
        """Bytes the shards occupy on disk (whole blocks), for the cache-size benchmark."""
        return sum(os.stat(p).st_blocks * 512 for p in self.dir.glob(f"*{SUFFIX}"))


def _read_keys(shard: Path) -> list[str] | None:
    try:
        with open(shard, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[:4] != MAGIC:
                return None
            header = json.loads(f.read(int.from_bytes(head[4:8], "little")))
        keys = header["keys"]
        return keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
