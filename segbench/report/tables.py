"""Tables from records, as pandas DataFrames, and their Markdown rendering."""
from __future__ import annotations

import math

import pandas as pd


def accuracy_table(records: list[dict]) -> pd.DataFrame:
    """One row per finished evaluation: model, dataset, protocol, mIoU, mAcc, aAcc, images/s."""
    rows = []
    for r in records:
        if r.get("kind") != "eval" or r.get("status") != "ok":
            continue
        metrics = r["metrics"]
        rows.append({"model": r["model"], "arch": r["arch"], "dataset": r["dataset"],
                     "protocol": r["protocol_name"], "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"],
                     "aAcc": metrics["aAcc"], "images/s": r["timings"]["images_per_second"]})
    columns = ["model", "arch", "dataset", "protocol", "mIoU", "mAcc", "aAcc", "images/s"]
    return pd.DataFrame(rows, columns=columns)


def _cell(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no finished evaluations_"
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
