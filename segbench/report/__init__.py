"""Reports: tables and plots rendered from records (never from anything else).

``render(results, out)`` writes into ``out``: report.md, report.tex (a complete LaTeX
document), index.html (self-contained: plots embedded, inline CSS, no scripts), and every
table as <name>.csv and <name>.tex, every plot as <name>.png.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from segbench.report import robustness
from segbench.report.calibration import quality_section, shift_section
from segbench.report.document import Figure, Section, latex_document, markdown, write_tables
from segbench.report.html import page
from segbench.report.papers import paper_tables
from segbench.report.plots import miou_bars, overlay_grid, size_bars, tradeoff_plot
from segbench.report.tables import (Table, accuracy_cost_table, accuracy_table, common_input_size,
                                    dataset_split, evaluated_profiles, finished, per_class_tables, profile_of, profile_table,
                                    protocol_of, size_buckets_text, size_table, training_table)
from segbench.results import now, scan_records


def render(results_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the report of the records under ``results_dir`` into ``out``; returns the files written."""
    results_dir, out = Path(results_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, skipped = scan_records(results_dir)
    sections = build(records, results_dir, out) + ([skipped_section(skipped)] if skipped else [])
    title = f"segbench report: {results_dir.name}"
    intro = summary(records, results_dir) + (f" {len(skipped)} record files could not be used and are listed "
                                             "under \"Skipped records\"." if skipped else "")
    written = write_tables(sections, out)
    files = {"report.md": markdown(title, intro, sections), "report.tex": latex_document(title, intro, sections),
             "index.html": page(title, intro, sections, f"Rendered by segbench on {now()} from {len(records)} records "
                                                        f"in {results_dir}.")}
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written + [f.path for s in sections for f in s.figures]


def summary(records: list[dict], results_dir: Path) -> str:
    kinds = Counter(r.get("kind") for r in records)
    failed = sum(r.get("status") != "ok" for r in records)
    suites = sorted({r.get("suite") for r in records if r.get("suite")})
    return (f"{len(records)} records from {results_dir} ("
            + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            + (f"; suites: {', '.join(suites)}" if suites else "") + (f"; {failed} failed" if failed else "")
            + "). Every number is read from the records; the papers' numbers (segbench/reference) are shown "
              "beside ours, never instead.")


def build(records: list[dict], results_dir: Path, out: Path) -> list[Section]:
    sections = [accuracy_section(records, out), paper_section(records), efficiency_section(records),
                size_section(records, out), quality_section(records, out), per_class_section(records),
                qualitative_section(records, results_dir, out), *robustness.sections(records, results_dir, out),
                shift_section(records), training_section(records), failed_section(records)]
    return [s for s in sections if s is not None]


def accuracy_section(records: list[dict], out: Path) -> Section | None:
    table = accuracy_table(records)
    if table.empty:
        return None
    text = ("Dataset-level mIoU, mAcc and aAcc (%) of each evaluation; CI = 95 % percentile-bootstrap interval of "
            "mIoU over images; per-image mIoU = mean over images of each image's mIoU (classes in its ground "
            "truth), worst 10 % = mean of the lowest decile; eval images/s = the whole test-time protocol.")
    section = Section("Accuracy and cost", text, [Table("accuracy", "Accuracy per evaluation", table)])
    cost = accuracy_cost_table(records)
    if not cost.empty:
        section.tables.append(Table("accuracy_cost", "Accuracy and cost", cost,
                                    "Params, GMACs (multiply-accumulates of one forward pass), latency and images/s "
                                    "(model forward) from the model's profile record at the input size given."))
    section.figures.append(Figure(miou_bars(table, out / "miou.png"), "Dataset-level mIoU",
                                  "Each model under each protocol."))
    section.figures += tradeoff_figures(records, out)
    return section


def tradeoff_figures(records: list[dict], out: Path) -> list[Figure]:
    """mIoU vs GMACs and vs images/s per dataset (single scale), as Segmenter Fig. 4 / SegFormer Fig. 1,
    with every model's cost at one input size: the one most of their profiles share."""
    figures = []
    datasets = list(dict.fromkeys(dataset_split(r) for r in finished(records, "eval")))
    for dataset in datasets:
        profiles = evaluated_profiles(records, dataset)
        size = common_input_size(profiles)
        points = []
        for r in finished(records, "eval"):
            profile = profile_of(profiles, r["model"], r.get("arch"), size)
            if dataset_split(r) == dataset and protocol_of(r) == "single_scale" and profile:
                m = profile["metrics"]
                points.append({"model": r["model"], "arch": r.get("arch"), "mIoU": r["metrics"]["mIoU"],
                               "GMACs": (m.get("macs") or float("nan")) / 1e9,
                               "images/s": m.get("images_per_second") or float("nan"),
                               "device": ((profile.get("profile") or {}).get("latency") or {}).get("device")
                               or (profile.get("env") or {}).get("device_name"),
                               "batch": profile["input"].get("batch_size")})
        if not points:
            continue
        frame = pd.DataFrame(points)
        suffix = f"_{dataset.replace('/', '_')}" if len(datasets) > 1 else ""
        where = f"{size[0]}×{size[1]}"
        devices = ", ".join(sorted({str(d) for d in frame["device"]}))
        batches = ", ".join(sorted({str(b) for b in frame["batch"]}))
        macs = frame.dropna(subset=["GMACs"])
        if not macs.empty:
            figures.append(Figure(tradeoff_plot(macs, "GMACs", f"GMACs per image at {where} (log scale if wide)",
                                                f"{dataset}: mIoU vs compute", out / f"miou_vs_macs{suffix}.png"),
                                  f"mIoU vs GMACs ({dataset})",
                                  f"Single-scale mIoU against the multiply-accumulates of one forward pass at "
                                  f"{where} (as SegFormer Fig. 1)."))
        fps = frame.dropna(subset=["images/s"])
        if not fps.empty:
            figures.append(Figure(tradeoff_plot(fps, "images/s", f"images/s (model forward, batch {batches}, "
                                                                 f"{devices})",
                                                f"{dataset}: mIoU vs speed", out / f"miou_vs_fps{suffix}.png"),
                                  f"mIoU vs images/s ({dataset})",
                                  f"Single-scale mIoU against model-forward throughput at {where} on {devices} "
                                  "(as Segmenter Fig. 4)."))
    return figures


def paper_section(records: list[dict]) -> Section | None:
    tables = paper_tables(records)
    if not tables:
        return None
    return Section("The papers' tables", "Each quantity a paper reports for a model we measured: ours (from the "
                                         "records), the paper's, and Δ = ours − paper. Notes give the paper's "
                                         "caveats and where our costs were measured.", tables)


def efficiency_section(records: list[dict]) -> Section | None:
    table = profile_table(records)
    if table.empty:
        return None
    notes = []
    for p in finished(records, "profile"):  # what the two MAC counts and the memory figure mean, per record
        details = p.get("profile") or {}
        skipped = ", ".join(f"{op} ({n})" for op, n in (details.get("fvcore_skipped_ops") or {}).items())
        memory = (details.get("memory") or {}).get("kind")
        if skipped or memory:
            notes.append(f"{p['model']} at {p['input']['height']}×{p['input']['width']}: "
                         + "; ".join(([f"fvcore skipped {skipped}"] if skipped else [])
                                     + ([f"peak memory = {memory.replace('_', ' ')}"] if memory else [])))
    return Section("Efficiency", "One row per profile record (model, input size, device): parameters (M; aux = "
                                 "auxiliary heads, not used at inference), GMACs of the inference forward (torch's "
                                 "FlopCounterMode; fvcore's count, which skips some operators, beside it), model-"
                                 "forward latency median with its 10th-90th percentile spread, throughput and "
                                 "peak memory.", [Table("efficiency", "Model cost", table, notes=notes)])


def size_section(records: list[dict], out: Path) -> Section | None:
    table = size_table(records)
    if table.empty:
        return None
    text = ("mIoU over the pixels of ground-truth objects of each size (segbench's protocol: instances from the "
            "dataset's instance maps or connected components of each class; area at label resolution; "
            f"{size_buckets_text(records)}). Segmenter Table 4 reports such a table without defining its protocol.")
    return Section("Object size", text, [Table("sizes", "mIoU by object size", table)],
                   [Figure(size_bars(table, out / "sizes.png"), "mIoU by object size", "One group per evaluation.")])


def per_class_section(records: list[dict]) -> Section | None:
    tables = [Table(f"per_class_{dataset.replace('/', '_')}", f"Per-class IoU, {dataset}", frame,
                    "IoU (%) of each class; — = the class is in neither the ground truth nor the predictions.")
              for dataset, frame in per_class_tables(records).items()]
    return Section("Per-class IoU", "", tables) if tables else None


def qualitative_section(records: list[dict], results_dir: Path, out: Path) -> Section | None:
    """Image, ground truth and each model's prediction, from evaluations saved with ``previews: N``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in finished(records, "eval"):
        if r.get("previews"):
            groups.setdefault((dataset_split(r), protocol_of(r)), []).append(r)
    figures = []
    for i, ((dataset, protocol), group) in enumerate(groups.items()):
        models = list(dict.fromkeys(r["model"] for r in group))
        rows = {}
        for r in group:
            for p in r["previews"]:
                files = {k: results_dir / p[k] for k in ("image", "label", "prediction")}
                if not all(f.is_file() for f in files.values()):
                    continue
                row = rows.setdefault(p["name"], {"name": p["name"], "image": files["image"], "label": files["label"],
                                                  "predictions": {}})
                row["predictions"][r["model"]] = files["prediction"]
        if rows:
            suffix = f"_{i}" if len(groups) > 1 else ""
            figures.append(Figure(overlay_grid(list(rows.values()), models, out / f"predictions{suffix}.png"),
                                  f"Predictions on {dataset} ({protocol})",
                                  "Image, ground truth (black = unlabelled) and each model's prediction, in the "
                                  "dataset's class colours; the first images of the split."))
    return Section("Qualitative results", "", figures=figures) if figures else None


def training_section(records: list[dict]) -> Section | None:
    table = training_table(records)
    if table.empty:
        return None
    return Section("Training", "Models trained by the suite: recipe, iterations, loss at the start and averaged "
                               "over the last 10 % of iterations, wall time.",
                   [Table("training", "Training runs", table)])


def skipped(results_dir: str | Path) -> list[str]:
    """One line per record file under ``results_dir`` that a report leaves out, and why."""
    return _problem_lines(scan_records(results_dir)[1])


def _problem_lines(problems: list[tuple[Path, str]]) -> list[str]:
    return [f"{path}: {why}" for path, why in problems]


def skipped_section(problems: list[tuple[Path, str]]) -> Section:
    return Section("Skipped records", "These files look like records but could not be used; nothing from them is "
                                      "in this report. Re-run their jobs (or delete the files).",
                   items=_problem_lines(problems))


def failed_section(records: list[dict]) -> Section | None:
    errors = [r for r in records if r.get("status") == "error"]
    if not errors:
        return None
    items = [f"{r['job_id']} {r.get('model')} ({r['kind']}): {r['error']['type']}: {r['error']['message']}"
             for r in errors]
    return Section("Failed jobs", "These jobs left an error record (a re-run of the suite retries them).",
                   items=items)
