"""Tables from records, as pandas DataFrames, and their renderings: Markdown, CSV and LaTeX
(booktabs, escaped, ready to paste).

A table's columns are flat names or (group, sub) pairs: the paper-shaped tables put
"ours", "paper" and "Δ" under each quantity the paper reports (see ``papers.py``).
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

DIFF = "Δ"  # the sub-column of measured minus paper
LONG_TABLE_ROWS = 40  # longer tables become LaTeX longtables (they may span pages)


@dataclass
class Table:
    name: str  # file stem of its CSV / LaTeX files, and its id in index.html
    title: str
    frame: pd.DataFrame
    caption: str = ""  # what the numbers are: protocol, units, source
    notes: list[str] = field(default_factory=list)  # footnotes: the paper's caveats, measurement conditions


# ------------------------------------------------------------------ records -> rows


def finished(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r.get("kind") == kind and r.get("status") == "ok"]


def protocol_of(record: dict) -> str:
    return record.get("protocol_name") or "single_scale"


def input_size(profile: dict) -> tuple[int, int]:
    return profile["input"]["height"], profile["input"]["width"]


def common_input_size(profiles: list[dict]) -> tuple[int, int] | None:
    """The input size most profile records share: cost is compared at one size."""
    sizes = Counter(input_size(p) for p in profiles)
    return sizes.most_common(1)[0][0] if sizes else None


def profile_of(profiles: list[dict], model: str, arch: str, size: tuple[int, int] | None) -> dict | None:
    """The latest profile record of (model, arch) at ``size`` (any size if None)."""
    matches = [p for p in profiles if p["model"] == model and p.get("arch") == arch
               and (size is None or input_size(p) == size)]
    return matches[-1] if matches else None


def dataset_split(record: dict) -> str:
    """How reports name an evaluation's data: "ade20k/val", "acdc/fog/val"."""
    return f"{record['dataset']}/{record['split']}" if record.get("split") else record["dataset"]


def evaluated_profiles(records: list[dict], dataset: str | None = None) -> list[dict]:
    """Profile records of the models evaluated (on ``dataset``, a ``dataset_split`` name, if given)."""
    evaluated = {(r["model"], r.get("arch")) for r in finished(records, "eval")
                 if dataset is None or dataset_split(r) == dataset}
    return [p for p in finished(records, "profile") if (p["model"], p.get("arch")) in evaluated]


def millions(value) -> float:
    return value / 1e6 if isinstance(value, (int, float)) else math.nan


def giga(value) -> float:
    return value / 1e9 if isinstance(value, (int, float)) else math.nan


def number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def accuracy_table(records: list[dict]) -> pd.DataFrame:
    """One row per finished evaluation: accuracy, its 95 % interval, per-image scores and the
    throughput of the whole test-time protocol."""
    rows = []
    for r in finished(records, "eval"):
        m = r["metrics"]
        ci, per_image = m.get("mIoU_ci") or {}, m.get("per_image") or {}
        rows.append({"model": r["model"], "arch": r.get("arch"), "dataset": dataset_split(r), "protocol": protocol_of(r),
                     "mIoU": number(m.get("mIoU")), "CI low": number(ci.get("low")), "CI high": number(ci.get("high")),
                     "mAcc": number(m.get("mAcc")), "aAcc": number(m.get("aAcc")),
                     "per-image mIoU": number(per_image.get("mIoU_mean")),
                     "worst 10 %": number(per_image.get("mIoU_worst10")),
                     "eval images/s": number((r.get("timings") or {}).get("images_per_second"))})
    columns = ["model", "arch", "dataset", "protocol", "mIoU", "CI low", "CI high", "mAcc", "aAcc", "per-image mIoU",
               "worst 10 %", "eval images/s"]
    return pd.DataFrame(rows, columns=columns).dropna(axis=1, how="all")  # no CI recorded: no empty columns


def accuracy_cost_table(records: list[dict]) -> pd.DataFrame:
    """Each evaluation's mIoU beside its model's cost: the profile record at the input size most
    profiles of the models evaluated on that dataset share (else the model's latest)."""
    rows = []
    for r in finished(records, "eval"):
        profiles = evaluated_profiles(records, dataset_split(r))
        profile = (profile_of(profiles, r["model"], r.get("arch"), common_input_size(profiles))
                   or profile_of(profiles, r["model"], r.get("arch"), None))
        if profile is None:
            continue
        cost = profile["metrics"]
        rows.append({"model": r["model"], "dataset": dataset_split(r), "protocol": protocol_of(r),
                     "mIoU": number(r["metrics"].get("mIoU")), "profiled at": "{}×{}".format(*input_size(profile)),
                     "params (M)": millions(cost.get("params")), "GMACs": giga(cost.get("macs")),
                     "latency (ms)": number(cost.get("latency_ms")), "images/s": number(cost.get("images_per_second"))})
    return pd.DataFrame(rows)


