"""matplotlib set up for files only, and the one way a figure is saved: atomically, then closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402

from fewshot.files import atomic_write  # noqa: E402


def save_figure(figure, path: Path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path
