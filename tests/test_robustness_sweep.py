"""Corruption sweeps in suites: one record per (model, corruption, severity) + clean,
resumed without recomputing finished cells; cached and on-the-fly sources; the report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench import report, runner
from segbench.models import create_model
from segbench.models.checkpoints import save_checkpoint
from segbench.results import load_records
from segbench.robustness.corruptions import corruption_grid, generate
from segbench.engine.evaluate import evaluate
from segbench.robustness.sweep import CorruptedDataset, collect_sweeps
from segbench.results import record_path
from segbench.runner import plan, run_suite
from segbench.suite import SuiteError, load_suite

SUITE = """\
name: sweep
device: cpu
results: {tmp}/results
datasets:
  synthetic: {{kind: synthetic, options: {{num_images: 3, image_size: 64}}}}
models:
  a: {{arch: segmenter_micro_p32_linear, checkpoint: {tmp}/a.pth}}
  b: {{arch: segmenter_micro_p32_linear, checkpoint: {tmp}/b.pth}}
corruption:
  - dataset: synthetic
    corruptions: [gaussian_noise, contrast]
    severities: [1, 3]
    max_images: 2
    reference: b
"""


def write_suite(tmp_path: Path, text: str = SUITE, **replace) -> Path:
    for key in ("a", "b"):
        if not (tmp_path / f"{key}.pth").exists():
            torch.manual_seed(ord(key))
            save_checkpoint(tmp_path / f"{key}.pth", create_model("segmenter_micro_p32_linear", num_classes=9))
    text = text.format(tmp=tmp_path)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def counting(monkeypatch, stop_after: int | None = None) -> list:
    """Count cell evaluations; raise KeyboardInterrupt (as Ctrl-C would) after ``stop_after``."""
    calls = []

    def counted(model, dataset, *args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        cell = (dataset.corruption, dataset.severity) if isinstance(dataset, CorruptedDataset) else ("clean", 0)
        calls.append(cell)
        return evaluate(model, dataset, *args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", counted)
    return calls


def test_a_sweep_interrupted_and_restarted_recomputes_no_finished_cell(tmp_path, monkeypatch):
    suite = load_suite(write_suite(tmp_path))
    jobs = plan(suite)
    assert [(j.model, j.config["cell"]["corruption"], j.config["cell"]["severity"]) for j in jobs] == [
        (m, c, s) for m in "ab" for c, s in [("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 3),
                                              ("contrast", 1), ("contrast", 3)]]
    counting(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite)
    assert len(load_records(suite.results_dir)) == 3

    calls = counting(monkeypatch)
    records = run_suite(suite)
    assert len(calls) == 10 - 3
    assert [r.get("skipped", False) for r in records] == [True] * 3 + [False] * 7
    assert all(r["status"] == "ok" for r in records)
    assert len({r["job_id"] for r in records}) == 10

    calls = counting(monkeypatch)
    run_suite(suite)
    assert calls == []  # everything finished: nothing recomputed

    r = json.loads(record_path(suite.results_dir, records[4]["job_id"], "a").read_text())  # model a, contrast 3
    assert (r["kind"], r["model"], r["corruption"], r["severity"]) == ("corruption", "a", "contrast", 3)
    assert r["sweep"]["grid"] == {"gaussian_noise": [1, 3], "contrast": [1, 3]} and r["sweep"]["reference"] == "b"
    assert r["timings"]["images"] == 2 and r["source"] == "on_the_fly" and 0 <= r["metrics"]["mIoU"] <= 100

    (sweep,) = collect_sweeps(load_records(suite.results_dir), suite.results_dir)
    scores = sweep.scores("a")
    cells = {(x["corruption"], x["severity"]): x["metrics"]["mIoU"] for x in records if x["model"] == "a"}
    assert scores["clean"] == cells["clean", 0]
    assert scores["corruption"]["contrast"] == pytest.approx((cells["contrast", 1] + cells["contrast", 3]) / 2)
    assert sweep.scores("b")["mCD"] == pytest.approx(100.0)

    files = report.render(suite.results_dir, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Robustness to corruptions" in text and "| a | measured |" in text and "Noise Gauss" in text
    assert {"robustness.csv", "robustness_summary.csv", "robustness_curves.png", "corruptions.png"} <= {
        p.name for p in files}


def test_a_missing_cell_is_reported_as_missing_never_as_zero(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    run_suite(suite)

    def drop(model, corruption, severity):
        for path in suite.results_dir.glob("*.json"):
            record = json.loads(path.read_text())
            if (record["model"], record["corruption"], record["severity"]) == (model, corruption, severity):
                path.unlink()
        report.render(suite.results_dir, tmp_path / "report")
        return (tmp_path / "report" / "report.md").read_text()

    text = drop("a", "gaussian_noise", 3)
    assert "- a: no mIoU for gaussian_noise severity 3" in text
    assert "| a | measured |" not in text and "| b | measured |" in text  # b's scores need nothing of a
    text = drop("b", "clean", 0)  # the reference: no model has a CD now
    assert "- b: no mIoU for the clean images" in text and "| b | measured |" not in text


def test_growing_a_sweep_keeps_the_ids_of_its_finished_cells(tmp_path):
    small = plan(load_suite(write_suite(tmp_path)))
    grown = plan(load_suite(write_suite(tmp_path, **{"[gaussian_noise, contrast]": "[gaussian_noise, contrast, fog]",
                                                      "reference: b": "reference: a"})))
    assert {j.id for j in small} < {j.id for j in grown}
    assert len(grown) == 2 * (1 + 3 * 2)


def test_a_sweep_on_a_cache_reads_the_same_pixels_as_on_the_fly(tmp_path):
    cache = tmp_path / "cache"
    generate("synthetic", "val", None, cache, corruption_grid(["gaussian_noise", "contrast"], [1, 3]), max_images=2,
             options={"image_size": 64})
    on_the_fly = run_suite(load_suite(write_suite(tmp_path)))
    with_cache = {"    reference: b": f"    reference: b\n    root: {cache}"}
    cached = run_suite(load_suite(write_suite(tmp_path, **with_cache)))
    assert {r["source"] for r in cached if r["corruption"] != "clean"} == {str(cache)}
    for a, b in zip(on_the_fly, cached):
        assert (a["model"], a["corruption"], a["severity"]) == (b["model"], b["corruption"], b["severity"])
        assert a["job_id"] != b["job_id"] or a["corruption"] == "clean"
        np.testing.assert_equal(a["metrics"]["IoU"], b["metrics"]["IoU"])  # NaN (absent class) == NaN
    clean = {r["model"]: r["metrics"]["mIoU"] for r in cached if r["corruption"] == "clean"}
    assert any(r["metrics"]["mIoU"] != clean[r["model"]] for r in cached)  # the corruptions do change the output


def test_a_cache_of_other_images_fails_the_cell_with_a_clear_message(tmp_path):
    cache = tmp_path / "cache"
    generate("synthetic", "val", None, cache, corruption_grid(["contrast"], [1]), max_images=2)  # 128 px scenes
    suite = load_suite(write_suite(tmp_path, **{"[gaussian_noise, contrast]": "[contrast]", "[1, 3]": "[1]",
                                                "    reference: b": f"    reference: b\n    root: {cache}"}))
    records = run_suite(suite)
    failed = [r for r in records if r["status"] == "error"]
    assert {(r["corruption"], r["severity"]) for r in failed} == {("contrast", 1)}
    assert "was made from other pixels" in failed[0]["error"]["message"]


@pytest.mark.parametrize("replace, message", [
    ({"[gaussian_noise, contrast]": "[gaussian_noise, zoom_blur]"}, r"suite.yaml:11: corruption\[0\].corruptions: "
                                                                    "unknown corruption 'zoom_blur'"),
    ({"[1, 3]": "[4]"}, r"corruption\[0\].severities: gaussian_noise is evaluated at severities 1-3 only"),
    ({"reference: b": "reference: c"}, r"corruption\[0\].reference: 'c' is not one of the models"),
    ({"max_images: 2": "max_images: 2\n    flips: true"}, r"corruption\[0\].flips: unknown key 'flips'"),
])
def test_suite_errors_name_the_field(tmp_path, replace, message):
    with pytest.raises(SuiteError, match=message):
        load_suite(write_suite(tmp_path, **replace))


def test_a_missing_cache_is_listed_with_the_other_missing_inputs(tmp_path):
    from segbench.suite import missing_files

    suite = load_suite(write_suite(tmp_path, **{"reference: b": "reference: b\n    root: /nonexistent"}))
    (problem,) = missing_files(suite)
    assert "corruption[0].root: /nonexistent has no manifest.json" in problem


def test_a_changed_reference_reaches_the_reused_records_and_the_report(tmp_path, monkeypatch):
    suite = load_suite(write_suite(tmp_path))
    run_suite(suite)
    before = {p.name: p.stat().st_mtime_ns for p in suite.results_dir.glob("*.json")}
    calls = counting(monkeypatch)
    run_suite(suite)  # unchanged suite: the records are not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in suite.results_dir.glob("*.json")} == before

    changed = load_suite(write_suite(tmp_path, **{"reference: b": "reference: a"}))
    records = run_suite(changed)
    assert calls == [] and all(r["skipped"] for r in records)  # nothing recomputed
    stored = load_records(changed.results_dir)
    assert len(stored) == 10 and {r["sweep"]["reference"] for r in stored} == {"a"}
    (sweep,) = collect_sweeps(stored, changed.results_dir)
    assert sweep.reference == "a" and sweep.scores("a")["mCD"] == pytest.approx(100.0)
    report.render(changed.results_dir, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "mCD vs a" in text and "mCD vs b" not in text
    assert "Boundary IoU and calibration under corruption" in text  # the cells carry mBIoU and ECE