def profile_table(records: list[dict]) -> pd.DataFrame:
    """One row per profile record: sizes, MACs (two counters), latency with its spread, memory."""
    rows = []
    for p in finished(records, "profile"):
        m, inp = p["metrics"], p["input"]
        latency = (p.get("profile") or {}).get("latency") or {}
        rows.append({"model": p["model"], "arch": p.get("arch"),
                     "input": f"{inp['height']}×{inp['width']}", "batch": inp.get("batch_size"),
                     "dtype": inp.get("dtype"), "device": latency.get("device") or (p.get("env") or {}).get("device"),
                     "params (M)": millions(m.get("params")), "encoder (M)": millions(m.get("params_encoder")),
                     "decoder (M)": millions(m.get("params_decoder")), "aux (M)": millions(m.get("params_aux")),
                     "GMACs": giga(m.get("macs")), "GMACs (fvcore)": giga(m.get("macs_fvcore")),
                     "latency (ms)": number(m.get("latency_ms")), "p10 (ms)": number(m.get("latency_ms_p10")),
                     "p90 (ms)": number(m.get("latency_ms_p90")), "images/s": number(m.get("images_per_second")),
                     "pipeline images/s": number(m.get("pipeline_images_per_second")),
                     "peak memory (MB)": number(m.get("peak_memory_mb"))})
    columns = ["model", "arch", "input", "batch", "dtype", "device", "params (M)", "encoder (M)", "decoder (M)",
               "aux (M)", "GMACs", "GMACs (fvcore)", "latency (ms)", "p10 (ms)", "p90 (ms)", "images/s",
               "pipeline images/s", "peak memory (MB)"]
    return pd.DataFrame(rows, columns=columns).dropna(axis=1, how="all")


def size_table(records: list[dict]) -> pd.DataFrame:
    """mIoU over small / medium / large objects, with the number of segments in each bucket."""
    rows = []
    for r in finished(records, "eval"):
        size = r["metrics"].get("size")
        if not size:
            continue
        row = {"model": r["model"], "dataset": dataset_split(r), "protocol": protocol_of(r)}
        for bucket, b in size.items():
            row[f"{bucket} mIoU"] = number(b.get("mIoU"))
        for bucket, b in size.items():
            row[f"{bucket} segments"] = b.get("segments")
        row["mIoU (all)"] = number(r["metrics"].get("mIoU"))
        rows.append(row)
    return pd.DataFrame(rows)


def size_buckets_text(records: list[dict]) -> str:
    """The bucket bounds of the first record with a size breakdown, e.g. "small < 1024 px"."""
    for r in finished(records, "eval"):
        size = r["metrics"].get("size")
        if size:
            return ", ".join(f"{name} {b['min_area']}–{b['max_area']} px" if b.get("max_area")
                             else f"{name} ≥ {b['min_area']} px" for name, b in size.items())
    return ""


def per_class_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """dataset -> IoU of each class (rows) for each evaluation (columns "model (protocol)")."""
    tables: dict[str, dict[str, dict]] = {}
    for r in finished(records, "eval"):
        ious = r["metrics"].get("IoU")
        if ious:
            tables.setdefault(dataset_split(r), {})[f"{r['model']} ({protocol_of(r)})"] = ious
    out = {}
    for dataset, columns in tables.items():
        frame = pd.DataFrame({name: {c: number(v) for c, v in ious.items()} for name, ious in columns.items()})
        frame.index.name = "class"
        out[dataset] = frame.reset_index()
    return out


