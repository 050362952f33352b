"""The harness as the records' single source of truth: one error contract, load-time
validation, job identity (content, not paths or names), explicit random weights, locks
and faults. Micro models on a few tiny synthetic images, untrained unless a test trains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from segbench import runner
from segbench.cli import main
from segbench.errors import ResultsError, SegbenchError
from segbench.identity import ID_VERSION
from segbench.models import create_model
from segbench.models.checkpoints import save_checkpoint
from segbench.results import load_records, read_record, record_path
from segbench.runner import plan, run_suite
from segbench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]
ARCH = "segformer_micro"

SUITE = """\
name: h
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, {dataset}}}
models:
{models}
evaluate:
  - {{dataset: syn, max_images: 2, bootstrap: 0, size_breakdown: false{evaluate}}}
"""


def write_suite(folder: Path, models: str, results: Path, dataset="options: {num_images: 3, image_size: 32}",
                evaluate="", extra="", name="suite.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(extra + SUITE.format(results=results, dataset=dataset, models=models, evaluate=evaluate))
    return path


def checkpoint(path: Path, seed: int, fill: float | None = None) -> str:
    torch.manual_seed(seed)
    model = create_model(ARCH, num_classes=9)
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    save_checkpoint(path, model)
    return str(path)


def computed(records: list[dict]) -> list[str]:
    return [r["model"] for r in records if not r.get("skipped")]


# --- one error contract -------------------------------------------------------------

def test_user_errors_are_one_line_and_exit_2(capsys):
    assert main(["eval", "no_such_model", "--dataset", "synthetic", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segbench: error: segbench eval:") and "unknown model 'no_such_model'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_internal_bugs_keep_their_traceback(monkeypatch):
    # a KeyError from inside segbench is a bug, not "segbench: error: metrics" with exit 2
    def broken(*args, **kwargs):
        raise KeyError("metrics")

    monkeypatch.setattr(runner, "run_single", broken)
    with pytest.raises(KeyError, match="metrics"):
        main(["eval", ARCH, "--dataset", "synthetic", "--random-weights", "--max-images", "1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_one_line(capsys, tmp_path):
    assert main(["eval", ARCH, "--dataset", "synthetic", "--random-weights", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
    path = write_suite(tmp_path, f"  m: {{arch: {ARCH}, weights: random}}", tmp_path / "r").read_text()
    (tmp_path / "gpu.yaml").write_text(path.replace("device: cpu", "device: cuda:0"))
    with pytest.raises(SuiteError, match=r"gpu.yaml:2: device: 'cuda:0' asked for, but torch sees no CUDA"):
        load_suite(tmp_path / "gpu.yaml")


@pytest.mark.parametrize("edit, message", [
    (("device: cpu", "device: gpu"), r"suite.yaml:2: device: expected auto \| cpu \| cuda \| cuda:N, got 'gpu'"),
    (("device: cpu", "device: cpu\nthreads: 0"), r"suite.yaml:3: threads: expected a positive number"),
    (("size_breakdown: false", "size_breakdown: false, scales: [0]"),
     r"suite.yaml:9: evaluate\[0\].scales\[0\]: a test scale is a positive ratio"),
    (("max_images: 2", "max_images: -3"), r"suite.yaml:9: evaluate\[0\].max_images: expected a positive number"),
    (("num_images: 3", "num_images: 0"), r"suite.yaml:5: datasets.syn.options.num_images: expected a positive int"),
    (("  m: {arch: segformer_micro, weights: random}\n", "  {}\n"), r"suite.yaml:6: models: no models"),
    (("models:\n  m: {arch: segformer_micro, weights: random}", "models: {}"), r"suite.yaml:6: models: no models"),
    (("  m: {arch: segformer_micro, weights: random}", "  m:\n    arch: segformer_micro\n    checkpoint:   # TODO"),
     r"suite.yaml:9: models.m.checkpoint: no value given"),
    (("device: cpu", "device: cpu\nseed: 1\nseed: 2"),
     r"suite.yaml:4: seed: duplicate key \(first at line 3\)"),
    (("  m: {arch: segformer_micro, weights: random}", "  m: {arch: segformer_micro}"),
     r"suite.yaml:7: models.m: no weights: give a `checkpoint`, a `train` block, or `weights: random`"),
    (("weights: random}", "weights: random, train: {dataset: syn, iters: 0}}"),
     r"models.m.weights: random weights and a train exclude each other"),
    (("size_breakdown: false", "size_breakdown: false, batch_size: 0"),
     r"evaluate\[0\].batch_size: expected a positive number or auto"),
])
def test_bad_values_are_refused_at_load_with_file_and_line(tmp_path, edit, message):
    path = write_suite(tmp_path, f"  m: {{arch: {ARCH}, weights: random}}", tmp_path / "r")
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(*edit))
    with pytest.raises(SuiteError, match=message):
        load_suite(path)


def test_zero_iterations_and_short_runs(tmp_path, capsys):
    from segbench.engine.train import resolve_recipe

    assert main(["train", ARCH, "--dataset", "synthetic", "--iters", "0", "--out", str(tmp_path / "t")]) == 2
    assert "iters: must be positive, got 0" in capsys.readouterr().err
    # below the warm-up: the warm-up keeps its share of the schedule (scratch: 100 of 800), stated in the recipe
    recipe = resolve_recipe("scratch", "segformer", "synthetic", 128, iters=50)
    assert recipe.warmup_iters == 6 and resolve_recipe("scratch", "segformer", "synthetic", 128).warmup_iters == 100
    assert main(["train", ARCH, "--dataset", "synthetic", "--iters", "2", "--batch-size", "1", "--crop-size", "32",
                 "--workers", "0", "--out", str(tmp_path / "short"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["recipe"]["warmup_iters"] == 0 and "warm-up scaled to 0 of 2 iterations" in record["notes"][0]


def test_nan_logits_are_an_error_record_naming_the_model(tmp_path):
    bad = checkpoint(tmp_path / "nan.pth", 0, fill=float("nan"))
    good = checkpoint(tmp_path / "good.pth", 0)
    path = write_suite(tmp_path, f"  broken: {{arch: {ARCH}, checkpoint: {bad}}}\n"
                                 f"  fine: {{arch: {ARCH}, checkpoint: {good}}}", tmp_path / "r")
    broken, fine = run_suite(load_suite(path))
    assert broken["status"] == "error" and fine["status"] == "ok"  # the suite goes on
    assert broken["error"]["type"] == "NonFiniteLogits"
    assert "model 'broken' (segformer_micro) gave NaN or infinite logits on 2 of 2 images" in broken["error"]["message"]


# --- job identity ---------------------------------------------------------------------

def test_adding_a_model_reruns_nothing_else(tmp_path):
    one = f"  a: {{arch: {ARCH}, checkpoint: {checkpoint(tmp_path / 'a.pth', 0)}}}"
    two = one + f"\n  b: {{arch: {ARCH}, checkpoint: {checkpoint(tmp_path / 'b.pth', 1)}}}"
    assert computed(run_suite(load_suite(write_suite(tmp_path, one, tmp_path / "r")))) == ["a"]
    assert computed(run_suite(load_suite(write_suite(tmp_path, two, tmp_path / "r")))) == ["b"]


def test_another_cwd_and_a_symlinked_data_root_reuse_every_record(tmp_path, monkeypatch):
    from segbench.data.datasets import materialize_synthetic

    data = materialize_synthetic(tmp_path / "data", {"val": 2}, image_size=32)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "data").symlink_to(data)
    (tmp_path / "mnt" / "weights").symlink_to(tmp_path)
    checkpoint(tmp_path / "a.pth", 0)
    results = tmp_path / "shared-results"
    first = write_suite(tmp_path / "here", f"  a: {{arch: {ARCH}, checkpoint: {tmp_path / 'a.pth'}}}", results,
                        dataset=f"root: {data}")
    monkeypatch.chdir(tmp_path / "here")
    assert computed(run_suite(load_suite(first))) == ["a"]
    other = write_suite(tmp_path / "there", "  a: {arch: %s, checkpoint: ../mnt/weights/a.pth}" % ARCH, results,
                        dataset="root: ../mnt/data")
    monkeypatch.chdir(tmp_path / "there")
    again = run_suite(load_suite(other))
    assert computed(again) == [] and again[0]["metrics"]["mIoU"] is not None


def test_a_checkpoint_retrained_into_the_same_path_is_not_reused(tmp_path):
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, checkpoint: {checkpoint(tmp_path / 'a.pth', 0)}}}",
                       tmp_path / "r")
    (first,) = run_suite(load_suite(path))
    time.sleep(0.01)  # a new mtime even on coarse clocks
    checkpoint(tmp_path / "a.pth", 1)
    (second,) = run_suite(load_suite(path))
    assert not second.get("skipped") and second["job_id"] != first["job_id"]
    assert second["checkpoint_sha256"] != first["checkpoint_sha256"]


def test_each_suite_model_gets_its_own_record_and_a_renamed_one_its_new_name(tmp_path):
    weights = checkpoint(tmp_path / "a.pth", 0)
    both = f"  baseline: {{arch: {ARCH}, checkpoint: {weights}}}\n  candidate: {{arch: {ARCH}, checkpoint: {weights}}}"
    records = run_suite(load_suite(write_suite(tmp_path, both, tmp_path / "r")))
    assert [r["model"] for r in records] == ["baseline", "candidate"] and computed(records) == ["baseline"]
    assert records[0]["job_id"] == records[1]["job_id"]
    assert sorted(r["model"] for r in load_records(tmp_path / "r")) == ["baseline", "candidate"]
    renamed = run_suite(load_suite(write_suite(tmp_path, f"  final: {{arch: {ARCH}, checkpoint: {weights}}}",
                                               tmp_path / "r")))
    assert renamed[0]["model"] == "final" and renamed[0]["skipped"]
    assert read_record(record_path(tmp_path / "r", renamed[0]["job_id"], "final"))["model"] == "final"


def test_ids_leave_out_the_block_models_and_workers(tmp_path):
    models = f"  a: {{arch: {ARCH}, weights: random}}\n  b: {{arch: {ARCH}, weights: random, num_classes: 4}}"
    base = {j.model: j.id for j in plan(load_suite(write_suite(tmp_path, models, tmp_path / "r")))}
    only_a = plan(load_suite(write_suite(tmp_path, models, tmp_path / "r", evaluate=", models: [a], workers: 2")))
    assert [(j.model, j.id) for j in only_a] == [("a", base["a"])]
    amp = plan(load_suite(write_suite(tmp_path, models, tmp_path / "r", evaluate=", amp: bf16")))
    assert all(j.id != base[j.model] for j in amp)
    assert all(j.identity["dataset"] == {"kind": "synthetic", "split": "val",
                                         "options": {"num_images": 3, "image_size": 32}} for j in amp)


def test_records_of_the_old_id_scheme_are_refused_with_what_to_do(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    (results / "0123456789abcdef.json").write_text(json.dumps({"schema": 1, "job_id": "0123456789abcdef",
                                                               "kind": "eval", "status": "ok"}))
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", results)
    with pytest.raises(ResultsError, match=rf"scheme 1, this segbench uses scheme {ID_VERSION}.*Move them aside"):
        run_suite(load_suite(path))


# --- explicit random weights ----------------------------------------------------------

def test_random_weights_are_explicit_recorded_and_drawn_from_the_seed(tmp_path, capsys):
    assert main(["eval", ARCH, "--dataset", "synthetic", "--max-images", "1"]) == 2
    assert "no weights; give --checkpoint FILE, or --random-weights" in capsys.readouterr().err
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "r")
    torch.manual_seed(1)
    (first,) = run_suite(load_suite(path), force=True)
    torch.manual_seed(2)  # the global generator's state does not matter
    (second,) = run_suite(load_suite(path), force=True)
    assert first["random_weights"] is True and first["config"]["random_weights"] is True
    assert first["metrics"]["mIoU"] == second["metrics"]["mIoU"]


@pytest.mark.slow
def test_random_weights_give_the_same_miou_in_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "segbench", "eval", ARCH, "--dataset", "synthetic", "--random-weights",
           "--max-images", "2", "--bootstrap", "0", "--no-size", "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True) for _ in range(2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["metrics"]["mIoU"] == second["metrics"]["mIoU"] and first["job_id"] == second["job_id"]


# --- one path per job -----------------------------------------------------------------

def test_cli_and_suite_run_the_same_job(tmp_path, capsys):
    path = write_suite(tmp_path, f"  {ARCH}: {{arch: {ARCH}, weights: random}}", tmp_path / "r", dataset="",
                       evaluate=", per_image: false")
    (suite_record,) = run_suite(load_suite(path))
    assert main(["eval", ARCH, "--dataset", "synthetic", "--random-weights", "--max-images", "2", "--bootstrap", "0",
                 "--no-size", "--out", str(tmp_path / "cli.json"), "--json"]) == 0
    cli_record = json.loads(capsys.readouterr().out)
    assert cli_record["job_id"] == suite_record["job_id"] and cli_record["identity"] == suite_record["identity"]
    assert cli_record["metrics"]["mIoU"] == suite_record["metrics"]["mIoU"]
    assert read_record(tmp_path / "cli.json")["job_id"] == cli_record["job_id"]
    timings = cli_record["timings"]  # warm-up images are timed apart (detectron2's inference_on_dataset)
    assert timings["images"] == 2 and timings["warmup_images"] == 1 and timings["compile_seconds"] is None


# --- faults ---------------------------------------------------------------------------

def test_an_unwritable_results_folder_is_found_before_any_job(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "file" / "results")
    monkeypatch.setattr(runner.Runner, "run", lambda *a, **k: pytest.fail("a job ran"))
    with pytest.raises(ResultsError, match="results folder is not writable"):
        run_suite(load_suite(path))


def test_a_failed_record_write_keeps_the_record_and_says_where(tmp_path, monkeypatch):
    from segbench import results

    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "r")
    real = results.write_json_atomic

    def full_disk(target, data):
        if Path(target).parent == tmp_path / "r":
            raise OSError(28, "No space left on device")
        real(target, data)

    monkeypatch.setattr(results, "write_json_atomic", full_disk)
    with pytest.raises(ResultsError, match="No space left on device.*kept at") as caught:
        run_suite(load_suite(path))
    kept = Path(str(caught.value).split("kept at ")[1].split(":")[0])
    assert read_record(kept)["status"] == "ok" and read_record(kept)["model"] == "a"


def test_an_unreadable_record_is_an_error_naming_it(tmp_path):
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "r")
    (job,) = plan(load_suite(path))
    record_path(tmp_path / "r", job.id, "a").mkdir(parents=True)  # readable by nobody as a file, root included
    with pytest.raises(ResultsError, match=rf"{job.id}.a.json: cannot read this record"):
        run_suite(load_suite(path))


def test_a_job_held_by_a_live_process_is_waited_for_and_a_stale_lock_taken_over(tmp_path, monkeypatch):
    from segbench.locks import try_lock

    monkeypatch.setattr(runner, "LOCK_POLL_SECONDS", 0.05)
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "r")
    suite = load_suite(path)
    (job,) = plan(suite)
    # a finished record from "another process", which holds the lock until it has written it
    (done,) = run_suite(suite)
    finished = tmp_path / "finished.json"
    record_path(tmp_path / "r", job.id, "a").rename(finished)
    lock = try_lock(tmp_path / "r", job.id)
    assert lock is not None and try_lock(tmp_path / "r", job.id) is None

    def other_process_finishes():
        time.sleep(0.3)
        finished.rename(record_path(tmp_path / "r", job.id, "a"))
        lock.unlink()

    monkeypatch.setattr(runner.Runner, "run", lambda *a, **k: pytest.fail("computed a job another process holds"))
    threading.Thread(target=other_process_finishes).start()
    (waited,) = run_suite(suite)
    assert waited["skipped"] and waited["started"] == done["started"]
    monkeypatch.undo()
    # a lock left by a dead process (kill -9) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "r" / ".locks" / f"{job.id}.lock").write_text(json.dumps({"host": os.uname().nodename,
                                                                          "pid": dead.pid}))
    (rerun,) = run_suite(suite, force=True)
    assert rerun["status"] == "ok" and not rerun.get("skipped")


@pytest.mark.slow
def test_two_runs_on_one_folder_compute_each_job_once(tmp_path):
    models = "\n".join(f"  m{i}: {{arch: {ARCH}, weights: random, num_classes: {3 + i}}}" for i in range(4))
    path = write_suite(tmp_path, models, tmp_path / "r")
    cmd = [sys.executable, "-m", "segbench", "run", str(path), "--json", "--no-report"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outputs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    documents = [json.loads(out) for out, _ in outputs]
    ran = [r["model"] for d in documents for r in d["records"] if not r.get("skipped")]
    assert sorted(ran) == ["m0", "m1", "m2", "m3"]


def test_torn_log_tail_is_dropped_and_noted_damage_elsewhere_is_an_error(tmp_path):
    from segbench.engine.train import TrainError, log_notes, read_log

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"iter": 1, "loss": 2.0}\n{"iter": 2, "loss": 1.5}\n{"iter": 3, "lo')
    assert read_log(log) == ([2.0, 1.5], []) and "train_log.jsonl:3: torn last line" in log_notes(log)[0]
    log.write_text('{"iter": 1, "loss": 2.0}\n{"iter": 2, "lo\n{"iter": 3, "loss": 1.0}\n')
    with pytest.raises(TrainError, match=r"train_log.jsonl:2: not a log entry"):
        read_log(log)


def test_ctrl_c_during_training_saves_a_checkpoint(tmp_path):
    from segbench.data.datasets import build_dataset
    from segbench.engine.train import LoopOptions, build_model, resolve_recipe, train
    from segbench.models.checkpoints import read_file

    recipe = resolve_recipe("scratch", "segformer", "synthetic", 128, iters=6, batch_size=1, crop_size=32)
    model = build_model(ARCH, 9, recipe)

    def interrupt(iteration, loss):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, build_dataset("synthetic", "train", num_images=2, image_size=32), recipe, tmp_path, "cpu",
              LoopOptions(checkpoint_every=1000), progress=interrupt)
    assert read_file(tmp_path / "last.pth")["iteration"] == 3


def test_train_out_on_a_file_and_a_resume_with_other_settings(tmp_path, capsys):
    base = ["train", ARCH, "--dataset", "synthetic", "--iters", "2", "--batch-size", "1", "--crop-size", "32",
            "--workers", "0"]
    (tmp_path / "file").write_text("")
    assert main(base + ["--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "must be a folder" in err and err.count("\n") == 1
    assert main(base + ["--out", str(tmp_path / "run"), "--json"]) == 0
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "run"), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "belongs to a run with another recipe" in err and "--no-resume" in err and err.count("\n") == 1


def test_suite_threads_are_set_and_recorded(tmp_path):
    path = write_suite(tmp_path, f"  a: {{arch: {ARCH}, weights: random}}", tmp_path / "r", extra="threads: 1\n")
    before = torch.get_num_threads()
    try:
        (record,) = run_suite(load_suite(path))
    finally:
        torch.set_num_threads(before)
    assert record["env"]["threads"] == 1 and record["identity"]["threads"] == 1
    assert load_suite(ROOT / "suites" / "quickstart.yaml").threads == 1


def test_every_user_error_class_is_a_segbench_error():
    from segbench.data.datasets import DatasetError
    from segbench.devices import DeviceError
    from segbench.engine.train import TrainError
    from segbench.models.checkpoints import CheckpointError
    from segbench.regression import CheckError
    from segbench.robustness.corruptions import CorruptionError

    for cls in (SuiteError, DatasetError, CheckpointError, CorruptionError, CheckError, DeviceError, TrainError,
                ResultsError, runner.NonFiniteLogits):
        assert issubclass(cls, SegbenchError), cls


# --- records as a schema ---------------------------------------------------------------

def test_every_record_kind_fits_its_schema(tmp_path, capsys):
    from segbench.results import SCHEMA_VERSION, load_records, record_problems, validate_record

    suite = """\
