"""The run folder: config.json, model.safetensors, metrics.json, history.jsonl, skipped.csv, split.csv
and checkpoints/. Weights are safetensors, settings JSON; nothing here unpickles anything."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..atomic import write_bytes_atomic, write_csv_atomic, write_json_atomic, write_text_atomic
from ..errors import RunFolderError

FORMAT = "imgtune-run"
FORMAT_VERSION = 1


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    weights = property(lambda self: self.path / "model.safetensors")
    metrics = property(lambda self: self.path / "metrics.json")
    history = property(lambda self: self.path / "history.jsonl")
    report = property(lambda self: self.path / "report.html")
    skipped = property(lambda self: self.path / "skipped.csv")
    split = property(lambda self: self.path / "split.csv")
    diagnosis = property(lambda self: self.path / "diagnosis.json")  # label errors, learning curves
    label_issues = property(lambda self: self.path / "label_issues.csv")
    corrections = property(lambda self: self.path / "corrections.csv")  # a person's decisions (imgtune review)
    audit = property(lambda self: self.path / "inspect.json")  # `inspect --run` writes it here by default
    checkpoints = property(lambda self: self.path / "checkpoints")

    @contextlib.contextmanager
    def locked(self):
        """Held while a process trains into this folder: a second one gets one clear line instead of
        mixing its classes and checkpoints with the first's. An advisory lock on `.lock` (flock), which
        the system releases when the process ends, however it ends; the file itself stays, harmless."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RunFolderError(f"{str(self.path)!r} is being trained into by {holder}: wait for it to "
                                     "end, or choose another --out.") from None
            f.seek(0)
            f.truncate()
            f.write(f"process {os.getpid()}\n")
            f.flush()
            try:
                yield self
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f, fcntl.LOCK_UN)

    def has_run(self) -> bool:
        """True once training has produced something worth keeping (a head, or a finished run)."""
        return self.config.exists() or (self.checkpoints / "head.safetensors").exists()

    # -- settings and results -------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.config, {"format": FORMAT, "format_version": FORMAT_VERSION, **config})

    def read_config(self) -> dict:
        if not self.path.is_dir():
            raise RunFolderError(f"{str(self.path)!r} is not a run folder: expected a folder written by "
                                 "`imgtune train --out RUN`.")
        if not self.config.is_file():
            raise RunFolderError(f"{str(self.path)!r} is not a finished run: config.json is missing "
                                 "(train it, or continue it with `imgtune train ... --resume`).")
        try:
            config = json.loads(self.config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RunFolderError(f"{str(self.config)!r} is not valid JSON ({e}).") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise RunFolderError(f"{str(self.config)!r} is not an imgtune run config (no \"format\": \"{FORMAT}\").")
        return config

    def read_split(self) -> list[dict]:
        """The rows of split.csv (path, label or labels, split): what each image was trained or judged as."""
        import csv

        try:
            with open(self.split, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except OSError:
            raise RunFolderError(f"{str(self.path)!r} holds no split.csv: not a run folder.") from None

    def write_metrics(self, metrics: dict, path: Path | None = None) -> None:
        """metrics.json (or `path`) without the Grad-CAM maps the report inlines: they are pictures, not
        figures, and would make the file megabytes."""
        write_json_atomic(path or self.metrics, without_pictures(metrics))

    def write_history(self, records: list[dict]) -> None:
        write_text_atomic(self.history, "".join(json.dumps(r) + "\n" for r in records))

    def read_history(self) -> list[dict]:
        """The epochs recorded so far; unreadable lines (a hand-edited file) are left out."""
        try:
            lines = self.history.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        records = []
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and {"stage", "epoch", "val_accuracy", "val_loss"} <= set(r):
                records.append(r)
        return records

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        write_csv_atomic(self.skipped, ["path", "reason"], skipped)

    # -- weights ------------------------------------------------------------------------------
    def save_weights(self, state: dict[str, torch.Tensor], classes: list[str]) -> None:
        """The classes go into the file's metadata: config.json's list is then checked against them."""
        save_tensors(self.weights, state, {"classes": list(classes)})

    def load_weights(self, classes: list[str]) -> dict[str, torch.Tensor]:
        """The weights, refused when any is not finite or when they were saved for other classes (or
        the same ones in another order) than config.json lists."""
        if not self.weights.is_file():
            raise RunFolderError(f"{str(self.weights)!r} is missing: the run folder is incomplete.")
        tensors, meta = load_tensors_and_meta(self.weights)
        if "classes" in meta and meta["classes"] != list(classes):
            raise RunFolderError(f"{str(self.config)!r} lists classes {classes}, but the weights were saved for "
                                 f"{meta['classes']} (in that order): the files do not belong together.")
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise RunFolderError(f"{str(self.weights)!r} holds non-finite values (NaN or infinity) in "
                                 f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; retrain, or restore it.")
        return tensors


def without_pictures(metrics: dict) -> dict:
    if not any("explain" in w for w in metrics.get("misclassified", [])):
        return metrics
    return {**metrics, "misclassified": [{k: v for k, v in w.items() if k != "explain"}
                                         for w in metrics["misclassified"]]}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"imgtune": json.dumps(meta)} if meta is not None else None
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_tensors_and_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the JSON metadata saved beside them; a file that is not intact safetensors is refused."""
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = (f.metadata() or {}).get("imgtune")
        return tensors, json.loads(meta) if meta else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunFolderError(f"{str(path)!r} is not a valid safetensors file ({e}); it may be truncated or "
                             "tampered with. Retrain, or restore it from a backup.") from None


def _numbered(base: Path) -> list[tuple[int, Path]]:
    """base, base-2, base-3, ... that exist, as (number, path); base itself is number 1."""
    found = [(1, base)] if base.exists() else []
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            tail = p.name[len(base.name) + 1:]
            if p.name.startswith(base.name + "-") and tail.isdigit() and int(tail) >= 2:
                found.append((int(tail), p))
    return sorted(found)


def next_run_folder(base: str | Path = "runs/train") -> Path:
    """The first of base, base-2, base-3, ... after the highest that exists (as Ultralytics names runs)."""
    base, found = Path(base), _numbered(Path(base))
    if not found:
        return base
    return base.with_name(f"{base.name}-{found[-1][0] + 1}")


def latest_run_folder(base: str | Path = "runs/train") -> Path | None:
    """The highest-numbered of base, base-2, ... that exists, or None."""
    found = _numbered(Path(base))
    return found[-1][1] if found else None
