"""Every file imgtune writes goes through here: a temporary file in the same folder, fsynced, then
renamed over the target, so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call `write(tmp_path)` to produce the content, then move it into place atomically. `durable=False`
    skips the fsyncs: still all-or-nothing for a killed process, but a power cut may leave an empty
    file, which only a self-checking cache entry may accept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.filename is None:  # a write or fsync that failed (disk full) names no file: name the target
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        _remove(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


def _new_temporary(path: Path) -> str:
    """An empty, new file beside `path`, created with the permissions open() would give it (0666 less
    the process's umask, applied by the system: nothing here reads or changes the umask)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 48 random bits taken: draw again
            continue


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomic(path, write, durable=durable)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it was read from
    write_bytes_atomic(path, text.encode("utf-8", errors="surrogateescape"))


def write_csv_atomic(path: str | os.PathLike, header, rows) -> None:
    """A CSV file (a header row, then `rows`), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def require_writable(*paths: str | os.PathLike) -> None:
    """Each file can be (re)written atomically: its folder exists or can be made and takes new files.
    Checked before a command's work, so that a read-only run folder fails first, not at the last write."""
    from .errors import RunFolderError

    for path in paths:
        folder = Path(path).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunFolderError(f"Cannot write {str(path)!r}: {str(existing or folder)!r} is not a folder that "
                                 "can be written to; make it writable or give another output.")
