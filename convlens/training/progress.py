"""What training prints: a live bar on a terminal, one summary line per epoch otherwise."""

from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from convlens.runs.folder import score_column


class Progress:
    """Training's console output."""

    def __init__(self, live: bool | None = None, enabled: bool = True) -> None:
        # enabled=False (torchrun ranks other than 0): print nothing
        self.console = Console(highlight=False, soft_wrap=True, quiet=not enabled)
        self.live = sys.stdout.isatty() if live is None else live
        self.bar: RichProgress | None = None
        self.task = None

    def note(self, text: str) -> None:
        self.console.print(f"[dim]note:[/dim] {escape(text)}")

    def start(self, cfg, ds, run_dir, model: torch.nn.Module, device, precision: str) -> None:
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        h, w = ds.image_size
        test = len(ds.test) if ds.test is not None else 0
        self.console.print(
            f"train {cfg.model} ({params:,} params) on {ds.name}: {len(ds.train)} train / "
            f"{len(ds.val)} val / {test} test images, {ds.channels}x{h}x{w}, "
            f"{ds.num_classes} classes; {device.type}, {precision}; run {run_dir}",
            markup=False,
        )

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        self.bar = RichProgress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps, loss=float("nan"))

    def step(self, loss: float | None) -> None:
        """One step done; `loss` is None where reading it back would stall the GPU."""
        if self.bar is not None:
            fields = {} if loss is None else {"loss": loss}
            self.bar.update(self.task, advance=1, **fields)

    def epoch_end(self, row: dict, best: bool) -> None:
        self.close()
        score = score_column(row)
        self.console.print(
            f"epoch {row['epoch']:>3}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  {score} {row[score]:.4f}  "
            f"lr {row['lr']:.4g}  {row['seconds']:.1f}s{'  *' if best else ''}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def final(self, summary: str, run_dir) -> None:
        self.console.print(f"{summary}; results in {run_dir}", markup=False)
