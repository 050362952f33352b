"""Plots from report tables (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a report figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Dataset-level mIoU")
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def tradeoff_plot(points: pd.DataFrame, x: str, xlabel: str, title: str, path: Path) -> Path:
    """mIoU against a cost (Segmenter Fig. 4, SegFormer Fig. 1): one point per model, one
    colour per family (the registry name's first word), names beside the points."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families = list(dict.fromkeys(str(a).split("_")[0] for a in points["arch"]))
    colours = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for family in families:
        part = points[points["arch"].astype(str).str.split("_").str[0] == family]
        ax.scatter(part[x], part["mIoU"], s=36, color=colours[family], label=family, zorder=3)
        for _, row in part.iterrows():
            ax.annotate(row["model"], (row[x], row["mIoU"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    values = points[x].to_numpy(float)
    if len(values) > 1 and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def size_bars(table: pd.DataFrame, path: Path) -> Path:
    """mIoU per object-size bucket, one group of bars per evaluation."""
    buckets = [c.removesuffix(" mIoU") for c in table.columns if c.endswith(" mIoU")]
    labels = [f"{m}\n({p})" for m, p in zip(table["model"], table["protocol"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4))
    width = 0.8 / max(len(buckets), 1)
    x = np.arange(len(labels))
    for i, bucket in enumerate(buckets):
        bars = ax.bar(x + i * width - 0.4 + width / 2, table[f"{bucket} mIoU"], width, label=bucket)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU by object size")
    ax.legend(frameon=False, title="objects")
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def overlay_grid(rows: list[dict], models: list[str], path: Path) -> Path:
    """One row per image: the image, its ground truth, then each model's prediction (class
    colours of the dataset; black = unlabelled). ``rows``: {name, image, label, predictions:
    {model: file}} with files readable by PIL."""
    columns = ["image", "ground truth", *models]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.9 * len(columns), 1.9 * len(rows) + 0.3),
                             squeeze=False)
    for r, row in enumerate(rows):
        files = [row["image"], row["label"], *(row["predictions"].get(m) for m in models)]
        for c, file in enumerate(files):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if file is not None:
                with Image.open(file) as image:
                    ax.imshow(image.convert("RGB"))
            else:
                ax.text(0.5, 0.5, "no preview", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r][0].set_ylabel(row["name"], fontsize=7)
    return save_figure(fig, path)
