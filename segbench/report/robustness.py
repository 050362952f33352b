"""The robustness part of a report, from corruption-sweep records: a table in SegFormer
Table 5's shape (with the paper's numbers beside ours where it reports the model), the
aggregates (per group, mPC, rPC, CD), mIoU-vs-severity curves per group, and one scene
under every corruption at severity 3."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from segbench.report.tables import to_markdown  # noqa: E402
from segbench.robustness.corruptions import CORRUPTION_GROUPS, GROUP_OF, CorruptionError  # noqa: E402
from segbench.robustness.sweep import CLEAN, Sweep, collect_sweeps  # noqa: E402

# SegFormer Table 5's column names.
SHORT_NAMES = {"motion_blur": "Motion", "defocus_blur": "Defoc", "glass_blur": "Glass", "gaussian_blur": "Gauss",
               "gaussian_noise": "Gauss", "impulse_noise": "Impul", "shot_noise": "Shot", "speckle_noise": "Speck",
               "brightness": "Bright", "contrast": "Contr", "saturate": "Satur", "jpeg_compression": "JPEG",
               "snow": "Snow", "spatter": "Spatt", "fog": "Fog", "frost": "Frost"}
GRID_SEVERITY = 3


def column(corruption: str) -> str:
    return f"{GROUP_OF[corruption].capitalize()} {SHORT_NAMES[corruption]}"


def paper_table5(arch: str) -> dict[str, float]:
    """SegFormer Table 5's Cityscapes-C numbers for a registry name: {"clean" | corruption: mIoU}."""
    from segbench.reference import reference_frame

    frame = reference_frame()
    rows = frame[frame["paper"].str.startswith("SegFormer") & (frame["table"] == "5") & (frame["model"] == arch)
                 & (frame["dataset"] == "cityscapes") & (frame["metric"] == "miou")]
    return dict(zip(rows["protocol"], rows["value"]))


def score_sweep(sweep: Sweep) -> tuple[dict[str, dict], list[str]]:
    """model -> scores for the complete models; the others' errors (naming the missing cells)."""
    scores, problems = {}, []
    for model in sweep.models:
        try:
            scores[model] = sweep.scores(model)
        except CorruptionError as exc:
            problems.append(str(exc))
    return scores, problems


def table5(sweep: Sweep, scores: dict[str, dict]) -> pd.DataFrame:
    """Rows: our models (and the paper's numbers for them, on Cityscapes); columns: Table 5's."""
    columns = ["model", "source", "Clean", *(column(c) for c in sweep.grid)]
    rows = []
    for model, s in scores.items():
        rows.append({"model": model, "source": "measured", "Clean": s["clean"],
                     **{column(c): v for c, v in s["corruption"].items()}})
        paper = paper_table5(sweep.arch[model]) if sweep.dataset == "cityscapes" else {}
        if paper:
            rows.append({"model": model, "source": "paper (SegFormer Table 5)", "Clean": paper.get(CLEAN, math.nan),
                         **{column(c): paper.get(c, math.nan) for c in sweep.grid}})
    return pd.DataFrame(rows, columns=columns)


def summary(sweep: Sweep, scores: dict[str, dict]) -> pd.DataFrame:
    groups = [g for g in CORRUPTION_GROUPS if any(GROUP_OF[c] == g for c in sweep.grid)]
    columns = ["model", "Clean", *(g.capitalize() for g in groups), "mPC", "rPC (%)"]
    if sweep.reference is not None:
        columns += [f"mCD vs {sweep.reference}", "relative mCD"]
    rows = []
    for model, s in scores.items():
        row = {"model": model, "Clean": s["clean"], **{g.capitalize(): s["group"][g] for g in groups},
               "mPC": s["mPC"], "rPC (%)": s["rPC"]}
        if sweep.reference is not None:
            row |= {f"mCD vs {sweep.reference}": s["mCD"], "relative mCD": s["relative_mCD"]}
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def severity_plot(sweep: Sweep, scores: dict[str, dict], path: Path) -> Path:
    """mIoU vs severity (0 = clean), one panel per corruption group, one line per model."""
    groups = [g for g in CORRUPTION_GROUPS if any(GROUP_OF[c] == g for c in sweep.grid)]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True, squeeze=False)
    for ax, group in zip(axes[0], groups):
        for model, s in scores.items():
            curve = s["curves"][group]
            ax.plot(list(curve), list(curve.values()), marker="o", label=model)
        ax.set_title(group)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_xticks(range(0, max(s for ss in sweep.grid.values() for s in ss) + 1))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("mIoU (%)")
    axes[0][-1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grid_plot(images: list[tuple[str, Path]], path: Path, columns: int = 6) -> Path:
    """The given (title, image file) pairs in a grid."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image) in zip(axes.flat, images):
        with Image.open(image) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grid_images(sweep: Sweep) -> list[tuple[str, Path]]:
    """Clean, then every corruption at severity 3 (or its closest severity in the sweep)."""
    images = [("clean", Path(sweep.previews[CLEAN, 0]))] if (CLEAN, 0) in sweep.previews else []
    for corruption, severities in sweep.grid.items():
        severity = min(severities, key=lambda s: abs(s - GRID_SEVERITY))
        if (corruption, severity) in sweep.previews:
            images.append((f"{corruption} {severity}", Path(sweep.previews[corruption, severity])))
    return images


def render(records: list[dict], results_dir: Path, out: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines and files (CSV, PNG) of every corruption sweep in ``records``."""
    sweeps = collect_sweeps(records, results_dir)
    lines, written = [], []
    for sweep in sweeps:
        suffix = f"-{sweep.key[:8]}" if len(sweeps) > 1 else ""
        scores, problems = score_sweep(sweep)
        cells, aggregates = table5(sweep, scores), summary(sweep, scores)
        files = {"cells": out / f"robustness{suffix}.csv", "summary": out / f"robustness_summary{suffix}.csv",
                 "curves": out / f"robustness_curves{suffix}.png", "grid": out / f"corruptions{suffix}.png"}
        cells.to_csv(files["cells"], index=False)
        aggregates.to_csv(files["summary"], index=False)
        written += [files["cells"], files["summary"]]
        severities = sorted({s for ss in sweep.grid.values() for s in ss})
        lines += [f"## Robustness to corruptions: {sweep.dataset} ({sweep.split}), {sweep.protocol}", "",
                  f"Corruptions of SegFormer Table 5 (imagecorruptions, after Kamann & Rother) at severities "
                  f"{', '.join(map(str, severities))} (noise at most 3), on {sweep.images} images. A cell is the "
                  "dataset-level mIoU (%) averaged over its severities. Group = mean of its corruptions; "
                  "mPC = mean of the corruption cells; rPC = mPC / clean."
                  + (f" CD = summed degradation (1 - mIoU) relative to {sweep.reference}'s (100 = as degraded); "
                     "relative CD subtracts each model's clean degradation." if sweep.reference else ""), "",
                  to_markdown(cells), "", to_markdown(aggregates), ""]
        if problems:
            lines += ["Incomplete (no scores, never a zero for a missing cell):", "",
                      *(f"- {p}" for p in problems), ""]
        if scores:
            written.append(severity_plot(sweep, scores, files["curves"]))
            lines += [f"![mIoU vs severity per corruption group]({files['curves'].name})", ""]
        images = grid_images(sweep)
        if images:
            written.append(grid_plot(images, files["grid"]))
            lines += [f"![one scene under every corruption]({files['grid'].name})", ""]
    return lines, written
