"""Run a suite: expand it into jobs, run the ones not yet finished, write one record each.

This is the one path every job takes: ``segbench run`` runs a suite's jobs, and ``segbench
eval`` / ``train`` / ``profile`` build a one-job suite from their arguments and run that job
here, so the same job gives the same record and the same id either way.

A job's id is a hash of what determines its numbers (segbench.identity), so re-running a
suite skips finished jobs, a changed setting gets a new id, and growing a suite (another
model, another block) recomputes nothing already done. A failing job becomes an error
record and the suite goes on; a record is written atomically when its job ends, so Ctrl-C
or a crash loses nothing already finished. Each job is locked while it runs
(segbench.locks): a second ``segbench run`` on the same results folder works on other jobs
and picks up the held ones' records when their owner finishes.

``--shard i/N`` deals the jobs out by id (segbench.sharding); a job whose training job
runs on another shard waits for that job's record in the shared results folder.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from segbench import dist
from segbench.data.datasets import DatasetError, build_dataset, dataset_classes
from segbench.devices import resolve_device
from segbench.engine.evaluate import collect_results, evaluate, standard_evaluators
from segbench.engine.inference import Protocol
from segbench.engine.protocols import paper_protocol
from segbench.engine.train import (LoopOptions, build_model, initialise_encoder, log_notes, read_log,
                                   recipe_from_dict, recipe_notes, suite_recipe, train)
from segbench.errors import ResultsError, SegbenchError
from segbench.identity import ID_VERSION, dataset_identity, file_sha256, job_id
from segbench.locks import release, try_lock
from segbench.metrics.stats import save_per_image
from segbench.models import create_model, custom
from segbench.models.checkpoints import load_model
from segbench.profiling import parse_size, profile_model
from segbench.report.previews import PreviewWriter
from segbench.results import (check_writable, environment, find_record, new_record, now, read_record, record_path,
                              validate_record, write_record)
from segbench.robustness.corruptions import corruption_grid, grid_cells
from segbench.robustness.sweep import CLEAN, CorruptionCache, corrupted_view, source_of, sweep_key, write_preview
from segbench.sharding import DEFAULT_WAIT_SECONDS, shard_jobs, trained_elsewhere, training_checkpoint
from segbench.suite import Suite, locate, missing_files

LOCK_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Job:
    kind: str  # "train" | "eval" | "corruption" | "profile"
    model: str  # the suite's model key: the record's name, not part of the id
    config: dict = field(hash=False)  # every setting the job runs with (recorded)
    identity: dict = field(hash=False, default_factory=dict)  # what changes its numbers: hashed into the id
    needs: str | None = None  # id of the training job whose checkpoint this job uses
    meta: dict = field(default_factory=dict, hash=False)  # recorded, not in the id (a sweep's cell, grid)

    @property
    def id(self) -> str:
        return job_id(self.kind, self.identity)


def num_classes_of(suite: Suite, dataset_key: str) -> int:
    spec = suite.datasets[dataset_key]
    return len(dataset_classes(spec.kind, spec.root, spec.options))


def _pinned(suite: Suite) -> dict:
    """Suite settings that change every job's numbers when set (the thread count)."""
    return {"threads": suite.threads} if suite.threads is not None else {}