def training_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in finished(records, "train"):
        recipe, m, t = r.get("recipe") or {}, r.get("metrics") or {}, r.get("timings") or {}
        rows.append({"model": r["model"], "arch": r.get("arch"), "dataset": r.get("dataset"),
                     "recipe": recipe.get("name"), "iterations": recipe.get("iters"),
                     "batch": recipe.get("batch_size"), "first loss": number(m.get("first_loss")),
                     "final loss": number(m.get("final_loss")), "seconds": number(t.get("seconds"))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ rendering


def flat_names(frame: pd.DataFrame) -> list[str]:
    """Column names as one string each: ("mIoU (SS)", "paper") -> "mIoU (SS) paper"."""
    if isinstance(frame.columns, pd.MultiIndex):
        return [" ".join(part for part in column if part) for column in frame.columns]
    return [str(c) for c in frame.columns]


def header_groups(frame: pd.DataFrame) -> list[tuple[str, int]] | None:
    """The upper header row of a two-level table as (label, span) runs; None if flat."""
    if not isinstance(frame.columns, pd.MultiIndex):
        return None
    groups: list[tuple[str, int]] = []
    for group, _ in frame.columns:
        if groups and groups[-1][0] == group and group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    return groups


def sub_names(frame: pd.DataFrame) -> list[str]:
    """The lower header row: the sub-column, or the group itself for single columns."""
    if not isinstance(frame.columns, pd.MultiIndex):
        return [str(c) for c in frame.columns]
    spans = dict(header_groups(frame))
    return [sub if sub or spans.get(group, 1) > 1 else group for group, sub in frame.columns]


def is_diff(column) -> bool:
    return isinstance(column, tuple) and column[-1] == DIFF


def numeric(frame: pd.DataFrame, column) -> bool:
    return pd.api.types.is_numeric_dtype(frame[column])


def cell(value, signed: bool = False) -> str:
    """A number as printed in every format: two decimals, a dash when missing."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if signed:
            return f"{value:+.2f}" if round(value, 2) != 0 else "±0.00"  # no "-0.00" from rounding noise
        return f"{value:.2f}"
    return str(value)


def formatted_rows(frame: pd.DataFrame) -> list[list[str]]:
    diffs = [is_diff(c) for c in frame.columns]
    return [[cell(v, d) for v, d in zip(row, diffs)] for row in frame.itertuples(index=False)]


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no finished evaluations_"
    header = "| " + " | ".join(flat_names(table)) + " |"
    rule = "|" + "|".join("---:" if numeric(table, c) else "---" for c in table.columns) + "|"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in formatted_rows(table)]
    return "\n".join([header, rule, *body])


def to_csv(table: pd.DataFrame, path) -> None:
    """Full-precision values, one header row (two-level names joined)."""
    flat = table.copy()
    flat.columns = flat_names(table)
    flat.to_csv(path, index=False)


# ------------------------------------------------------------------ LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_LATEX_UNICODE = {"Δ": r"$\Delta$", "—": "---", "–": "--", "−": "$-$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
                  "±": r"$\pm$", "µ": r"$\mu$", "°": r"$^\circ$", "†": r"$\dagger$", "→": r"$\rightarrow$"}


def latex_escape(text) -> str:
    """Any string as LaTeX text (pdflatex, no extra packages): specials escaped, the few
    symbols reports use turned into math, other non-ASCII letters reduced to ASCII."""
    out = []
    for char in str(text):
        if char in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[char])
        elif char in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[char])
        elif ord(char) < 128:
            out.append(char)
        else:
            out.append(unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode() or "?")
    return "".join(out)


def to_latex(table: Table, label_prefix: str = "tab:segbench-") -> str:
    """A booktabs table (a longtable past ``LONG_TABLE_ROWS`` rows) with caption, label and notes."""
    frame = table.frame
    align = "".join("r" if numeric(frame, c) else "l" for c in frame.columns)
    header = []
    groups = header_groups(frame)
    if groups and any(span > 1 for _, span in groups):
        cells, rules, start = [], [], 1
        for label, span in groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}" if span > 1 else "")
            if span > 1:
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        header += [" & ".join(cells) + r" \\", " ".join(rules)]
    header.append(" & ".join(latex_escape(n) for n in sub_names(frame)) + r" \\")
    body = [" & ".join(latex_escape(v) for v in row) + r" \\" for row in formatted_rows(frame)]
    caption = latex_escape(table.title + (f". {table.caption}" if table.caption else ""))
    label = label_prefix + table.name.replace("_", "-")
    notes = [r"\par\smallskip{\footnotesize " + latex_escape(n) + "}" for n in table.notes]
    if len(frame) > LONG_TABLE_ROWS:
        lines = [rf"\begin{{longtable}}{{{align}}}", rf"\caption{{{caption}}}\label{{{label}}} \\", r"\toprule",
                 *header, r"\midrule", r"\endhead", r"\bottomrule", r"\endfoot", *body, r"\end{longtable}",
                 *notes]
        return "\n".join(lines) + "\n"
    tabular = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", *header, r"\midrule", *body, r"\bottomrule",
               r"\end{tabular}"]
    # shrunk to the line width when wider, never enlarged (graphicx's \width is the natural width)
    tabular = [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]
    lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}", *tabular,
             *notes, r"\end{table}"]
    return "\n".join(lines) + "\n"


LATEX_PREAMBLE = r"""\documentclass{article}
\usepackage[a4paper,landscape,margin=1.8cm]{geometry}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage{longtable}
\usepackage{graphicx}
"""
