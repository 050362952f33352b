"""suites/cityscapes_shift.yaml end to end with its small model: tiny Cityscapes, ACDC and
Dark Zurich trees in their official layouts, a random SegFormer-B0 in the official release
format, one Cityscapes-C cell; every record carries the new metrics and the report has the
synthetic-vs-real table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from layouts import write_acdc, write_dark_zurich
from test_shipped_suites import derive_suite, write_checkpoint, write_data

from segbench import cli
from segbench.suite import load_suite


@pytest.mark.slow  # SegFormer-B0 at the papers' test sizes (1024x2048, 1080x1920) on ten images: ~2 min on one core
def test_shift_suite_small_model(tmp_path, monkeypatch, capsys):
    data, weights = tmp_path / "data", tmp_path / "weights"
    monkeypatch.setenv("SEGBENCH_DATA", str(data))
    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(weights))
    write_data(data)
    rng = np.random.default_rng(0)
    conditions = ("fog", "night", "rain", "snow")
    write_acdc(data / "acdc", {c: [rng.integers(0, 19, (24, 40))] for c in conditions},
               {c: [rng.random((24, 40)) < 0.2] for c in conditions})
    write_dark_zurich(data / "dark_zurich", [rng.integers(0, 19, (24, 40))], [rng.random((24, 40)) < 0.2])
    path = derive_suite("cityscapes_shift", ("segformer_b0",), (), tmp_path, quick=True)
    suite = load_suite(path)
    write_checkpoint("segformer_b0", Path(suite.models["segformer_b0"].checkpoint), "cityscapes")
    sweep = suite.corruption[0]
    assert cli.main(["corrupt", "cityscapes", "--root", suite.datasets["cityscapes"].root, "--out", sweep.root,
                     "--workers", "1", "--corruptions", "gaussian_noise", "--severities", "1", "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["run", str(path), "--json"]) == 0, capsys.readouterr().err
    document = json.loads(capsys.readouterr().out)
    records = document["records"]
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    evals = {f"{r['dataset']}/{r['split']}": r for r in records if r["kind"] == "eval"}
    assert set(evals) == {"cityscapes/val", *(f"acdc/{c}/val" for c in conditions), "dark_zurich/val"}
    for record in records:
        if record["kind"] in ("eval", "corruption"):
            metrics = record["metrics"]
            assert 0 <= metrics["boundary"]["mBIoU"] <= 100
            assert metrics["calibration"]["probabilities"] == "softmax of the single view's logits"
    assert evals["acdc/fog/val"]["protocol"]["window"] == 1024  # SegFormer's Cityscapes windows
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Synthetic vs real conditions" in report and "acdc/night" in report