name: kinds
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 2, image_size: 32}}}}
models:
  t: {{arch: {arch}, train: {{dataset: syn, iters: 1, batch_size: 1, crop_size: 32, workers: 0}}}}
  r: {{arch: {arch}, weights: random}}
evaluate:
  - {{dataset: syn, max_images: 1, bootstrap: 0}}
corruption:
  - {{dataset: syn, max_images: 1, bootstrap: 0, corruptions: [fog], severities: [1], models: [r]}}
profile:
  - {{dataset: syn, sizes: [32x32], runs: 1, warmup: 0, fvcore: false, pipeline: false, models: [r]}}
"""
    path = tmp_path / "kinds.yaml"
    path.write_text(suite.format(results=tmp_path / "r", arch=ARCH))
    records = run_suite(load_suite(path))
    assert {r["kind"] for r in records} == {"train", "eval", "corruption", "profile"}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    for record in load_records(tmp_path / "r"):
        assert record_problems(record) == [] and record["schema"] == SCHEMA_VERSION
        assert "/" not in record["dataset"] and record["dataset"] == "synthetic"
    (tmp_path / "scores").mkdir()
    assert main(["eval", "--predictions", str(tmp_path / "scores"), "--dataset", "synthetic"]) == 2  # no PNGs
    broken = {**records[1], "random_weights": "no"}
    del broken["metrics"]
    with pytest.raises(SegbenchError, match=r"no field 'metrics'; random_weights: 'no' is not <class 'bool'>"):
        validate_record(broken)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x.json").write_text(json.dumps({**records[0], "schema": 1}))
    with pytest.raises(ResultsError, match=r"record schema 1, this segbench reads schema 2"):
        load_records(tmp_path / "old")


def test_bench_without_transformers_names_the_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    assert main(["bench", "--quick"]) == 2
    assert "pip install 'segbench[test]'" in capsys.readouterr().err


def test_a_trained_checkpoint_is_found_from_another_cwd_through_the_results_folder(tmp_path, monkeypatch):
    train = f"  t: {{arch: {ARCH}, train: {{dataset: syn, iters: 1, batch_size: 1, crop_size: 32, workers: 0}}}}"
    first = write_suite(tmp_path / "a", train, "results")
    monkeypatch.chdir(tmp_path / "a")
    assert [r["status"] for r in run_suite(load_suite(first))] == ["ok", "ok"]
    grown = write_suite(tmp_path / "b", train, "../a/results", evaluate=", split: train")  # a new eval job
    monkeypatch.chdir(tmp_path / "b")
    records = run_suite(load_suite(grown))
    assert [(r["kind"], r.get("skipped", False), r["status"]) for r in records] == [("train", True, "ok"),
                                                                                  ("eval", False, "ok")]


def test_cli_eval_records_the_checkpoint_load_report_and_refuses_no_images(tmp_path, capsys):
    weights = checkpoint(tmp_path / "a.pth", 0)
    assert main(["eval", ARCH, "--dataset", "synthetic", "--checkpoint", weights, "--max-images", "0"]) == 2
    assert "--max-images takes a positive number, got 0" in capsys.readouterr().err
    assert main(["eval", ARCH, "--dataset", "synthetic", "--checkpoint", weights, "--max-images", "1",
                 "--bootstrap", "0", "--no-size", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["checkpoint_load"]["format"] == "segbench-v1" and record["checkpoint_load"]["complete"] is True
    assert record["random_weights"] is False and record["checkpoint_sha256"]


def test_checkpoint_hashes_are_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib

    from segbench import identity

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    reads = []
    real = hashlib.sha256
    monkeypatch.setattr(identity.hashlib, "sha256", lambda *a: reads.append(1) or real(*a))
    first = identity.file_sha256(path)
    assert identity.file_sha256(path) == first and len(reads) == 1  # a sweep's hundred cells: one read
    path.write_bytes(b"b" * 1000)  # same size, rewritten in place
    assert identity.file_sha256(path) == real(b"b" * 1000).hexdigest() and len(reads) == 2
