"""The robustness report: Table 5's shape, the paper's numbers beside ours (never instead),
the grid at severity 3."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import segbench.reference
from segbench.report import robustness
from segbench.robustness.sweep import Sweep

GRID = {"motion_blur": (1, 3), "gaussian_noise": (1, 2), "fog": (3,)}


def sweep(dataset: str) -> Sweep:
    s = Sweep("k", dataset, "val", "single_scale", GRID, None, arch={"ours": "segformer_b5"})
    s.clean["ours"] = 80.0
    s.cells["ours"] = {("motion_blur", 1): 70.0, ("motion_blur", 3): 60.0, ("gaussian_noise", 1): 50.0,
                       ("gaussian_noise", 2): 40.0, ("fog", 3): 30.0}
    return s


def fake_reference(monkeypatch):
    rows = [{"paper": "SegFormer (Xie et al., NeurIPS 2021)", "table": "5", "model": "segformer_b5",
             "dataset": "cityscapes", "protocol": protocol, "metric": "miou", "value": value, "note": None}
            for protocol, value in [("clean", 82.4), ("motion_blur", 69.1), ("fog", 78.5)]]
    monkeypatch.setattr(segbench.reference, "reference_frame", lambda: pd.DataFrame(rows))


def test_table5_shows_the_papers_numbers_beside_ours_on_cityscapes_only(monkeypatch):
    fake_reference(monkeypatch)
    s = sweep("cityscapes")
    scores, problems = robustness.score_sweep(s)
    table = robustness.table5(s, scores)
    assert problems == [] and list(table.columns) == ["model", "source", "Clean", "Blur Motion", "Noise Gauss",
                                                       "Weather Fog"]
    ours, paper = table.iloc[0], table.iloc[1]
    assert (ours["source"], ours["Clean"], ours["Blur Motion"], ours["Noise Gauss"]) == ("measured", 80.0, 65.0, 45.0)
    assert paper["source"].startswith("paper") and (paper["Clean"], paper["Blur Motion"]) == (82.4, 69.1)
    assert math.isnan(paper["Noise Gauss"])  # absent from the reference: shown as missing, not filled
    assert len(robustness.table5(sweep("synthetic"), scores)) == 1  # no Cityscapes-C numbers beside synthetic


def test_grid_takes_severity_3_or_the_closest(tmp_path):
    s = sweep("synthetic")
    for key in [("clean", 0), ("motion_blur", 1), ("motion_blur", 3), ("gaussian_noise", 1), ("gaussian_noise", 2),
                ("fog", 3)]:
        path = tmp_path / f"{key[0]}-{key[1]}.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
        s.previews[key] = str(path)
    titles = [title for title, _ in robustness.grid_images(s)]
    assert titles == ["clean", "motion_blur 3", "gaussian_noise 2", "fog 3"]
    assert robustness.grid_plot(robustness.grid_images(s), tmp_path / "grid.png").is_file()


def test_the_summarys_relative_mcd_leaves_the_unstable_corruptions_out(tmp_path, monkeypatch):
    s = Sweep("k", "synthetic", "val", "single_scale", {"motion_blur": (1,), "fog": (1,)}, "ref",
              arch={"ours": "segformer_micro", "ref": "fcn_micro"})
    s.clean |= {"ours": 40.0, "ref": 50.0}
    s.cells["ours"] = {("motion_blur", 1): 30.0, ("fog", 1): 30.0}
    s.cells["ref"] = {("motion_blur", 1): 49.5, ("fog", 1): 30.0}  # loses 0.5 points to motion blur, 20 to fog
    scores, problems = robustness.score_sweep(s)
    summary = robustness.summary(s, scores)
    ours = summary[summary["model"] == "ours"].iloc[0]
    # fog alone: (0.7 - 0.6) / (0.7 - 0.5); with motion blur it would average in (0.7 - 0.6) / 0.005 = 2000 %
    assert problems == [] and ours["relative mCD"] == pytest.approx(50.0)
    assert scores["ours"]["relative_CD_unstable"] == ["motion_blur"]
    monkeypatch.setattr(robustness, "collect_sweeps", lambda records, results_dir: [s])
    (section,) = robustness.sections([], tmp_path, tmp_path)
    assert ("Relative CD is unstable where ref loses less than 2.5 mIoU points (mean over the severities) against "
            "its clean mIoU: motion_blur; the relative mCD averages the other 1 of 2 corruptions.") in section.text


def test_the_section_shows_mbiou_and_ece_per_cell_where_records_have_them(tmp_path):
    from report_records import corruption_record

    grid = {"fog": [1, 3], "motion_blur": [1]}

    def cell(i, model, corruption, severity, biou=None, ece=None):
        extra = {**({"boundary": {"mBIoU": biou}} if biou is not None else {}),
                 **({"calibration": {"ECE": ece}} if ece is not None else {})}
        return corruption_record(f"j{i}", model, corruption, severity, 50.0, grid, **extra)

    records = [cell(0, "new", "clean", 0, 40.0, 2.0), cell(1, "new", "fog", 1, 30.0, 4.0),
               cell(2, "new", "fog", 3, 20.0, 8.0), cell(3, "new", "motion_blur", 1, 35.0),  # no ECE: missing
               *(cell(4 + i, "old", c, s) for i, (c, s) in enumerate([("clean", 0), ("fog", 1), ("fog", 3),
                                                                        ("motion_blur", 1)]))]
    (section,) = robustness.sections(records, tmp_path, tmp_path)
    table = next(t for t in section.tables if t.name == "robustness_boundary_calibration").frame
    assert list(table.columns) == ["model", "metric", "Clean", "Weather Fog", "Blur Motion"]
    assert [tuple(r) for r in table[["model", "metric", "Clean", "Weather Fog"]].itertuples(index=False)] == [
        ("new", "mBIoU", 40.0, 25.0), ("new", "ECE", 2.0, 6.0)]  # the records without them: no rows
    assert table.iloc[0]["Blur Motion"] == 35.0 and math.isnan(table.iloc[1]["Blur Motion"])
    assert not [t for t in robustness.sections(records[4:], tmp_path, tmp_path)[0].tables
                if t.name == "robustness_boundary_calibration"]
