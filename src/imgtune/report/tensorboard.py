"""`train --tensorboard`: per-epoch scalars for TensorBoard, in RUN/tensorboard/.

One time line across both stages (the fine-tune epochs follow the head's), scalars grouped by stage:
head/loss, head/val_accuracy, ..., fine-tune/lr."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

SCALARS = ("loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "lr", "seconds")


class TensorBoardLog:
    def __init__(self, folder: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard.") from None
        self.writer = SummaryWriter(str(folder))

    def epoch(self, record: dict, step: int) -> None:
        for key in SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"{record['stage']}/{key}", record[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
