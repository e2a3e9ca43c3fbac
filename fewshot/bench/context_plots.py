"""`fewshot bench context`'s figures: one log-log panel per metric, a line per mixer with its
fitted exponent in the legend."""

from __future__ import annotations

from pathlib import Path

from fewshot.figures import plt, save_figure


def plot_metric(points, exponents: dict[str, dict[str, float | None]], key: str, label: str, unit: str, path: Path) -> Path:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab20").colors  # more mixers than tab10's ten colours; markers tell pairs apart
    for index, (mixer, fits) in enumerate(exponents.items()):
        mine = [(p.length, getattr(p, key)) for p in points if p.mixer == mixer and getattr(p, key)]
        if not mine:
            continue
        slope = fits[key]
        ax.plot(*zip(*mine), marker="os^vD"[index % 5], color=colours[(2 * index) % 20 + (index // 10) % 2],
                label=f"{mixer} (exponent {slope:.2f})" if slope is not None else mixer)
    ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel=f"{label} ({unit})", title=label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(figure, path)
