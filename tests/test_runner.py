import json
import subprocess
import sys
from pathlib import Path

import pytest

from segbench import runner
from segbench.results import load_records
from segbench.runner import plan, run_suite
from segbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]

SUITE = """\
name: tiny
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 6, image_size: 64}}}}
models:
  p32:
    arch: segmenter_micro_p32_linear
    train: {{dataset: syn, recipe: scratch, iters: {iters}, batch_size: 2, crop_size: 64}}
  p8:
    arch: segmenter_micro_p8_linear
    train: {{dataset: syn, recipe: scratch, iters: 2, batch_size: 2, crop_size: 64}}
evaluate:
  - {{dataset: syn, protocol: single_scale, max_images: 2}}
  - {{dataset: syn, protocol: multi_scale, max_images: 2, scales: [1.0, 1.5]}}
"""


def make_suite(tmp_path, iters=2):
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE.format(results=tmp_path / "results", iters=iters))
    return load_suite(path)


def test_plan_has_stable_ids_that_follow_the_config(tmp_path):
    jobs = plan(make_suite(tmp_path))
    assert [j.kind for j in jobs] == ["train", "train", "eval", "eval", "eval", "eval"]
    assert [j.id for j in jobs] == [j.id for j in plan(make_suite(tmp_path))]
    changed = plan(make_suite(tmp_path, iters=3))
    # retraining p32 changes its training job and every evaluation that uses it, nothing else
    same = {j.id for j in jobs} & {j.id for j in changed}
    assert {j.model for j in jobs if j.id not in same} == {"p32"}
    assert len(same) == 3
    evals = [j for j in jobs if j.kind == "eval"]
    assert all(j.needs == jobs[0].id for j in evals if j.model == "p32")


def test_run_writes_records_then_skips_finished_jobs(tmp_path):
    suite = make_suite(tmp_path)
    first = run_suite(suite)
    assert [r["status"] for r in first] == ["ok"] * 6
    records = load_records(suite.results_dir)
    assert len(records) == 6
    evaluation = next(r for r in records if r["kind"] == "eval" and r["protocol_name"] == "multi_scale")
    assert set(evaluation["metrics"]) >= {"mIoU", "mAcc", "aAcc", "IoU"}
    assert evaluation["protocol"]["scales"] == [1.0, 1.5] and evaluation["protocol"]["flip"] is True
    assert evaluation["checkpoint_sha256"] and evaluation["env"]["torch"]
    second = run_suite(suite)
    assert all(r.get("skipped") for r in second)


def test_failed_job_becomes_an_error_record_and_the_suite_goes_on(tmp_path, monkeypatch):
    suite = make_suite(tmp_path)
    original = runner.Runner.run_train

    def failing_train(self, job):
        if job.model == "p32":
            raise RuntimeError("out of memory (simulated)")
        return original(self, job)

    monkeypatch.setattr(runner.Runner, "run_train", failing_train)
    records = run_suite(suite)
    by_model = {(r["model"], r["kind"]): r["status"] for r in records}
    assert by_model[("p32", "train")] == "error" and by_model[("p8", "train")] == "ok"
    p32_evals = [r for r in records if r["model"] == "p32" and r["kind"] == "eval"]
    assert all(r["status"] == "error" and "did not finish" in r["error"]["message"] for r in p32_evals)
    assert all(r["status"] == "ok" for r in records if r["model"] == "p8")

    monkeypatch.setattr(runner.Runner, "run_train", original)
    rerun = run_suite(suite)  # only the failed jobs run again
    assert [r.get("skipped", False) for r in rerun] == [False, True, False, True, False, True]
    assert all(r["status"] == "ok" for r in rerun)


def test_interrupted_run_keeps_finished_records_and_resumes(tmp_path, monkeypatch):
    suite = make_suite(tmp_path)
    original, calls = runner.Runner.run_eval, []

    def interrupted_eval(self, job):
        calls.append(job.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, job)

    monkeypatch.setattr(runner.Runner, "run_eval", interrupted_eval)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite)
    finished = {r["job_id"] for r in load_records(suite.results_dir)}
    assert len(finished) == 3  # two trainings and the first evaluation
    monkeypatch.setattr(runner.Runner, "run_eval", original)
    rerun = run_suite(suite)
    assert sum(not r.get("skipped") for r in rerun) == 3
    assert {r["job_id"] for r in load_records(suite.results_dir)} >= finished


def test_cli_run_json_and_stub_suite_errors(tmp_path):
    suite = make_suite(tmp_path)
    cmd = [sys.executable, "-m", "segbench", "run", suite.path, "--json", "--no-report"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["failed"] == 0 and len(document["records"]) == 6

    stub = subprocess.run([sys.executable, "-m", "segbench", "run", "suites/ade20k_all.yaml"],
                          capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert stub.returncode == 2
    assert "Traceback" not in stub.stderr
    assert "ADEChallengeData2016" in stub.stderr and "annotations/validation" in stub.stderr
