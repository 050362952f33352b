"""`segbench check`: records against a baseline with tolerances; exit 0 / 1 / 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import report_records as rr
from segbench.cli import main
from segbench.regression import Rule, Tolerances, check, compare, load_tolerances

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_BASELINE = ROOT / "baselines" / "quickstart"
QUICKSTART_TOLERANCES = ROOT / "baselines" / "tolerances.yaml"
TOLERANCES = """\
machine_dependent: same_machine
metrics:
  mIoU: {drop: 1.0}
  macs: {change_pct: 0.1}
  latency_ms: {rise_pct: 25, noise: true, machine_dependent: true}
"""


def baseline_records() -> list[dict]:
    return [rr.train_record("t1", "m1", "segmenter_micro_p8_linear"),
            rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0),
            rr.eval_record("e2", "m1", "segmenter_micro_p8_linear", 41.0, protocol="multi_scale"),
            rr.profile_record("p1", "m1", "segmenter_micro_p8_linear", latency=10.0, spread=0.5)]


@pytest.fixture
def folders(tmp_path):
    base = rr.write(tmp_path / "baseline", baseline_records())
    current = rr.write(tmp_path / "results", baseline_records())
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text(TOLERANCES)
    return base, current, tolerances


def run_check(capsys, current, base, tolerances, *extra) -> tuple[int, str]:
    code = main(["check", str(current), "--baseline", str(base), "--tolerances", str(tolerances), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def doctor(folder: Path, job_id: str, miou_drop: float = 0.0, latency_factor: float = 1.0) -> None:
    path = folder / f"{job_id}.json"
    record = json.loads(path.read_text())
    metrics = record["metrics"]
    if "mIoU" in metrics:
        metrics["mIoU"] -= miou_drop
    for key in ("latency_ms", "latency_ms_p10", "latency_ms_p90"):
        if key in metrics:
            metrics[key] *= latency_factor
    path.write_text(json.dumps(record))


def test_unchanged_records_pass(folders, capsys):
    base, current, tolerances = folders
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 0, out
    assert "4 records compared with the baseline (4 matched by job id)" in out and "check passed" in out


def test_doctored_record_fails_with_a_readable_diff(folders, capsys):
    base, current, tolerances = folders
    doctor(current, "e1", miou_drop=2.0)
    doctor(current, "p1", latency_factor=1.5)
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1, out
    lines = out.splitlines()
    miou = next(line for line in lines if " mIoU " in line)
    assert "e1" in miou and " 40 " in miou and " 38 " in miou and "-2 (-5.0 %)" in miou and "REGRESSION" in miou
    latency = next(line for line in lines if "latency_ms" in line)
    assert "+5 (+50.0 %)" in latency and "REGRESSION" in latency and "p10 now 14.25 vs p90 before 10.5" in latency
    assert "2 beyond tolerance" in out and "check FAILED" in out
    assert not any(" e2 " in line for line in lines)  # unchanged records are not listed


def test_limits_are_inclusive_and_noise_aware():
    base, cur = rr.eval_record("a", "m", "x", 40.0), rr.eval_record("a", "m", "x", 39.0)
    assert compare(base, cur, "job id", Rule("mIoU", drop=1.0), "same_machine").verdict == "ok"
    cur["metrics"]["mIoU"] = 38.99
    assert compare(base, cur, "job id", Rule("mIoU", drop=1.0), "same_machine").verdict == "regression"
    assert compare(base, cur, "job id", Rule("mIoU", rise=0.5), "same_machine").verdict == "ok"  # a drop is no rise
    rule = Rule("latency_ms", rise_pct=25, noise=True, machine_dependent=True)
    noisy_base = rr.profile_record("p", "m", "x", latency=10.0, spread=4.0)  # p10 6, p90 14
    slower = rr.profile_record("p", "m", "x", latency=13.0, spread=4.0)  # +30 %, p10 9 < 14
    finding = compare(noisy_base, slower, "job id", rule, "same_machine")
    assert finding.verdict == "ok" and "within the runs' noise" in finding.note
    tight_base = rr.profile_record("p", "m", "x", latency=10.0, spread=0.5)
    tight_slower = rr.profile_record("p", "m", "x", latency=13.0, spread=0.5)
    assert compare(tight_base, tight_slower, "job id", rule, "same_machine").verdict == "regression"
    plain = Rule("latency_ms", rise_pct=25)  # without noise: the medians alone decide
    assert compare(noisy_base, slower, "job id", plain, "same_machine").verdict == "regression"
    faster = rr.profile_record("p", "m", "x", latency=5.0, spread=0.5)
    assert compare(tight_base, faster, "job id", rule, "same_machine").verdict == "ok"


def test_timings_are_gated_only_on_the_same_machine_unless_told():
    rule = Rule("latency_ms", rise_pct=25, noise=True, machine_dependent=True)
    base = rr.profile_record("p", "m", "x", latency=10.0, spread=0.5)
    elsewhere = rr.profile_record("p", "m", "x", latency=20.0, spread=0.5)
    elsewhere["env"] = {**elsewhere["env"], "host": "another-runner"}
    finding = compare(base, elsewhere, "job id", rule, "same_machine")
    assert finding.verdict == "not gated" and "another machine" in finding.note
    assert compare(base, elsewhere, "job id", rule, "always").verdict == "regression"
    assert compare(base, base, "job id", rule, "never").verdict == "not gated"
    accuracy = compare(rr.eval_record("a", "m", "x", 40.0), rr.eval_record("a", "m", "x", 30.0), "job id",
                       Rule("mIoU", drop=1.0), "never")
    assert accuracy.verdict == "regression"  # only machine-dependent metrics follow the policy


def test_missing_jobs_errors_and_missing_metrics_fail_new_records_do_not(folders, capsys):
    base, current, tolerances = folders
    (current / "e2.json").unlink()
    rr.write(current, [rr.eval_record("e9", "m9", "segformer_micro", 10.0), rr.error_record("x1", "m1")])
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1
    assert "MISSING: no record of this baseline job" in out and "ERROR: RuntimeError: out of memory" in out
    assert "records not in the baseline (not checked): e9 eval m9, x1 eval m1" in out
    rr.write(current, [rr.eval_record("e2", "m1", "segmenter_micro_p8_linear", 41.0, protocol="multi_scale")])
    (current / "x1.json").unlink()
    assert run_check(capsys, current, base, tolerances)[0] == 0  # a new record alone is no failure
    record = json.loads((current / "p1.json").read_text())
    del record["metrics"]["macs"]
    (current / "p1.json").write_text(json.dumps(record))
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and "METRIC MISSING" in out


def test_records_with_other_job_ids_pair_by_kind_model_dataset_protocol(folders, capsys):
    base, current, tolerances = folders
    for old in ("e1", "e2"):
        record = json.loads((current / f"{old}.json").read_text())
        record["job_id"] = old + "-new-id"
        (current / f"{old}.json").unlink()
        rr.write(current, [record])
    doctor(current, "e1-new-id", miou_drop=3.0)
    code, out = run_check(capsys, current, base, tolerances, "--json")
    result = json.loads(out)
    assert code == 1 and not result["ok"]
    assert (result["matched_by_job_id"], result["matched_by_kind_model_dataset_protocol"]) == (2, 2)
    (miou,) = [f for f in result["findings"] if f["verdict"] == "regression"]
    assert (miou["job_id"], miou["baseline_job_id"], miou["metric"]) == ("e1-new-id", "e1", "mIoU")
    assert miou["matched_by"] == "kind, model, dataset, protocol" and miou["current"] == 37.0
    code, out = run_check(capsys, current, base, tolerances)
    assert "2 by kind, model, dataset and protocol: their job ids differ" in out


@pytest.mark.parametrize("text, message", [
    ("metrics: {mIoU: {drop: -1}}", "metrics.mIoU.drop: expected a number >= 0"),
    ("metrics: {mIoU: {fall: 1}}", "unknown key 'fall'"),
    ("metrics: {mIoU: {noise: true}}", "give at least one limit"),
    ("metrics: {mIoU: {drop: 1, noise: 3}}", "metrics.mIoU.noise: expected true or false"),
    ("metric: {mIoU: {drop: 1}}", "expected a mapping with `metrics:`"),
    ("machine_dependent: sometimes\nmetrics: {mIoU: {drop: 1}}", "machine_dependent: expected one of"),
    ("metrics: [", "not valid YAML"),
    ("metrics: {mIoU: [{drop: 1}, {rise: x}]}", "metrics.mIoU[1].rise: expected a number >= 0"),
    ("metrics: {mIoU: {drop: 1, kinds: eval}}", "metrics.mIoU.kinds: expected a list of record kinds"),
])
def test_bad_tolerance_files_are_usage_errors(folders, capsys, text, message):
    base, current, tolerances = folders
    tolerances.write_text(text)
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 2 and message in out and str(tolerances) in out


def test_missing_folders_are_usage_errors(folders, capsys, tmp_path):
    base, current, tolerances = folders
    assert run_check(capsys, tmp_path / "nope", base, tolerances)[0] == 2
    code, out = run_check(capsys, current, tmp_path / "nope", tolerances)
    assert code == 2 and "no such baseline folder" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run_check(capsys, current, empty, tolerances)
    assert code == 2 and "make baseline" in out
    assert run_check(capsys, current, base, tmp_path / "none.yaml")[0] == 2


def test_committed_quickstart_baseline_passes_and_catches_a_two_point_drop(tmp_path, capsys):
    if not QUICKSTART_BASELINE.is_dir():
        pytest.skip("no committed baseline yet (make baseline)")
    tolerances = load_tolerances(QUICKSTART_TOLERANCES)
    assert check(QUICKSTART_BASELINE, QUICKSTART_BASELINE, tolerances).ok
    current = tmp_path / "results"
    shutil.copytree(QUICKSTART_BASELINE, current)
    evaluation = next(p for p in sorted(current.glob("*.json")) if json.loads(p.read_text())["kind"] == "eval")
    doctor(current, evaluation.stem, miou_drop=2.0)
    result = check(current, QUICKSTART_BASELINE, tolerances)
    job_id = json.loads(evaluation.read_text())["job_id"]  # files are <job id>.<model>.json
    assert not result.ok and [(f.current["job_id"], f.metric) for f in result.regressions] == [(job_id, "mIoU")]


def test_rules_can_differ_by_record_kind(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("metrics:\n  mIoU:\n    - {drop: 1.0, kinds: [eval]}\n    - {drop: 2.5, kinds: [corruption]}\n")
    eval_rule, cell_rule = load_tolerances(path).rules
    assert eval_rule == Rule("mIoU", drop=1.0, kinds=("eval",)) and cell_rule.kinds == ("corruption",)
    base, cur = rr.eval_record("a", "m", "x", 40.0), rr.eval_record("a", "m", "x", 38.0)
    assert compare(base, cur, "job id", eval_rule, "same_machine").verdict == "regression"
    assert compare(base, cur, "job id", cell_rule, "same_machine") is None  # not an eval rule's record
    cell_base, cell = dict(base, kind="corruption"), dict(cur, kind="corruption")
    assert compare(cell_base, cell, "job id", cell_rule, "same_machine").verdict == "ok"  # 2 <= 2.5


def test_tolerances_object_from_the_file_keeps_every_rule(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TOLERANCES)
    tolerances = load_tolerances(path)
    assert isinstance(tolerances, Tolerances) and tolerances.machine_dependent == "same_machine"
    assert tolerances.rules[2] == Rule("latency_ms", rise_pct=25, noise=True, machine_dependent=True)


def test_an_unreadable_or_malformed_baseline_record_fails_the_check_naming_it(folders, capsys):
    base, current, tolerances = folders
    (base / "torn.json").write_text('{"schema": 1, "job_id": "torn", "kind": "ev')
    (base / "manifest.json").write_text('{"corruptions": []}')  # JSON but no record: not a problem
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and f"{base / 'torn.json'}: not valid JSON" in out
    assert "check FAILED: 1 unreadable record" in out and "manifest" not in out
    (base / "torn.json").write_text(json.dumps({"schema": 1, "job_id": "torn", "status": "ok"}))
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and "torn.json: not a complete record: no `kind`" in out


def test_a_tolerance_for_a_metric_no_record_has_is_an_error_naming_it(folders, capsys):
    base, current, tolerances = folders
    tolerances.write_text("metrics:\n  miou: {drop: 1.0}\n")
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 2 and "metrics.miou: no record in the results or the baseline has a metric 'miou'" in out
    assert "did you mean 'mIoU'?" in out and "check passed" not in out


def test_a_check_that_checks_no_metric_fails(folders, capsys):
    base, current, tolerances = folders
    tolerances.write_text("machine_dependent: never\nmetrics:\n  latency_ms: {rise_pct: 25, machine_dependent: true}\n")
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and "check FAILED: no metric was checked" in out and "check passed" not in out


def test_only_missing_records_are_not_called_regressions(folders, capsys):
    base, current, tolerances = folders
    (current / "e2.json").unlink()
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and "check FAILED: 1 baseline job without a record" in out and "regression" not in out.lower()


def trained_eval(job_id: str, miou: float, **env) -> dict:
    record = rr.eval_record(job_id, "m1", "segmenter_micro_p8_linear", miou)
    record["config"]["trained_by"] = "t1"
    record["env"] = {**record["env"], **env}
    return record


def test_environment_differences_are_reported_and_ungate_trained_accuracy_and_timings(tmp_path, capsys):
    base = rr.write(tmp_path / "baseline", [trained_eval("e1", 40.0), rr.eval_record("f1", "m2", "fcn_micro", 40.0)])
    current = rr.write(tmp_path / "results", [trained_eval("e1", 35.0, torch="2.14.1", threads=1),
                                              rr.eval_record("f1", "m2", "fcn_micro", 40.0)])
    tolerances = tmp_path / "t.yaml"
    tolerances.write_text("metrics:\n  mIoU: {drop: 1.0}\n")
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 0, out  # the fixed checkpoint (f1) is still gated: it passed
    assert "environment differs from the baseline's: torch 2.15.0 -> 2.14.1; threads 2 -> 1" in out
    result = json.loads(run_check(capsys, current, base, tolerances, "--json")[1])
    (ungated,) = [f for f in result["findings"] if f["verdict"] == "not gated"]
    assert ungated["job_id"] == "e1" and ungated["note"] == ("model trained by the suite in another environment "
                                                             "(torch 2.15.0 -> 2.14.1, threads 2 -> 1)")
    assert result["environment_differences"]["torch"] == [["2.15.0", "2.14.1"]]
    tolerances.write_text("environment_dependent: always\nmetrics:\n  mIoU: {drop: 1.0}\n")
    code, out = run_check(capsys, current, base, tolerances)
    assert code == 1 and "REGRESSION" in out and "torch 2.15.0 -> 2.14.1" in out
    rr.write(current, [rr.eval_record("f1", "m2", "fcn_micro", 30.0) | {"env": {**rr.ENV, "torch": "2.14.1"}}])
    tolerances.write_text("metrics:\n  mIoU: {drop: 1.0}\n")
    code, out = run_check(capsys, current, base, tolerances, "--json")
    assert code == 1  # a fixed checkpoint's drop is a regression anywhere, with what else changed beside it
    (regression,) = [f for f in json.loads(out)["findings"] if f["verdict"] == "regression"]
    assert regression["job_id"] == "f1" and regression["note"] == "environment differs: torch 2.15.0 -> 2.14.1"


def test_timings_are_not_gated_across_environments():
    rule = Rule("latency_ms", rise_pct=25, machine_dependent=True)
    base = rr.profile_record("p", "m", "x", latency=10.0)
    slower = rr.profile_record("p", "m", "x", latency=20.0)
    slower["env"] = {**slower["env"], "numpy": "2.5.0"}
    finding = compare(base, slower, "job id", rule, "always")
    assert finding.verdict == "not gated" and "timing in another environment (numpy 2.4.6 -> 2.5.0)" in finding.note
    assert compare(base, slower, "job id", rule, "always", "always").verdict == "regression"
