"""Report pieces for boundary quality, calibration and misclassification detection
(``metrics.boundary`` / ``metrics.calibration`` in the records), reliability diagrams,
and the "synthetic vs real conditions" table (Cityscapes-C beside ACDC / Dark Zurich)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from segbench.report.document import Figure, Section  # noqa: E402
from segbench.report.plots import save_figure  # noqa: E402
from segbench.report.tables import Table, dataset_split, finished, number, protocol_of  # noqa: E402
from segbench.robustness.corruptions import CorruptionError  # noqa: E402
from segbench.robustness.sweep import collect_sweeps  # noqa: E402

MAX_RELIABILITY_LINES = 8  # per diagram, so it stays readable


def quality_table(records: list[dict]) -> pd.DataFrame:
    """One row per evaluation with the boundary or calibration metrics."""
    rows = []
    for r in finished(records, "eval"):
        m = r["metrics"]
        boundary, calibration = m.get("boundary") or {}, m.get("calibration") or {}
        if not boundary and not calibration:
            continue
        rows.append({"model": r["model"], "dataset": dataset_split(r), "protocol": protocol_of(r),
                     "mIoU": number(m.get("mIoU")), "mBIoU": number(boundary.get("mBIoU")),
                     "min(IoU, BIoU)": number(boundary.get("mIoU_BIoU_min")),
                     "ECE": number(calibration.get("ECE")), "NLL": number(calibration.get("NLL")),
                     "Brier": number(calibration.get("Brier")), "AUROC": number(calibration.get("AUROC")),
                     "AUPR-Error": number(calibration.get("AUPR_error")), "FPR95": number(calibration.get("FPR95")),
                     "probabilities": calibration.get("probabilities")})
    columns = ["model", "dataset", "protocol", "mIoU", "mBIoU", "min(IoU, BIoU)", "ECE", "NLL", "Brier", "AUROC",
               "AUPR-Error", "FPR95", "probabilities"]
    return pd.DataFrame(rows, columns=columns).dropna(axis=1, how="all")


def reliability_plot(records: list[dict], title: str, path: Path) -> Path:
    """Accuracy against mean confidence per ECE bin, one line per evaluation; the diagonal is
    perfect calibration, and marker area follows the bin's share of pixels."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 100], [0, 100], color="0.6", lw=1, ls="--", label="calibrated")
    for r in records:
        rel = r["metrics"]["calibration"]["reliability"]
        total = sum(rel["pixels"]) or 1
        points = [(c, a, n / total) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["pixels"])
                  if c is not None]
        if not points:
            continue
        conf, acc, share = zip(*points)
        line, = ax.plot(conf, acc, lw=1.2, label=f"{r['model']} (ECE {r['metrics']['calibration']['ECE']:.1f})")
        ax.scatter(conf, acc, s=[8 + 200 * s for s in share], color=line.get_color(), zorder=3)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("mean confidence in bin (%)")
    ax.set_ylabel("accuracy in bin (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def quality_section(records: list[dict], out: Path) -> Section | None:
    table = quality_table(records)
    if table.empty:
        return None
    ratios = sorted({(r["metrics"].get("boundary") or {}).get("dilation_ratio") for r in finished(records, "eval")}
                    - {None})
    text = ("Boundary IoU (Cheng et al., CVPR 2021): per class, IoU of the ground-truth and predicted masks "
            "restricted to their pixels within d of the mask contour, d = "
            + (" / ".join(f"{100 * x:g} %" for x in ratios) or "2 %") + " of the image diagonal; mBIoU averages the "
            "classes, min(IoU, BIoU) averages each class's lower score. Calibration from the probabilities the "
            "protocol scored (column 'probabilities'): ECE over 15 equal-width confidence bins (%), NLL (nats) and "
            "Brier score per pixel. Misclassification detection by the maximum softmax probability: AUROC, "
            "AUPR with errors as positives, FPR of wrong pixels at 95 % TPR of correct ones (all %).")
    section = Section("Boundaries, calibration and failure detection", text,
                      [Table("boundary_calibration", "Boundary quality and calibration per evaluation", table)])
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in finished(records, "eval"):
        if (r["metrics"].get("calibration") or {}).get("reliability"):
            groups.setdefault((dataset_split(r), protocol_of(r)), []).append(r)
    for i, ((dataset, protocol), group) in enumerate(groups.items()):
        suffix = f"_{i}" if len(groups) > 1 else ""
        shown = group[:MAX_RELIABILITY_LINES]
        section.figures.append(Figure(reliability_plot(shown, f"{dataset}, {protocol}", out / f"reliability{suffix}.png"),
                                      f"Reliability diagram: {dataset} ({protocol})",
                                      "Accuracy against mean confidence in each of the 15 bins; dashed = perfectly "
                                      "calibrated; marker area = the bin's share of pixels"
                                      + (f"; the first {MAX_RELIABILITY_LINES} of {len(group)} evaluations"
                                         if len(group) > len(shown) else "") + "."))
    return section


# ------------------------------------------------------------------ synthetic vs real shift


def shift_table(records: list[dict], clean_dataset: str = "cityscapes/val",
                real_kinds: tuple[str, ...] = ("acdc", "dark_zurich")) -> pd.DataFrame:
    """Per model (single scale): mIoU on the clean split, Cityscapes-C mPC, and mIoU under each
    real adverse condition, each with its drop from clean (points of mIoU)."""
    evals = [r for r in finished(records, "eval") if protocol_of(r) == "single_scale"]
    real = sorted({dataset_split(r) for r in evals if dataset_split(r).split("/")[0] in real_kinds})
    if not real:
        return pd.DataFrame()
    clean = {r["model"]: r["metrics"]["mIoU"] for r in evals if dataset_split(r) == clean_dataset}
    kind, split = clean_dataset.split("/")
    mpc = {}
    for sweep in collect_sweeps(records):
        if sweep.dataset == kind and sweep.split == split and sweep.protocol == "single_scale":
            for model in sweep.models:
                try:
                    mpc[model] = sweep.scores(model)["mPC"]
                except CorruptionError:  # an incomplete sweep has no mPC (the robustness section lists it)
                    pass
                clean.setdefault(model, sweep.clean.get(model))
    by_model: dict[str, dict] = {}
    for r in evals:
        if dataset_split(r) in real:
            by_model.setdefault(r["model"], {})[dataset_split(r)] = r["metrics"]["mIoU"]
    rows = []
    for model in dict.fromkeys([*clean, *by_model]):
        base = number(clean.get(model))
        row = {("model", ""): model, ("clean", "mIoU"): base,
               ("Cityscapes-C", "mPC"): number(mpc.get(model)), ("Cityscapes-C", "drop"): base - number(mpc.get(model))}
        for dataset in real:
            value = number(by_model.get(model, {}).get(dataset))
            name = dataset.removesuffix(f"/{split}")
            row[(name, "mIoU")], row[(name, "drop")] = value, base - value
        if any(not math.isnan(v) for k, v in row.items() if k[1] == "mIoU" and k[0] != "clean"):
            rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def _quality_row(model: str, condition: str, metrics: list[dict]) -> dict:
    """Mean of each added metric over ``metrics`` (one record's, or every corruption cell's)."""
    def mean(get) -> float:
        values = [v for v in (number(get(m)) for m in metrics) if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    return {"model": model, "condition": condition, "mIoU": mean(lambda m: m.get("mIoU")),
            "mBIoU": mean(lambda m: (m.get("boundary") or {}).get("mBIoU")),
            "ECE": mean(lambda m: (m.get("calibration") or {}).get("ECE")),
            "AUROC": mean(lambda m: (m.get("calibration") or {}).get("AUROC")),
            "FPR95": mean(lambda m: (m.get("calibration") or {}).get("FPR95"))}


def shift_quality_table(records: list[dict], clean_dataset: str = "cityscapes/val",
                        real_kinds: tuple[str, ...] = ("acdc", "dark_zurich")) -> pd.DataFrame:
    """Per model and condition (clean, Cityscapes-C averaged over its cells, each real one):
    mIoU, mBIoU, ECE, AUROC and FPR95 (single scale): do boundaries and confidence hold up?"""
    evals = [r for r in finished(records, "eval") if protocol_of(r) == "single_scale"]
    kind, split = clean_dataset.split("/")
    cells: dict[str, list[dict]] = {}
    for r in finished(records, "corruption"):
        if (r["config"]["dataset"]["kind"], r["config"]["eval"]["split"], r["config"]["eval"]["protocol"]) == \
                (kind, split, "single_scale") and r.get("corruption") != "clean":
            cells.setdefault(r["model"], []).append(r["metrics"])
    rows = []
    for model in dict.fromkeys(r["model"] for r in evals):
        mine = [r for r in evals if r["model"] == model]
        real = sorted((r for r in mine if dataset_split(r).split("/")[0] in real_kinds), key=lambda r: dataset_split(r))
        if not real:
            continue
        rows += [_quality_row(model, "clean", [r["metrics"]]) for r in mine if dataset_split(r) == clean_dataset]
        if cells.get(model):
            rows.append(_quality_row(model, f"Cityscapes-C (mean of {len(cells[model])} cells)", cells[model]))
        rows += [_quality_row(model, dataset_split(r).removesuffix(f"/{split}"), [r["metrics"]]) for r in real]
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def shift_section(records: list[dict]) -> Section | None:
    table = shift_table(records)
    if table.empty:
        return None
    text = ("Single-scale mIoU (%) of each model on Cityscapes val (clean), its mean over the Cityscapes-C "
            "corruption cells (mPC), and on real adverse conditions (ACDC per condition, Dark Zurich night); "
            "drop = clean − that mIoU, in points. Synthetic corruptions and real conditions rank models "
            "differently where the drops disagree.")
    tables = [Table("shift", "Synthetic vs real conditions", table,
                    "ACDC and Dark Zurich: invalid regions ignored (see README); Cityscapes models at their "
                    "Cityscapes protocol.")]
    quality = shift_quality_table(records)
    if not quality.empty and len(quality.columns) > 3:
        tables.append(Table("shift_quality", "Boundaries and confidence under shift", quality,
                            "Single scale, in %: mIoU, mBIoU, ECE, and misclassification AUROC and FPR95 by "
                            "maximum softmax probability; Cityscapes-C rows average the corruption cells."))
    return Section("Synthetic vs real conditions", text, tables)
