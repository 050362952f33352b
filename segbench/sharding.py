"""Spreading one suite (or one corruption generation) over machines: ``--shard i/N``.

Jobs are dealt out by id: sorted by (kind, id), the k-th goes to shard k mod N. Every
kind is spread evenly on its own (each shard gets its share of the training jobs, of
the evaluations and of the corruption cells), the split depends on nothing but the ids,
so every machine computes the same split without talking to the others, and one
model's 80-cell Cityscapes-C sweep spreads over N machines. ``segbench corrupt --shard``
deals out images the same way, by image id.

A job whose training job runs on another shard waits for that job's record in the
shared results folder (:func:`training_checkpoint`): shards meet only through files,
which every one writes atomically under a name no other shard writes.
"""
from __future__ import annotations

import time
from pathlib import Path

from segbench.errors import SegbenchError
from segbench.results import find_record

KIND_ORDER = ("train", "eval", "corruption", "profile")
DEFAULT_WAIT_SECONDS = 48 * 3600  # a paper recipe trains for a day or two on one GPU
MAX_POLL_SECONDS = 30.0


class ShardError(SegbenchError):
    """A job cannot go on: the training job it needs, on another shard, failed or never finished."""


def deal(keys, index: int, count: int) -> set:
    """The keys shard ``index`` of ``count`` takes: every count-th of the sorted keys."""
    return set(sorted(keys)[index::count])


def shard_jobs(jobs: list, index: int, count: int) -> list:
    """This shard's jobs in plan order (training before the evaluations that need it), those
    that need a training job of another shard last."""
    mine = deal(((KIND_ORDER.index(job.kind), job.id) for job in jobs), index, count)
    local = [job for job in jobs if (KIND_ORDER.index(job.kind), job.id) in mine]
    ids = {job.id for job in local}
    # jobs that wait for another shard's training go last: this shard's own work first
    return sorted(local, key=lambda job: job.needs is not None and job.needs not in ids)


def trained_elsewhere(jobs: list, index: int, count: int) -> dict[str, str]:
    """Training jobs of this plan that another shard runs, but one of this shard's jobs
    needs: training job id -> "k/N", the shard that runs it."""
    ordered = sorted((KIND_ORDER.index(job.kind), job.id) for job in jobs)
    shard_by_id = {job_id: k % count for k, (_, job_id) in enumerate(ordered)}
    return {job.needs: f"{shard_by_id[job.needs]}/{count}" for job in jobs
            if job.needs and shard_by_id[job.id] == index and shard_by_id[job.needs] != index}


def training_checkpoint(results_dir: Path, train_id: str, model: str, shard: str | None = None,
                        timeout: float = 0.0) -> Path:
    """The checkpoint of training job ``train_id`` from its record. When ``shard`` (the
    "k/N" that trains it) is another one, wait for it to write that record, polling up
    to ``timeout`` seconds."""
    where = f" (trained by shard {shard})" if shard else ""
    timeout = timeout if shard else 0.0
    path = f"{results_dir}/{train_id}.{model}.json"  # for messages: where its record is written
    start, pause = time.monotonic(), 0.5
    while True:
        record = find_record(results_dir, train_id)
        if record is not None and record.get("status") == "ok":
            checkpoint = Path(record["checkpoint"])
            # The record holds the path as the training run saw it (its cwd, its mount); the runner's
            # own layout under the results folder finds it from anywhere else.
            return checkpoint if checkpoint.is_file() else Path(results_dir) / "train" / checkpoint.parent.name / \
                checkpoint.name
        if record is not None:
            raise ShardError(f"{path}: training job {train_id} of model {model!r}{where} did not finish "
                             f"({record.get('error', {}).get('message', 'see the record')}); fix it and re-run "
                             "the shard that trains it, then re-run this one")
        waited = time.monotonic() - start
        if waited >= timeout:
            hint = (f"waited {waited:.0f} s; run `segbench run SUITE --shard {shard}` against the same results "
                    "folder, or give `--wait-timeout` more seconds") if shard else "it did not finish: run it first"
            raise ShardError(f"{path}: training job {train_id} of model {model!r}{where} has no record; {hint}")
        time.sleep(min(pause, timeout - waited))
        pause = min(pause * 2, MAX_POLL_SECONDS)
