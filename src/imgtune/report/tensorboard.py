"""`train --tensorboard`: per-epoch scalars for TensorBoard, in RUN/tensorboard/.

One time line across both stages (the fine-tune epochs follow the head's), scalars grouped by stage:
head/loss, head/val_accuracy, ..., fine-tune/lr."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import require

SCALARS = ("loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "lr", "seconds")


class TensorBoardLog:
    def __init__(self, folder: str | Path):
        require(("tensorboard",), packages="the tensorboard package", extra="tensorboard",
                feature="TensorBoard logging (tensorboard=True, --tensorboard)")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def epoch(self, record: dict, step: int) -> None:
        for key in SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"{record['stage']}/{key}", record[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    @classmethod
    @contextlib.contextmanager
    def maybe(cls, folder: str | Path, enabled: bool):
        """A log in `folder` while inside when `enabled`, else one whose `epoch` does nothing."""
        if not enabled:
            yield _Off()
            return
        log = cls(folder)
        try:
            yield log
        finally:
            log.close()


class _Off:
    def epoch(self, record: dict, step: int) -> None:
        pass
