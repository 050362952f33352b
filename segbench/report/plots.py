"""Plots from report tables (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def miou_bars(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: mIoU of each model under each protocol."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * table["model"].nunique() + 2), 4))
    if not table.empty:
        pivot = table.pivot_table(index="model", columns="protocol", values="mIoU", sort=False)
        width = 0.8 / len(pivot.columns)
        x = np.arange(len(pivot.index))
        for i, protocol in enumerate(pivot.columns):
            bars = ax.bar(x + i * width - 0.4 + width / 2, pivot[protocol], width, label=protocol)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, pivot.index, rotation=20, ha="right")
        ax.legend(frameon=False)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Dataset-level mIoU")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