def plan(suite: Suite) -> list[Job]:
    """All jobs of a suite, training before the evaluations that need it."""
    jobs: list[Job] = []
    train_ids: dict[str, str] = {}
    for key, spec in suite.models.items():
        if spec.train is None:
            continue
        t = spec.train
        num_classes = spec.num_classes or num_classes_of(suite, t.dataset)
        recipe = suite_recipe(spec, suite.datasets[t.dataset].kind, num_classes)
        # What decides the weights: the resolved recipe (so a changed recipe retrains), and the
        # loop settings that change the numbers; not workers, checkpoint or evaluation intervals.
        changes = {k: v for k, v in (("accumulate", t.accumulate if t.accumulate != 1 else None), ("amp", t.amp))
                   if v is not None}
        if t.encoder_init and Path(t.encoder_init).is_file():
            changes["encoder_init_sha256"] = file_sha256(t.encoder_init)
        config = {"arch": spec.arch, "num_classes": num_classes, "seed": suite.seed,
                  "dataset": asdict(suite.datasets[t.dataset]), "split": t.split,
                  "train": {**asdict(t), "recipe": asdict(recipe)}}
        identity = {"arch": spec.arch, "num_classes": num_classes, "seed": suite.seed,
                    "dataset": dataset_identity(suite.datasets[t.dataset], t.split), "recipe": asdict(recipe),
                    **changes, **_pinned(suite)}
        if custom.is_custom(spec.arch):
            identity["code"] = custom.fingerprint(spec.arch)
        job = Job("train", key, config, identity)
        jobs.append(job)
        train_ids[key] = job.id
    for spec in suite.evaluate:
        settings = asdict(spec)
        for key in spec.models or tuple(suite.models):
            weights, identity = _model_part(suite, key, spec.dataset, train_ids)
            config = {**weights, "dataset": asdict(suite.datasets[spec.dataset]), "eval": settings}
            previews = {"previews": spec.previews} if spec.previews else {}  # its record lists them: re-run to get them
            jobs.append(Job("eval", key, config, {**identity, **_eval_identity(suite, spec), **previews},
                            needs=train_ids.get(key)))
    for spec in suite.corruption:
        # One job per (model, corruption, severity) and one on clean images. The grid and the
        # reference model are not part of a cell's id: growing a sweep recomputes nothing.
        grid = corruption_grid(spec.corruptions, spec.severities)
        settings = {k: v for k, v in asdict(spec).items()
                    if k not in ("models", "corruptions", "severities", "reference", "previews")}
        # a written cache and on-the-fly corruption are the same pixels by design, but the record
        # says which was read: the choice is part of the id, the cache's path is not
        evaluation = {**_eval_identity(suite, spec), "corrupted_images": "cache" if spec.root else "on_the_fly"}
        sweep = {"key": sweep_key(evaluation["dataset"], evaluation), "grid": {c: list(s) for c, s in grid.items()},
                 "reference": spec.reference}  # as a record holds it: a reused record's is compared with it
        for key in spec.models or tuple(suite.models):
            weights, identity = _model_part(suite, key, spec.dataset, train_ids)
            config = {**weights, "dataset": asdict(suite.datasets[spec.dataset]), "eval": settings}
            for corruption, severity in [(CLEAN, 0), *grid_cells(grid)]:
                cell = {"corruption": corruption, "severity": severity}
                jobs.append(Job("corruption", key, {**config, "cell": cell}, {**identity, **evaluation, "cell": cell},
                                needs=train_ids.get(key), meta={**cell, "sweep": sweep}))
    device = resolve_device(suite.device, f"{suite.path}: device") if suite.profile else None
    for spec in suite.profile:
        # Costs need no trained weights: profile jobs build the architecture and never wait for training.
        settings = {k: v for k, v in asdict(spec).items() if k not in ("dataset", "sizes", "models")}
        for key in spec.models or tuple(suite.models):
            model = suite.models[key]
            num_classes = model.num_classes or num_classes_of(suite, spec.dataset)
            for size in spec.sizes:
                jobs.append(profile_job(key, model.arch, num_classes, suite.datasets[spec.dataset].kind, device,
                                        parse_size(size), settings, suite.threads))
    return jobs


def profile_job(model: str, arch: str, num_classes: int, dataset_kind: str, device: str, size: tuple[int, int],
                settings: dict, threads: int | None = None) -> Job:
    """The job of one profile record: a model at one input size on one device (CPU and GPU
    records never share an id), with the timing settings of ``profiling.profile_model``."""
    height, width = size
    config = {"arch": arch, "num_classes": num_classes, "dataset": dataset_kind, "device": device,
              "profile": {"height": height, "width": width, **settings}}
    return Job("profile", model, config, {**config, **({"threads": threads} if threads is not None else {})})


