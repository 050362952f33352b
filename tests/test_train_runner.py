"""Training jobs in suites and `segbench train`: recipes in job ids, resuming a crashed
training job on re-run, suite validation of `train:` blocks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segbench import runner
from segbench.engine.train import read_log
from segbench.models.checkpoints import read_file
from segbench.runner import plan, run_suite
from segbench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]

SUITE = """\
name: tiny-train
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 5, image_size: 48}}}}
models:
  setr:
    arch: setr_micro_p16_naive
    train: {{dataset: syn, recipe: {recipe}, iters: 6, batch_size: 2, crop_size: 32, checkpoint_every: 2,
            workers: 0{extra}}}
evaluate:
  - {{dataset: syn, protocol: single_scale, max_images: 2, bootstrap: 0}}
"""


def make_suite(tmp_path, name="tiny.yaml", results="results", recipe="scratch", extra=""):
    path = tmp_path / name
    path.write_text(SUITE.format(results=tmp_path / results, recipe=recipe, extra=extra))
    return load_suite(path)


def test_job_ids_follow_the_resolved_recipe_not_the_loop_settings(tmp_path):
    base = plan(make_suite(tmp_path))[0]
    assert base.config["train"]["recipe"]["name"] == "scratch" and base.config["train"]["recipe"]["iters"] == 6
    assert plan(make_suite(tmp_path, extra=", eval_every: 3, eval_split: train"))[0].id == base.id
    assert plan(make_suite(tmp_path, extra=", accumulate: 2"))[0].id != base.id
    assert plan(make_suite(tmp_path, recipe="setr_ade20k"))[0].id != base.id


def test_crashed_training_job_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    straight = run_suite(make_suite(tmp_path, "a.yaml", "straight"))
    assert [r["status"] for r in straight] == ["ok", "ok"]

    original = runner.train

    def crash_after_five(*args, **kwargs):
        kwargs["progress"] = lambda done, loss: (_ for _ in ()).throw(RuntimeError("power cut")) if done == 5 else None
        return original(*args, **kwargs)

    suite = make_suite(tmp_path, "b.yaml", "crashed")
    monkeypatch.setattr(runner, "train", crash_after_five)
    crashed = run_suite(suite)
    assert crashed[0]["status"] == "error" and "power cut" in crashed[0]["error"]["message"]
    monkeypatch.setattr(runner, "train", original)
    rerun = run_suite(suite)
    record = rerun[0]
    assert record["status"] == "ok" and record["resumed_from"] == 4 and record["timings"]["iterations"] == 2
    assert read_log(record["train_log"])[0] == read_log(straight[0]["train_log"])[0]
    assert record["metrics"]["final_loss"] == straight[0]["metrics"]["final_loss"]
    assert rerun[1]["metrics"]["mIoU"] == straight[1]["metrics"]["mIoU"]


def test_periodic_evaluation_is_logged_and_recorded(tmp_path):
    records = run_suite(make_suite(tmp_path, extra=", eval_every: 3, eval_max_images: 2"))
    train = records[0]
    _, evaluations = read_log(train["train_log"])
    assert [e["iter"] for e in evaluations] == [3, 6]
    assert train["metrics"]["val_mIoU"] == evaluations[-1]["eval"]["mIoU"]


@pytest.mark.parametrize("extra, field, message", [
    (", recipe_x: 1", "models.setr.train.recipe_x", "unknown key"),
    (", amp: fp8", "models.setr.train.amp", "bf16 or fp16"),
    (", accumulate: 0", "models.setr.train.accumulate", "must be positive"),
])
def test_bad_train_blocks_are_refused_with_the_field(tmp_path, extra, field, message):
    with pytest.raises(SuiteError, match=message) as error:
        make_suite(tmp_path, extra=extra)
    assert field in str(error.value)


def test_unknown_recipe_is_refused_with_the_list(tmp_path):
    with pytest.raises(SuiteError, match="models.setr.train.recipe: no training recipe named 'setr_imagenet'"):
        make_suite(tmp_path, recipe="setr_imagenet")


def test_cli_train_and_its_usage_errors(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "segbench", "train", "segformer_micro", "--dataset", "synthetic", "--iters", "3",
           "--batch-size", "2", "--crop-size", "32", "--workers", "0", "--out", str(out), "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["recipe"]["name"] == "scratch" and document["resumed_from"] == 0
    assert read_file(document["checkpoint"])["iteration"] == 3
    bad = subprocess.run(cmd[:7] + ["--recipe", "segformer_pascal_context", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no training recipe named" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_encoder_weights_are_listed_with_the_other_inputs(tmp_path):
    from segbench.suite import missing_files

    suite = make_suite(tmp_path, extra=", encoder_init: /nowhere/vit.npz")
    (problem,) = missing_files(suite)
    assert "models.setr.train.encoder_init: file not found: /nowhere/vit.npz" in problem
