"""`segbench run --shard i/N`: jobs dealt out by id, every kind spread evenly; a job waits
for the training job another shard runs; N shards' records equal one process's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segbench.results import write_json_atomic
from segbench.runner import plan, run_suite
from segbench.sharding import ShardError, shard_jobs, trained_elsewhere, training_checkpoint
from segbench.suite import load_suite

SUITE = """\
name: sharded
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 3, image_size: 48}}}}
models:
  a:
    arch: setr_micro_p16_naive
    train: {{dataset: syn, recipe: scratch, iters: 2, batch_size: 2, crop_size: 32, workers: 0}}
  b:
    arch: segformer_micro
    train: {{dataset: syn, recipe: scratch, iters: 2, batch_size: 2, crop_size: 32, workers: 0}}
evaluate:
  - {{dataset: syn, protocol: single_scale, max_images: 2, bootstrap: 0}}
corruption:
  - {{dataset: syn, corruptions: [contrast], severities: [1], max_images: 2}}
"""


def make_suite(tmp_path: Path, results: str) -> Path:
    path = tmp_path / f"{results}.yaml"
    path.write_text(SUITE.format(results=tmp_path / results))
    return path


def test_shards_split_every_kind_evenly_and_cover_the_plan_once(tmp_path):
    jobs = plan(load_suite(make_suite(tmp_path, "r")))
    for count in (1, 2, 3, 4):
        shards = [shard_jobs(jobs, i, count) for i in range(count)]
        ids = [job.id for shard in shards for job in shard]
        assert sorted(ids) == sorted(job.id for job in jobs)  # each job on exactly one shard
        for kind in ("train", "eval", "corruption"):
            sizes = [sum(job.kind == kind for job in shard) for shard in shards]
            assert max(sizes) - min(sizes) <= 1, (count, kind, sizes)
        for shard in shards:  # training first; jobs waiting for another shard's training last
            local = {job.id for job in shard}
            waits = [job.needs is not None and job.needs not in local for job in shard]
            assert waits == sorted(waits)
    # a 1-model sweep spreads over the shards too (by model, it stayed on one)
    corruption = [job for job in jobs if job.kind == "corruption" and job.model == "a"]
    assert len(corruption) == 2 and all(len(shard_jobs(corruption, i, 2)) == 1 for i in range(2))
    # the split depends on the ids only, not on the order the plan lists them in
    assert {j.id for j in shard_jobs(list(reversed(jobs)), 1, 2)} == {j.id for j in shard_jobs(jobs, 1, 2)}


def test_trained_elsewhere_names_the_shard_that_trains(tmp_path):
    jobs = plan(load_suite(make_suite(tmp_path, "r")))
    for index in (0, 1):
        mine = {job.id for job in shard_jobs(jobs, index, 2)}
        elsewhere = trained_elsewhere(jobs, index, 2)
        needed = {job.needs for job in jobs if job.id in mine and job.needs and job.needs not in mine}
        assert set(elsewhere) == needed and set(elsewhere.values()) <= {f"{1 - index}/2"}


def test_a_job_waits_for_another_shards_training_record(tmp_path):
    record = tmp_path / "t1.a.json"
    checkpoint = tmp_path / "train" / "a-t1" / "final.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    writer = threading.Timer(0.3, write_json_atomic, (record, {"status": "ok", "checkpoint": str(checkpoint)}))
    writer.start()
    start = time.monotonic()
    assert training_checkpoint(tmp_path, "t1", "a", "1/2", timeout=10) == checkpoint
    assert 0.2 < time.monotonic() - start < 5
    writer.join()


def test_waiting_ends_with_a_message_naming_the_job_and_the_shard(tmp_path):
    with pytest.raises(ShardError, match=r"t2 of model 'a' \(trained by shard 1/3\) has no record; waited 0 s; "
                                         r"run `segbench run SUITE --shard 1/3`.*--wait-timeout"):
        training_checkpoint(tmp_path, "t2", "a", "1/3", timeout=0.2)
    write_json_atomic(tmp_path / "t3.a.json", {"status": "error", "error": {"message": "out of memory"}})
    with pytest.raises(ShardError, match="t3 of model 'a' .*did not finish \\(out of memory\\); fix it and re-run"):
        training_checkpoint(tmp_path, "t3", "a", "1/3", timeout=60)  # an error record: no waiting
    with pytest.raises(ShardError, match="t2 of model 'a' has no record; it did not finish: run it first"):
        training_checkpoint(tmp_path, "t2", "a")  # trained by this shard: never waits


def _comparable(records: list[dict]) -> dict:
    return {r["job_id"]: (r["kind"], r["model"], r["status"], r.get("metrics")) for r in records}


@pytest.mark.slow  # three runs of the suite, two of them fresh processes: 6-13 s on 2 shared cores
def test_union_of_concurrent_shards_equals_one_process(tmp_path):
    """Two shards as separate processes (as SLURM array tasks run them), started together on
    one results folder: each waits for the other's training where it needs it."""
    assert trained_elsewhere(plan(load_suite(make_suite(tmp_path, "single"))), 0, 2)  # some job has to wait
    single = run_suite(load_suite(make_suite(tmp_path, "single")))
    assert all(r["status"] == "ok" for r in single)
    suite = make_suite(tmp_path, "sharded")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    shards = [subprocess.Popen([sys.executable, "-m", "segbench", "run", str(suite), "--shard", f"{i}/2", "--json",
                                "--wait-timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
              for i in range(2)]
    outputs = [shard.communicate(timeout=300) for shard in shards]
    for shard, (out, err) in zip(shards, outputs):
        assert shard.returncode == 0, err.decode()[-2000:]
    printed = [r for out, _ in outputs for r in json.loads(out)["records"]]
    assert len(printed) == len(single)  # every job ran on exactly one shard
    results = tmp_path / "sharded"
    on_disk = [json.loads(p.read_text()) for p in results.glob("*.json")]  # every record parses whole
    one_process = [json.loads(p.read_text()) for p in (tmp_path / "single").glob("*.json")]
    assert len(one_process) == len(single) and all(r["status"] == "ok" for r in on_disk)
    assert _comparable(on_disk) == _comparable(one_process) == _comparable(printed)
    assert not list(results.rglob("*.tmp"))  # no temporary file left behind