def _model_part(suite: Suite, key: str, dataset: str, train_ids: dict[str, str]) -> tuple[dict, dict]:
    """Which weights meet which class count: (config, identity). The identity names the
    weights by content: the training job that writes them, the checkpoint's sha256, or
    random ones (drawn from the suite's seed, which every eval identity holds)."""
    model = suite.models[key]
    num_classes = model.num_classes or num_classes_of(suite, dataset)
    config = {"arch": model.arch, "num_classes": num_classes}
    if key in train_ids:
        config["trained_by"] = weights = train_ids[key]
    elif model.checkpoint is not None:
        config["checkpoint"] = model.checkpoint
        # a missing file is reported by check_inputs before anything runs
        weights = file_sha256(model.checkpoint) if Path(model.checkpoint).is_file() else f"missing {model.checkpoint}"
    elif custom.carries_weights(model.arch):
        weights = "in the model folder"  # its files are in the identity's "code"
    else:
        config["random_weights"] = True
        weights = "random"
    identity = {"arch": model.arch, "num_classes": num_classes, "weights": weights}
    if custom.is_custom(model.arch):
        identity["code"] = custom.fingerprint(model.arch)
    if model.allow_partial:
        config["allow_partial"] = identity["allow_partial"] = True
    return config, identity


def _eval_identity(suite: Suite, spec) -> dict:
    """What of an evaluation block changes its numbers: not its `models`, workers, batch
    size, per-image files or previews."""
    protocol = {k: getattr(spec, k) for k in ("protocol", "mode", "window", "stride", "scales", "flip")}
    return {"dataset": dataset_identity(suite.datasets[spec.dataset], spec.split), "protocol": protocol,
            "max_images": spec.max_images, "seed": suite.seed, "amp": spec.amp, "compile": spec.compile,
            "metrics": {"size_breakdown": spec.size_breakdown, "bootstrap": spec.bootstrap}, **_pinned(suite)}


def check_inputs(suite: Suite, jobs: list[Job]) -> list[str]:
    """Every missing or malformed input of these jobs (checkpoint files, dataset folders),
    found before any job runs, each message located in the suite file."""
    problems, seen = [], set()
    for job in jobs:
        if job.kind == "profile":
            continue  # a synthetic input: no dataset files needed
        config = job.config
        split = config["train"]["split"] if job.kind == "train" else config["eval"]["split"]
        spec = config["dataset"]
        key = next(k for k, d in suite.datasets.items() if asdict(d) == spec)
        if (key, split) in seen:
            continue
        seen.add((key, split))
        try:
            build_dataset(spec["kind"], split, spec["root"], **spec["options"])
        except (DatasetError, TypeError) as exc:
            problems.append(locate(suite, f"datasets.{key}.root", f"{spec['kind']} ({split}): {exc}"))
    return problems + missing_files(suite)


class NonFiniteLogits(SegbenchError):
    """A model whose outputs are NaN or infinite (e.g. all-NaN weights): no mIoU to report."""


