"""Pieces of fewshot's progress bars that more than one stage uses: a rate in our units, and the bar over bytes."""

from __future__ import annotations

from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, divided by `scale` and followed by `unit` ("M tokens/s" is scale 1e6, unit "M tokens")."""

    def __init__(self, unit: str = "", scale: float = 1.0) -> None:
        super().__init__()
        self.unit, self.scale = unit, scale

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("")
        return Text(f"{speed / self.scale:,.1f}{' ' + self.unit if self.unit else ''}/s")


def byte_progress(enabled: bool) -> Progress:
    """A bar over bytes read: size done, MB/s and ETA (data preparation and curation)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not enabled)
