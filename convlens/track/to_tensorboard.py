"""`--log tensorboard`: event files in RUN/tensorboard (`tensorboard --logdir runs`).

Per epoch every results.csv column (train_loss, val_loss, the validation score, lr, seconds);
after evaluation the run's figures (confusion matrix, curves, ...) as images and, in the
HParams tab, the settings beside every final metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convlens.config import to_dict
from convlens.track.scalars import scalars

FOLDER = "tensorboard"  # inside the run folder


class TensorBoardTracker:
    """One run's event files, through torch.utils.tensorboard."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.run_dir = cfg, run_dir
        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))
        self.step = 0  # the last epoch logged: the final metrics and figures are drawn there

    def epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, self.step)
        self.writer.flush()  # a live `tensorboard` sees each epoch as it ends

    def finish(self, metrics: dict) -> None:
        for png in sorted(self.run_dir.glob("*.png")):  # the figures evaluation drew
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image(png.stem, pixels, self.step, dataformats="HWC")
        split = metrics.get("split", "test")
        final = {f"{split}/{k}": v for k, v in scalars(metrics).items()}
        # run_name ".": the HParams entry goes into this run's folder, not a timestamped one
        self.writer.add_hparams(hparams(self.cfg), final, run_name=".", global_step=self.step)

    def close(self, status: str) -> None:
        self.writer.close()


def hparams(cfg: Any) -> dict[str, Any]:
    """The settings as the HParams plugin takes them: numbers, text and booleans only."""
    out: dict[str, Any] = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v if isinstance(v, int | float | str | bool) else str(v)
                        for k, v in value.items()})  # fmt: skip
        else:
            out[key] = "none" if value is None else value
    return out