class Runner:
    def __init__(self, suite: Suite, device: str, results_dir: Path, console=None, progress=None,
                 trained_elsewhere: dict[str, str] | None = None, wait_timeout: float = DEFAULT_WAIT_SECONDS):
        self.suite, self.device, self.results_dir = suite, device, Path(results_dir)
        self.console, self.progress = console, progress
        # training job id -> the shard ("k/N") that runs it, for this shard's jobs that wait for it
        self.trained_elsewhere, self.wait_timeout = trained_elsewhere or {}, wait_timeout
        self._model_cache: tuple[tuple, torch.nn.Module, object] | None = None

    def run_train(self, job: Job, out: Path | None = None, resume: bool = True) -> dict:
        """Train (or, after a crash, continue training) the job's model; its files go to ``out``,
        by default results/train/<model>-<job id>/ (final.pth, last.pth, train_log.jsonl)."""
        config, spec = job.config, self.suite.models[job.model].train
        data = config["dataset"]
        dataset = build_dataset(data["kind"], spec.split, data["root"], **data["options"])
        eval_dataset = build_dataset(data["kind"], spec.eval_split, data["root"], **data["options"]) \
            if spec.eval_every else None
        recipe = recipe_from_dict(config["train"]["recipe"])
        model = build_model(config["arch"], config["num_classes"], recipe, seed=config["seed"])
        notes = recipe_notes(recipe) + (initialise_encoder(model, spec.encoder_init) if spec.encoder_init else [])
        options = LoopOptions(seed=config["seed"], accumulate=spec.accumulate, amp=spec.amp, workers=spec.workers,
                              checkpoint_every=spec.checkpoint_every, eval_every=spec.eval_every,
                              eval_max_images=spec.eval_max_images, resume=resume)
        task = self._task(f"train {job.model}", recipe.iters)
        show = (lambda i, loss: self.progress.update(task, completed=i, description=f"train {job.model} loss {loss:.3f}")
                ) if self.progress is not None else None
        out = out or self.results_dir / "train" / f"{job.model}-{job.id}"
        summary = train(model, dataset, recipe, out, self.device, options, eval_dataset, progress=show)
        losses, evaluations = read_log(summary.log)
        tail = losses[-max(len(losses) // 10, 1):]
        metrics = {"first_loss": losses[0] if losses else None,
                   "final_loss": sum(tail) / len(tail) if tail else None}
        if evaluations:
            metrics.update({f"val_{k}": v for k, v in evaluations[-1]["eval"].items()})
        ran = recipe.iters - summary.resumed_from
        return {"checkpoint": str(summary.checkpoint), "checkpoint_sha256": file_sha256(summary.checkpoint),
                "recipe": asdict(recipe), "dataset": dataset.title, "split": spec.split, "metrics": metrics,
                "train_log": str(summary.log), "resumed_from": summary.resumed_from,
                "notes": notes + summary.notes + log_notes(summary.log),
                "timings": {"seconds": summary.seconds, "iterations": ran,
                            "seconds_per_iter": summary.seconds / ran if ran else None,
                            "data_wait_seconds": summary.data_seconds}}

    def load(self, job: Job) -> tuple[torch.nn.Module, str | None]:
        config = job.config
        checkpoint = str(self.checkpoint_path_of(job)) if job.needs else config.get("checkpoint")
        key = (config["arch"], checkpoint, config["num_classes"], config.get("allow_partial", False))
        if self._model_cache is None or self._model_cache[0] != key:
            if config.get("random_weights"):
                # Drawn from the suite's seed: the same job gives the same weights in every process.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.suite.seed)
                    model, report = create_model(config["arch"], num_classes=config["num_classes"]), None
            else:
                model, report = load_model(config["arch"], checkpoint, config["num_classes"], key[3])
            self._model_cache = (key, model.to(self.device).eval(), report)
        return self._model_cache[1], checkpoint

    def load_report(self) -> dict | None:
        """How the cached model's checkpoint loaded (format, ignored / missing keys), for the record."""
        report = self._model_cache[2] if self._model_cache else None
        return None if report is None else {"format": report.format, "complete": report.complete,
                                            "summary": report.summary(), "notes": report.notes}

    def checkpoint_path_of(self, job: Job) -> Path:
        return training_checkpoint(self.results_dir, job.needs, job.model, self.trained_elsewhere.get(job.needs),
                                   self.wait_timeout)

    def protocol_for(self, model, dataset, spec: dict) -> Protocol:
        protocol = paper_protocol(model.info, dataset, multi_scale=spec["protocol"] == "multi_scale")
        overrides = {k: spec[k] for k in ("mode", "window", "stride", "scales", "flip") if spec[k] is not None}
        if "scales" in overrides:
            overrides["scales"] = tuple(overrides["scales"])
        if overrides.get("mode") == "slide":
            overrides.setdefault("window", protocol.window or model.info.crop_size)
            overrides.setdefault("stride", protocol.stride or overrides["window"] * 2 // 3)
        if overrides:
            shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
            overrides["source"] = f"{protocol.source}; overridden by the suite: {shown}"
        protocol = Protocol(**{**asdict(protocol), **overrides})
        if spec.get("batch_size", "auto") == "auto":
            from segbench.engine.evaluate import device_batch_size

            return Protocol(**{**asdict(protocol), "batch_size": device_batch_size(model, protocol, self.device,
                                                                                   spec.get("amp"))})
        return Protocol(**{**asdict(protocol), "batch_size": spec["batch_size"]})

    def run_eval(self, job: Job) -> dict:
        return self._evaluate(job, f"eval {job.model} {job.config['eval']['protocol']}")[0]

    def run_corruption(self, job: Job) -> dict:
        spec, cell = job.config["eval"], job.config["cell"]
        cache = CorruptionCache(spec["root"], job.config["dataset"]["kind"], spec["split"]) if spec["root"] else None
        name = f"{cell['corruption']}-{cell['severity']}"
        result, dataset = self._evaluate(job, f"{job.model} {name}", lambda clean: corrupted_view(
            clean, cell["corruption"], cell["severity"], cache))
        preview = Path("previews") / job.meta["sweep"]["key"] / f"{name}.png"  # for the report's image grid
        if dist.is_main() and not (self.results_dir / preview).exists():  # the same for every model
            write_preview(self.results_dir / preview, dataset[0].image)
        return {**result, "preview": str(preview), "source": source_of(cell["corruption"], cache)}

    def _evaluate(self, job: Job, description: str, view=None) -> tuple[dict, object]:
        """Evaluate the job's model on its dataset (or ``view(dataset)``): record fields, dataset."""
        config, spec = job.config, job.config["eval"]
        dataset = build_dataset(config["dataset"]["kind"], spec["split"], config["dataset"]["root"],
                                **config["dataset"]["options"])
        model, checkpoint = self.load(job)
        protocol = self.protocol_for(model, dataset, spec)
        dataset = view(dataset) if view else dataset
        evaluators = standard_evaluators(dataset, spec["size_breakdown"], spec["bootstrap"], self.suite.seed,
                                         spec["boundary"], spec["calibration"], spec["boundary_dilation"])
        count = len(dataset) if spec["max_images"] is None else min(spec["max_images"], len(dataset))
        task = self._task(description, count)
        previews = []  # opt-in: the first predictions as PNGs, for the report's overlays
        if spec.get("previews") and dist.is_main():
            previews = [PreviewWriter(self.results_dir, job.id, job.identity["dataset"], spec["previews"],
                                      dataset.palette)]
        timing = evaluate(model, dataset, protocol, evaluators + previews, self.device, spec["max_images"],
                          progress=lambda: self._advance(task), workers=spec.get("workers", 0), amp=spec.get("amp"),
                          compile=spec.get("compile", False))
        if timing.non_finite:
            raise NonFiniteLogits(f"model {job.model!r} ({config['arch']}) gave NaN or infinite logits on "
                                  f"{timing.non_finite} of {timing.images} images: check its weights"
                                  + (f" ({checkpoint})" if checkpoint else ""))
        per_image_file = None
        if spec["per_image"]:  # per-image counts beside the record, for `segbench compare`
            per_image_file = f"{job.id}.per_image.npz"
            if dist.is_main():
                save_per_image(self.results_dir / per_image_file, evaluators[0].per_image, dataset.classes)
        return {"checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
                "checkpoint_load": self.load_report(), "random_weights": bool(config.get("random_weights")),
                "dataset": dataset.title, "split": spec["split"], "protocol_name": spec["protocol"],
                "protocol": asdict(protocol), "metrics": collect_results(evaluators),
                "per_image_file": per_image_file, "timings": timing.as_dict(),
                **({"previews": previews[0].written} if previews else {})}, dataset

    def run_profile(self, job: Job) -> dict:
        config, settings = job.config, dict(job.config["profile"])
        height, width = settings.pop("height"), settings.pop("width")
        task = self._task(f"profile {job.model} {height}x{width}", 1)
        result = profile_model(config["arch"], config["num_classes"], height, width, device=self.device,
                               dataset=config["dataset"], **settings)
        self._advance(task)
        return {**result, "dataset": config["dataset"], "split": None}

    def run(self, job: Job, strict: bool = False, **options) -> dict:
        """Run one job (``options``: run_train's); its record, ``status`` ok or error. ``strict``
        (a command's single job): an exception propagates instead of becoming an error record."""
        base = new_record(job.id, self.suite.name, job.kind, model=job.model, arch=job.config["arch"],
                          **dataset_fields(job), config=job.config, identity=job.identity, **job.meta, started=now())
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            result = {"train": self.run_train, "eval": self.run_eval, "corruption": self.run_corruption,
                      "profile": self.run_profile}[job.kind](job, **options)
            record = {**base, **result, "status": "ok"}
        except Exception as exc:  # a failed job becomes an error record; the suite goes on
            if strict:
                raise
            record = {**base, "status": "error",
                      "error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}}
        # cpu_seconds: this process's CPU time (all its threads): on a shared machine, closer than
        # wall_seconds to what the job takes on an idle one
        record.update(finished=now(), wall_seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu_start, env=environment(self.device))
        validate_record(record, f"the record of job {job.id}")  # a misfit is a bug here, not in the input
        return record

    def _task(self, description: str, total: int):
        return self.progress.add_task(description, total=total) if self.progress else None

    def _advance(self, task, **kwargs) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, advance=1, **kwargs)


def dataset_fields(job: Job) -> dict:
    """``dataset`` (the kind) and ``split``, fields of their own in every kind of record."""
    config = job.config
    if job.kind == "profile":
        return {"dataset": config["dataset"], "split": None}
    split = config["train"]["split"] if job.kind == "train" else config["eval"]["split"]
    return {"dataset": config["dataset"]["kind"], "split": split}


def check_results_folder(results_dir: Path) -> None:
    """Refuse a folder whose records were written under another job-id scheme: their ids can
    match nothing this version plans, so running would silently recompute every job."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return
    old = []
    for path in sorted(results_dir.glob("*.json")):
        record = read_record(path)
        if isinstance(record, dict) and "job_id" in record and record.get("id_version") != ID_VERSION:
            old.append(path)
    if old:
        version = read_record(old[0]).get("id_version", 1)
        raise ResultsError(
            f"{results_dir}: {len(old)} records (e.g. {old[0].name}) have job ids of scheme {version}, this "
            f"segbench uses scheme {ID_VERSION} (README: Job identity), so none of them would be reused. "
            f"Move them aside (mv {results_dir} {results_dir}.v{version}) or set `results:` to a new folder, "
            "then re-run; `segbench report` still reads the old records.")


def set_threads(threads: int | None) -> None:
    """Pin torch's and OpenMP's thread count (also for worker processes started later)."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def run_suite(suite: Suite, force: bool = False, shard: tuple[int, int] = (0, 1), console=None,
              progress=None, wait_timeout: float = DEFAULT_WAIT_SECONDS) -> list[dict]:
    """Run (or skip, if finished) every job of this shard; returns their records, in job order."""
    device = resolve_device(suite.device, f"{suite.path}: device")
    set_threads(suite.threads)
    dist.init_from_env(device)
    results_dir = suite.results_dir
    check_results_folder(results_dir)
    check_writable(results_dir)
    planned = plan(suite)
    jobs = shard_jobs(planned, *shard)
    runner = Runner(suite, device, results_dir, console, progress, trained_elsewhere(planned, *shard), wait_timeout)
    overall = progress.add_task("jobs", total=len(jobs)) if progress else None
    records: dict[int, dict] = {}
    pending, waiting = list(range(len(jobs))), False
    while pending:
        held, deferred = set(), []
        for index in pending:
            job = jobs[index]
            record = None if job.needs in held else _run_or_reuse(runner, job, force)
            if record is None:  # another process holds it (or the training it needs): come back to it
                held.add(job.id)
                deferred.append(index)
                continue
            records[index] = record
            if progress is not None:
                progress.update(overall, advance=1)
        if deferred and len(deferred) == len(pending):
            if console is not None and not waiting:
                console.print(f"waiting for {len(deferred)} job(s) another process is running "
                              f"(locks in {results_dir / '.locks'})")
            waiting = True
            time.sleep(LOCK_POLL_SECONDS)
        pending = deferred
    return [records[i] for i in range(len(jobs))]


def _run_or_reuse(runner: Runner, job: Job, force: bool) -> dict | None:
    """The job's record: reused if finished (under this model's name or another's), else
    computed and written; None while another live process holds the job's lock."""
    path = record_path(runner.results_dir, job.id, job.model)
    if not force:
        existing = read_record(path) or find_record(runner.results_dir, job.id)
        if existing and existing.get("status") == "ok":
            return _reused(path, existing, job)
    lock = try_lock(runner.results_dir, job.id) if not dist.is_distributed() else None
    if lock is None and not dist.is_distributed():
        return None
    try:
        if not force:  # finished by the process that held the lock a moment ago?
            existing = find_record(runner.results_dir, job.id)
            if existing and existing.get("status") == "ok":
                return _reused(path, existing, job)
        record = runner.run(job)
        if dist.is_main():
            write_record(path, record)
        dist.barrier()
        return record
    finally:
        if lock is not None:
            release(lock)


def _reused(path: Path, existing: dict, job: Job) -> dict:
    """A finished record for this job; under another model name, copied to this model's. What
    the job records beside its id (a sweep's grid and CD reference) is the current suite's."""
    changes = {k: v for k, v in job.meta.items() if existing.get(k) != v}
    if existing.get("model") != job.model:
        changes |= {"model": job.model, "reused_from": existing.get("model")}
    if changes:
        existing = {**existing, **changes}
        if dist.is_main():
            write_record(path, existing)
    return {**existing, "skipped": True}


def single_job(suite: Suite) -> Job:
    """The one job of a suite built from a command's arguments (``segbench eval`` / ``train`` /
    ``profile``)."""
    jobs = plan(suite)
    if len(jobs) != 1:
        raise RuntimeError(f"a command's suite plans {len(jobs)} jobs, not one")
    return jobs[0]


def run_single(suite: Suite, results_dir: Path, console=None, progress=None, **options) -> dict:
    """Run a command's one job through the suite path (same spec, same record, same id)."""
    device = resolve_device(suite.device)
    set_threads(suite.threads)
    dist.init_from_env(device)
    job = single_job(suite)
    return Runner(suite, device, results_dir, console, progress).run(job, strict=True, **options)


def predictions_record(kind: str, root: str | None, split: str, folder: Path, ids: str, max_images: int | None,
                       size_breakdown: bool, bootstrap: int, out: Path | None = None, progress=None) -> dict:
    """The record of a folder of prediction PNGs scored on a dataset split (``segbench eval
    --predictions``): the eval record's fields; with ``out``, per-image counts beside it."""
    from segbench.engine.evaluate import score_predictions

    dataset = build_dataset(kind, split, root)
    evaluators = standard_evaluators(dataset, size_breakdown=size_breakdown, bootstrap=bootstrap)
    scored = score_predictions(dataset, Path(folder), evaluators, ids, max_images, progress)
    identity = {"dataset": {"kind": kind, "split": split}, "predictions": Path(folder).name, "ids": scored["ids"],
                "max_images": max_images, "metrics": {"size_breakdown": size_breakdown, "bootstrap": bootstrap}}
    sidecar = None
    if out is not None:
        sidecar = Path(out).with_name(f"{Path(out).stem}.per_image.npz")
        if dist.is_main():
            save_per_image(sidecar, evaluators[0].per_image, dataset.classes)
    record = new_record(job_id("predictions", identity), "", "eval", model=str(folder), arch=None,
                        identity=identity, predictions=str(folder), **scored, dataset=kind, split=split,
                        random_weights=False, metrics=collect_results(evaluators),
                        per_image_file=sidecar.name if sidecar else None, status="ok", finished=now(),
                        env=environment("cpu"))
    validate_record(record, "the record of these predictions")
    return record
