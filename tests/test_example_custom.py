"""examples/custom_model end to end, as a new user runs it: their model file and classes file,
their data written outside the repository, every stage, the report, and a CI gate."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from folder_writers import EXAMPLE, write_folder_dataset
from segbench.cli import main
from segbench.results import load_records


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The example suite, copied outside the repository (its model file beside it), with the
    dataset in tmp_path: nothing is read from the checkout but the example's three files."""
    where = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, where)
    data = write_folder_dataset(tmp_path / "shapes", {"val": 3})
    monkeypatch.setenv("SHAPES_DATA", str(data))
    monkeypatch.setenv("SEGBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)  # the model path resolves against the suite file, not the working directory
    return where / "suite.yaml", tmp_path / "results"


def test_example_suite_runs_every_stage_reports_and_gates(example, tmp_path, capsys):
    suite, results = example
    start = time.perf_counter()
    assert main(["run", str(suite), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] == 0
    records = load_records(results)
    kinds = sorted(r["kind"] for r in records)
    assert kinds == ["corruption", "corruption", "eval", "eval", "profile"]  # clean + gaussian_noise-1
    evals = {r["protocol_name"]: r for r in records if r["kind"] == "eval"}
    assert set(evals) == {"single_scale", "multi_scale"}
    assert evals["multi_scale"]["protocol"]["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    for r in records:
        assert r["model"] == "tiny" and r["arch"].startswith("model.py:build_model ")
    ss = evals["single_scale"]
    assert ss["protocol"]["mode"] == "whole" and "the model's test_mode" in ss["protocol"]["source"]
    assert (ss["dataset"], ss["split"]) == ("shapes", "val") and 0 <= ss["metrics"]["mIoU"] <= 100
    assert "size" in ss["metrics"] and ss["metrics"]["mIoU_ci"]
    assert (results / ss["per_image_file"]).is_file()
    profile = next(r for r in records if r["kind"] == "profile")
    width = 8  # the suite's args: conv weights 3*3*(3*8 + 8*16 + 16*16) + 1x1 head 16*3 + 3 + BN 2*(8 + 16 + 16)
    assert profile["metrics"]["params"] == 9 * (3 * width + width * 2 * width + 4 * width * width) + 2 * width * 3 + 3 \
        + 2 * (width + 4 * width)
    assert profile["metrics"]["macs"] > 0 and profile["metrics"]["latency_ms"] > 0

    # the report lists the user model by its suite key
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny |" in text and "| tiny | measured |" in text  # accuracy, cost and robustness rows

    # gating one's own CI: commit the records as a baseline, re-run, check
    baseline = tmp_path / "baseline"
    shutil.copytree(results, baseline)
    assert main(["run", str(suite), "--force", "--json"]) == 0
    capsys.readouterr()
    tolerances = tmp_path / "tolerances.yaml"  # the accuracy and cost rules of baselines/tolerances.yaml; timings
    tolerances.write_text("metrics:\n"  # on a shared test machine are left out
                          "  mIoU: [{drop: 1.0, kinds: [eval]}, {drop: 2.5, kinds: [corruption]}]\n"
                          "  params: {change: 0}\n  macs: {change_pct: 0.1}\n")
    assert main(["check", str(results), "--baseline", str(baseline), "--tolerances", str(tolerances)]) == 0
    record = next(p for p in baseline.glob("*.json") if json.loads(p.read_text())["kind"] == "eval")
    doctored = json.loads(record.read_text())
    doctored["metrics"]["mIoU"] += 5.0
    record.write_text(json.dumps(doctored))
    assert main(["check", str(results), "--baseline", str(baseline), "--tolerances", str(tolerances)]) == 1
    assert time.perf_counter() - start < 60


def test_example_model_with_compare_corrupt_cache_and_the_command_line(example, tmp_path, capsys):
    suite, results = example
    data = Path(os.environ["SHAPES_DATA"])
    assert main(["corrupt", "folder", "--root", str(data), "--out", str(tmp_path / "corrupt"),
                 "--corruptions", "gaussian_noise", "--severities", "1", "--workers", "0", "--json"]) == 0
    text = suite.read_text()
    text = text.replace("corruptions: [gaussian_noise], severities: [1]",
                        f"corruptions: [gaussian_noise], severities: [1], root: {tmp_path / 'corrupt'}")
    text = text[:text.index("profile:")]
    suite.write_text(text)
    assert main(["run", str(suite), "--json"]) == 0
    capsys.readouterr()
    records = load_records(results)
    noisy = next(r for r in records if r["kind"] == "corruption" and r["corruption"] == "gaussian_noise")
    assert str(tmp_path / "corrupt") in noisy["source"]  # read from the cache, checked against its manifest
    evals = sorted((p for p in results.glob("*.json") if json.loads(p.read_text())["kind"] == "eval"), key=str)
    assert main(["compare", str(evals[0]), str(evals[1]), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["images"] == 3 and 0 <= compared["p_value"] <= 1

    # MODEL on the command line: relative to the working directory; the class count from the classes file
    os.chdir(suite.parent)
    assert main(["eval", "model.py:build_model", "--dataset", "folder", "--root", str(data), "--random-weights",
                 "--out", str(tmp_path / "cli.json")]) == 2  # no protocol settings: the model's info lacks test_mode
    assert "protocol.test_mode" in capsys.readouterr().err
