"""Report pieces for boundary IoU, calibration and the synthetic-vs-real table, from records."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from report_records import eval_record, write

from segbench import report
from segbench.metrics.calibration import Calibration
from segbench.report.calibration import quality_table, shift_quality_table, shift_table

GRID = {"fog": (1, 2), "motion_blur": (1,)}


def calibration_metrics(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = Calibration(3)
    label = torch.randint(0, 3, (16, 16), generator=gen)
    state.update_probabilities((torch.randn(3, 16, 16, generator=gen) * 3).softmax(0), label)
    return {"probabilities": "softmax of the single view's logits", **state.compute()}


def with_new_metrics(record: dict, seed: int) -> dict:
    record["metrics"]["boundary"] = {"mBIoU": record["metrics"]["mIoU"] - 20, "BIoU": {},
                                     "mIoU_BIoU_min": record["metrics"]["mIoU"] - 21, "IoU_BIoU_min": {},
                                     "dilation_ratio": 0.02}
    record["metrics"]["calibration"] = calibration_metrics(seed)
    return record


def corruption_record(job_id: str, model: str, corruption: str, severity: int, miou: float) -> dict:
    return {"job_id": job_id, "kind": "corruption", "status": "ok", "model": model, "arch": "segformer_b0",
            "config": {"dataset": {"kind": "cityscapes"}, "eval": {"split": "val", "protocol": "single_scale"}},
            "sweep": {"key": "sweep1", "grid": GRID, "reference": None}, "corruption": corruption,
            "severity": severity, "metrics": {"mIoU": miou}, "timings": {"images": 2}, "preview": "none.png"}


def test_quality_table_and_reliability_diagram(tmp_path):
    records = [with_new_metrics(eval_record("a", "m1", "segformer_b0", 60.0), 0),
               with_new_metrics(eval_record("b", "m2", "segformer_b0", 50.0), 1),
               eval_record("c", "old", "segformer_b0", 40.0)]  # a record from before: no row
    table = quality_table(records)
    assert list(table["model"]) == ["m1", "m2"]
    row = table.iloc[0]
    assert row["mBIoU"] == 40.0 and row["min(IoU, BIoU)"] == 39.0
    assert row["ECE"] == pytest.approx(records[0]["metrics"]["calibration"]["ECE"])
    assert row["probabilities"].startswith("softmax")
    results = write(tmp_path / "results", records)
    written = {p.name for p in report.render(results, tmp_path / "out")}
    assert {"reliability.png", "boundary_calibration.csv"} <= written
    assert "Boundaries, calibration and failure detection" in (tmp_path / "out" / "report.md").read_text()


def test_shift_table_puts_synthetic_and_real_drops_side_by_side():
    records = [eval_record("c1", "b0", "segformer_b0", 70.0, dataset="cityscapes"),
               eval_record("f1", "b0", "segformer_b0", 50.0, dataset="acdc/fog"),
               eval_record("n1", "b0", "segformer_b0", 30.0, dataset="acdc/night"),
               eval_record("ms", "b0", "segformer_b0", 99.0, dataset="acdc/night", protocol="multi_scale"),
               eval_record("x", "other", "segformer_b0", 10.0, dataset="ade20k")]
    cells = [("clean", 0, 70.0), ("fog", 1, 60.0), ("fog", 2, 40.0), ("motion_blur", 1, 56.0)]
    records += [corruption_record(f"k{i}", "b0", c, s, v) for i, (c, s, v) in enumerate(cells)]
    table = shift_table(records)
    assert len(table) == 1
    row = table.iloc[0]
    assert row[("clean", "mIoU")] == 70.0
    assert row[("Cityscapes-C", "mPC")] == pytest.approx(53.0)  # mean of the cells (fog 50, motion 56)
    assert row[("Cityscapes-C", "drop")] == pytest.approx(17.0)
    assert (row[("acdc/fog", "mIoU")], row[("acdc/fog", "drop")]) == (50.0, 20.0)
    assert (row[("acdc/night", "mIoU")], row[("acdc/night", "drop")]) == (30.0, 40.0)  # single scale only
    assert shift_table(records[:1]).empty  # no real-condition evaluation: no table
    assert np.isnan(shift_table(records[:3])  # no sweep: mPC missing, not invented
                    .iloc[0][("Cityscapes-C", "mPC")])


def test_shift_quality_table_averages_the_corruption_cells():
    records = [with_new_metrics(eval_record("c1", "b0", "segformer_b0", 70.0, dataset="cityscapes"), 0),
               with_new_metrics(eval_record("f1", "b0", "segformer_b0", 50.0, dataset="acdc/fog"), 1)]
    cells = [corruption_record(f"k{i}", "b0", c, s, v) for i, (c, s, v) in
             enumerate([("clean", 0, 70.0), ("fog", 1, 60.0), ("fog", 2, 40.0)])]
    for i, cell in enumerate(cells):
        cell["metrics"]["calibration"] = {"ECE": 10.0 * i, "AUROC": 80.0, "FPR95": 50.0}
    table = shift_quality_table(records + cells)
    assert list(table["condition"]) == ["clean", "Cityscapes-C (mean of 2 cells)", "acdc/fog"]
    corrupted = table.iloc[1]
    assert corrupted["ECE"] == 15.0 and corrupted["mIoU"] == 50.0  # the clean cell is not a corruption
    assert table.iloc[2]["mBIoU"] == 30.0
