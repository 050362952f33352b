"""The robustness part of a report, from corruption-sweep records: a table in SegFormer
Table 5's shape (with the paper's numbers beside ours where it reports the model), the
aggregates (per group, mPC, rPC, CD), mIoU-vs-severity curves per group, a models x
corruptions heatmap, and one scene under every corruption at severity 3."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from segbench.report.document import Figure, Section  # noqa: E402
from segbench.report.plots import save_figure  # noqa: E402
from segbench.report.tables import Table, finished, number  # noqa: E402
from segbench.robustness.corruptions import CORRUPTION_GROUPS, GROUP_OF, CorruptionError  # noqa: E402
from segbench.robustness.scores import MIN_REFERENCE_DROP  # noqa: E402
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


# the added metrics a corruption cell's record can carry: table row name -> reader of its metrics
CELL_METRICS = {"mBIoU": lambda m: (m.get("boundary") or {}).get("mBIoU"),
                "ECE": lambda m: (m.get("calibration") or {}).get("ECE")}


def boundary_calibration(sweep: Sweep, records: list[dict]) -> pd.DataFrame:
    """Rows: model x (mBIoU, ECE) where its cells carry them; columns: Table 5's, each the mean
    over the severities swept (missing where a severity has no value)."""
    values: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    for r in finished(records, "corruption"):
        if r["sweep"]["key"] == sweep.key:
            for metric, read in CELL_METRICS.items():
                value = number(read(r["metrics"]))
                if not math.isnan(value):
                    values.setdefault((r["model"], metric), {})[r["corruption"], r["severity"]] = value
    rows = []
    for model in sweep.models:
        for metric in CELL_METRICS:
            cells = values.get((model, metric))
            if cells:
                rows.append({"model": model, "metric": metric, "Clean": cells.get((CLEAN, 0), math.nan),
                             **{column(c): sum(cells.get((c, s), math.nan) for s in ss) / len(ss)
                                for c, ss in sweep.grid.items()}})
    return pd.DataFrame(rows, columns=["model", "metric", "Clean", *(column(c) for c in sweep.grid)])


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
    return save_figure(fig, path, dpi=120)


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
    return save_figure(fig, path, dpi=120)


def grid_images(sweep: Sweep) -> list[tuple[str, Path]]:
    """Clean, then every corruption at severity 3 (or its closest severity in the sweep)."""
    images = [("clean", Path(sweep.previews[CLEAN, 0]))] if (CLEAN, 0) in sweep.previews else []
    for corruption, severities in sweep.grid.items():
        severity = min(severities, key=lambda s: abs(s - GRID_SEVERITY))
        if (corruption, severity) in sweep.previews:
            images.append((f"{corruption} {severity}", Path(sweep.previews[corruption, severity])))
    return images


def heatmap_plot(sweep: Sweep, scores: dict[str, dict], path: Path) -> Path:
    """Models x corruptions: each cell's mIoU averaged over its severities (Table 5's cells), clean first."""
    columns = [CLEAN, *sweep.grid]
    values = [[s["clean"], *(s["corruption"][c] for c in sweep.grid)] for s in scores.values()]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(columns), 1.2 + 0.45 * len(values)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if value < (image.norm.vmin + image.norm.vmax) / 2 else "black")
    ax.set_xticks(range(len(columns)), [c.replace("_", " ") for c in columns], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(values)), list(scores), fontsize=8)
    fig.colorbar(image, ax=ax, label="mIoU (%)", fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sections(records: list[dict], results_dir: Path, out: Path) -> list[Section]:
    """One report section per corruption sweep in ``records``; writes its plots into ``out``."""
    sweeps = collect_sweeps(records, results_dir)
    found = []
    for sweep in sweeps:
        suffix = f"-{sweep.key[:8]}" if len(sweeps) > 1 else ""
        scores, problems = score_sweep(sweep)
        severities = sorted({s for ss in sweep.grid.values() for s in ss})
        text = (f"Corruptions of SegFormer Table 5 (imagecorruptions, after Kamann & Rother) at severities "
                f"{', '.join(map(str, severities))} (noise at most 3), on {sweep.images} images. A cell is the "
                "dataset-level mIoU (%) averaged over its severities. Group = mean of its corruptions; "
                "mPC = mean of the corruption cells; rPC = mPC / clean."
                + (f" CD = summed degradation (1 - mIoU) relative to {sweep.reference}'s (100 = as degraded); "
                   "relative CD subtracts each model's clean degradation." if sweep.reference else ""))
        section = Section(f"Robustness to corruptions: {sweep.dataset} ({sweep.split}), {sweep.protocol}", text,
                          [Table(f"robustness{suffix}", "Corruption cells (SegFormer Table 5's shape)",
                                 table5(sweep, scores), "mIoU (%); paper rows where the paper reports the model."),
                           Table(f"robustness_summary{suffix}", "Robustness aggregates", summary(sweep, scores),
                                 "Per group, mPC, rPC and CD, in %.")])
        cell_metrics = boundary_calibration(sweep, records)
        if not cell_metrics.empty:
            section.tables.append(Table(f"robustness_boundary_calibration{suffix}",
                                        "Boundary IoU and calibration under corruption", cell_metrics,
                                        "mBIoU and ECE (%) per cell, averaged over its severities like the mIoU "
                                        "table; missing where a severity's record has none."))
        unstable = sorted({c for s in scores.values() for c in s.get("relative_CD_unstable", ())})
        if unstable:
            section.text += (f" Relative CD is unstable where {sweep.reference} loses less than {MIN_REFERENCE_DROP:g} "
                             f"mIoU points (mean over the severities) against its clean mIoU: "
                             f"{', '.join(unstable)}; the relative mCD averages the other "
                             f"{len(sweep.grid) - len(unstable)} of {len(sweep.grid)} corruptions"
                             + (" (none left: not given)." if len(unstable) == len(sweep.grid) else "."))
        if problems:
            section.text += " Incomplete models (no scores, never a zero for a missing cell) are listed below."
            section.items = problems
        if scores:
            section.figures += [
                Figure(severity_plot(sweep, scores, out / f"robustness_curves{suffix}.png"),
                       "mIoU vs severity per corruption group", "Severity 0 = clean; one line per model."),
                Figure(heatmap_plot(sweep, scores, out / f"robustness_heatmap{suffix}.png"),
                       "mIoU under each corruption", "Averaged over the severities; clean first.")]
        images = grid_images(sweep)
        if images:
            section.figures.append(Figure(grid_plot(images, out / f"corruptions{suffix}.png"),
                                          "One scene under every corruption",
                                          f"The first image of the sweep at severity {GRID_SEVERITY} "
                                          "(or the closest severity swept)."))
        found.append(section)
    return found
