"""Numbers reported in the papers, as reference data shown beside what segbench measures.

One YAML file per paper in this folder, in long form so any table can be rebuilt::

    paper: SegFormer (Xie et al., NeurIPS 2021)
    entries:
      - {table: 1a, model: segformer_b0, dataset: ade20k, metric: encoder_params_m, value: 3.4}

``model`` is a registry name (or a free label for methods segbench does not build, such
as "DLv3+ (R101)"); ``metric`` names what the number is (``params_m``, ``gflops``,
``miou_ss``, ``miou_ms``, ``fps``, ...); ``note`` says when a number counts something
other than what segbench measures. Never used in place of a measurement.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

COLUMNS = ("paper", "table", "model", "dataset", "protocol", "metric", "value", "note")


@lru_cache(maxsize=None)
def _entries() -> tuple[dict, ...]:
    rows = []
    for path in sorted(Path(__file__).parent.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for entry in data["entries"]:
            unknown = set(entry) - set(COLUMNS)
            if unknown:
                raise ValueError(f"{path}: unknown reference fields {sorted(unknown)}")
            rows.append({column: entry.get(column) for column in COLUMNS} | {"paper": data["paper"]})
    return tuple(rows)


def reference_frame():
    """All reference entries as a pandas DataFrame with the columns in ``COLUMNS``."""
    import pandas as pd

    return pd.DataFrame(list(_entries()), columns=list(COLUMNS))


def lookup(model: str, metric: str, dataset: str | None = None, table: str | None = None) -> float | None:
    """The paper's value for (model, metric[, dataset, table]), or None if it reports none."""
    for entry in _entries():
        if entry["model"] == model and entry["metric"] == metric \
                and (dataset is None or entry["dataset"] == dataset) and (table is None or entry["table"] == table):
            return entry["value"]
    return None
