"""Run a suite: expand it into jobs, run the ones not yet finished, write one record each.

A job's id is a hash of everything that determines its result (model, checkpoint or
training job, dataset, split, protocol), so re-running a suite skips finished jobs and
a changed setting gets a new id. A failing job becomes an error record and the suite
goes on; a record is written atomically when its job ends, so Ctrl-C or a crash loses
nothing already finished.

``--shard i/N`` deals the jobs out by id (segbench.sharding); a job whose training job
runs on another shard waits for that job's record in the shared results folder.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from segbench import dist
from segbench.data.datasets import DATASETS, DatasetError, build_dataset
from segbench.engine.evaluate import collect_results, evaluate, paper_protocol, standard_evaluators
from segbench.engine.inference import Protocol
from segbench.engine.train import (LoopOptions, build_model, initialise_encoder, read_log, recipe_from_dict,
                                   suite_recipe, train)
from segbench.metrics.stats import save_per_image
from segbench.models.checkpoints import load_model
from segbench.profiling import parse_size, profile_model
from segbench.report.previews import PreviewWriter
from segbench.results import environment, file_sha256, new_record, now, read_record, record_path, write_json_atomic
from segbench.robustness.corruptions import corruption_grid, grid_cells
from segbench.robustness.sweep import CLEAN, CorruptionCache, corrupted_view, source_of, sweep_key, write_preview
from segbench.sharding import DEFAULT_WAIT_SECONDS, shard_jobs, trained_elsewhere, training_checkpoint
from segbench.suite import EvalSpec, Suite, locate, missing_files


@dataclass(frozen=True)
class Job:
    kind: str  # "train" | "eval" | "corruption" | "profile"
    model: str  # the suite's model key
    config: dict = field(hash=False)  # everything that determines the result
    needs: str | None = None  # id of the training job whose checkpoint this job uses
    meta: dict = field(default_factory=dict, hash=False)  # recorded, not in the id (a sweep's cell, grid)

    @property
    def id(self) -> str:
        blob = json.dumps({"kind": self.kind, **self.config}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def num_classes_of(suite: Suite, dataset_key: str) -> int:
    return len(DATASETS[suite.datasets[dataset_key].kind].classes)


def plan(suite: Suite) -> list[Job]:
    """All jobs of a suite, training before the evaluations that need it."""
    jobs: list[Job] = []
    train_ids: dict[str, str] = {}
    for key, spec in suite.models.items():
        if spec.train is None:
            continue
        t = spec.train
        num_classes = spec.num_classes or num_classes_of(suite, t.dataset)
        recipe = suite_recipe(spec, suite.datasets[t.dataset].kind)
        # What decides the weights: the resolved recipe (so a changed recipe retrains), and the
        # loop settings that change the numbers; not workers, checkpoint or evaluation intervals.
        changes = {k: v for k, v in (("accumulate", t.accumulate if t.accumulate != 1 else None), ("amp", t.amp),
                                     ("encoder_init", t.encoder_init)) if v is not None}
        config = {"arch": spec.arch, "num_classes": num_classes, "seed": suite.seed,
                  "dataset": asdict(suite.datasets[t.dataset]), "split": t.split,
                  "train": {"dataset": t.dataset, "split": t.split, "recipe": asdict(recipe), **changes}}
        job = Job("train", key, config)
        jobs.append(job)
        train_ids[key] = job.id
    for spec in suite.evaluate:
        for key in spec.models or tuple(suite.models):
            settings = asdict(spec)
            if not spec.previews:  # only when set, so existing job ids stay the same
                del settings["previews"]
            config = {**_model_config(suite, key, spec.dataset, train_ids), "eval": settings}
            jobs.append(Job("eval", key, config, needs=train_ids.get(key)))
    for spec in suite.corruption:
        # One job per (model, corruption, severity) and one on clean images. The grid and the
        # reference model are not part of a cell's id: growing a sweep recomputes nothing.
        grid = corruption_grid(spec.corruptions, spec.severities)
        settings = {k: v for k, v in asdict(spec).items()
                    if k not in ("models", "corruptions", "severities", "reference", "previews")}
        sweep = {"key": sweep_key(asdict(suite.datasets[spec.dataset]), settings), "grid": grid,
                 "reference": spec.reference}
        for key in spec.models or tuple(suite.models):
            base = {**_model_config(suite, key, spec.dataset, train_ids), "eval": settings}
            for corruption, severity in [(CLEAN, 0), *grid_cells(grid)]:
                cell = {"corruption": corruption, "severity": severity}
                jobs.append(Job("corruption", key, {**base, "cell": cell}, needs=train_ids.get(key),
                                meta={**cell, "sweep": sweep}))
    device = resolve_device(suite.device) if suite.profile else None
    for spec in suite.profile:
        # Costs need no trained weights: profile jobs build the architecture and never wait for training.
        settings = {k: v for k, v in asdict(spec).items() if k not in ("dataset", "sizes", "models")}
        for key in spec.models or tuple(suite.models):
            model = suite.models[key]
            num_classes = model.num_classes or num_classes_of(suite, spec.dataset)
            for size in spec.sizes:
                jobs.append(profile_job(key, model.arch, num_classes, suite.datasets[spec.dataset].kind, device,
                                        parse_size(size), settings))
    return jobs


def profile_job(model: str, arch: str, num_classes: int, dataset_kind: str, device: str, size: tuple[int, int],
                settings: dict) -> Job:
    """The job of one profile record: a model at one input size on one device (CPU and GPU
    records never share an id), with the timing settings of ``profiling.profile_model``."""
    height, width = size
    return Job("profile", model, {"arch": arch, "num_classes": num_classes, "dataset": dataset_kind, "device": device,
                                  "profile": {"height": height, "width": width, **settings}})


def _model_config(suite: Suite, key: str, dataset: str, train_ids: dict[str, str]) -> dict:
    """The part of an evaluation's config that says which weights meet which dataset."""
    model = suite.models[key]
    weights = {"trained_by": train_ids[key]} if key in train_ids else {"checkpoint": model.checkpoint}
    if model.allow_partial:  # only when set, so existing job ids stay the same
        weights["allow_partial"] = True
    return {"arch": model.arch, "num_classes": model.num_classes or num_classes_of(suite, dataset), **weights,
            "dataset": asdict(suite.datasets[dataset])}


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


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return name


class Runner:
    def __init__(self, suite: Suite, device: str, results_dir: Path, console=None, progress=None):
        self.suite, self.device, self.results_dir = suite, device, results_dir
        self.console, self.progress = console, progress
        self._model_cache: tuple[tuple, torch.nn.Module, object] | None = None

    def run_train(self, job: Job) -> dict:
        """Train (or, after a crash, continue training) the job's model; its files go to
        results/train/<model>-<job id>/ (final.pth, last.pth, train_log.jsonl)."""
        config, spec = job.config, self.suite.models[job.model].train
        data = config["dataset"]
        dataset = build_dataset(data["kind"], spec.split, data["root"], **data["options"])
        eval_dataset = build_dataset(data["kind"], spec.eval_split, data["root"], **data["options"]) \
            if spec.eval_every else None
        recipe = recipe_from_dict(config["train"]["recipe"])
        model = build_model(config["arch"], config["num_classes"], recipe, seed=config["seed"])
        notes = initialise_encoder(model, spec.encoder_init) if spec.encoder_init else []
        options = LoopOptions(seed=config["seed"], accumulate=spec.accumulate, amp=spec.amp, workers=spec.workers,
                              checkpoint_every=spec.checkpoint_every, eval_every=spec.eval_every,
                              eval_max_images=spec.eval_max_images)
        task = self._task(f"train {job.model}", recipe.iters)
        show = (lambda i, loss: self.progress.update(task, completed=i, description=f"train {job.model} loss {loss:.3f}")
                ) if self.progress is not None else None
        summary = train(model, dataset, recipe, self.results_dir / "train" / f"{job.model}-{job.id}", self.device,
                        options, eval_dataset, progress=show)
        losses, evaluations = read_log(summary.log)
        tail = losses[-max(len(losses) // 10, 1):]
        metrics = {"first_loss": losses[0], "final_loss": sum(tail) / len(tail)}
        if evaluations:
            metrics.update({f"val_{k}": v for k, v in evaluations[-1]["eval"].items()})
        ran = recipe.iters - summary.resumed_from
        return {"checkpoint": str(summary.checkpoint), "recipe": asdict(recipe), "dataset": dataset.name,
                "split": spec.split, "metrics": metrics, "train_log": str(summary.log),
                "resumed_from": summary.resumed_from, "notes": notes + summary.notes,
                "timings": {"seconds": summary.seconds, "iterations": ran,
                            "seconds_per_iter": summary.seconds / ran if ran else None,
                            "data_wait_seconds": summary.data_seconds}}

    def load(self, job: Job) -> tuple[torch.nn.Module, str | None]:
        config = job.config
        checkpoint = str(self.checkpoint_path_of(job)) if job.needs else config["checkpoint"]
        key = (config["arch"], checkpoint, config["num_classes"], config.get("allow_partial", False))
        if self._model_cache is None or self._model_cache[0] != key:
            model, report = load_model(config["arch"], checkpoint, config["num_classes"], key[3])
            self._model_cache = (key, model.to(self.device).eval(), report)
        return self._model_cache[1], checkpoint

    def load_report(self) -> dict | None:
        """How the cached model's checkpoint loaded (format, ignored / missing keys), for the record."""
        report = self._model_cache[2] if self._model_cache else None
        return None if report is None else {"format": report.format, "complete": report.complete,
                                            "summary": report.summary(), "notes": report.notes}

    # training job id -> the shard that runs it, for the jobs of this shard that wait for it (run_suite)
    trained_elsewhere: dict[str, str] = {}
    wait_timeout: float = DEFAULT_WAIT_SECONDS

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
        return Protocol(**{**asdict(protocol), **overrides})

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
        evaluators = standard_evaluators(dataset, spec["size_breakdown"], spec["bootstrap"], self.suite.seed)
        count = len(dataset) if spec["max_images"] is None else min(spec["max_images"], len(dataset))
        task = self._task(description, count)
        previews = []  # opt-in: the first predictions as PNGs, for the report's overlays
        if spec.get("previews") and dist.is_main():
            previews = [PreviewWriter(self.results_dir, job.id, {**config["dataset"], "split": spec["split"]},
                                      spec["previews"], dataset.palette)]
        timing = evaluate(model, dataset, protocol, evaluators + previews, self.device, spec["max_images"],
                          progress=lambda: self._advance(task))
        per_image_file = None
        if spec["per_image"]:  # per-image counts beside the record, for `segbench compare`
            per_image_file = f"{job.id}.per_image.npz"
            if dist.is_main():
                save_per_image(self.results_dir / per_image_file, evaluators[0].per_image, dataset.classes)
        return {"checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
                "checkpoint_load": self.load_report(),
                "dataset": dataset.name, "split": spec["split"], "protocol_name": spec["protocol"],
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
        return {**result, "dataset": config["dataset"]}

    def run(self, job: Job) -> dict:
        base = new_record(job.id, self.suite.name, job.kind, model=job.model, arch=job.config["arch"],
                          config=job.config, **job.meta, started=now())
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            result = {"train": self.run_train, "eval": self.run_eval, "corruption": self.run_corruption,
                      "profile": self.run_profile}[job.kind](job)
            record = {**base, **result, "status": "ok"}
        except Exception as exc:  # a failed job becomes an error record; the suite goes on
            record = {**base, "status": "error",
                      "error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}}
        # cpu_seconds: this process's CPU time (all its threads): on a shared machine, closer than
        # wall_seconds to what the job takes on an idle one
        record.update(finished=now(), wall_seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu_start, env=environment(self.device))
        return record

    def _task(self, description: str, total: int):
        return self.progress.add_task(description, total=total) if self.progress else None

    def _advance(self, task, **kwargs) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, advance=1, **kwargs)


def eval_record(path: Path, dataset, split: str, run: dict, metrics: dict, per_image) -> dict:
    """Write the record of a standalone evaluation (``segbench eval --out``), with its
    per-image counts beside it, in the fields of a suite's eval records."""
    config = {"dataset": dataset.name, "split": split, **{k: run.get(k) for k in ("model", "checkpoint", "predictions")}}
    job_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    sidecar = path.with_name(f"{path.stem}.per_image.npz")
    fields = {**run, "model": run.get("model") or run.get("predictions"), "arch": run.get("model")}
    record = new_record(job_id, "", "eval", **fields, config=config, dataset=dataset.name, split=split,
                        metrics=metrics, per_image_file=sidecar.name, status="ok", finished=now(),
                        env=environment(run.get("device", "cpu")))
    if dist.is_main():
        save_per_image(sidecar, per_image, dataset.classes)
        write_json_atomic(path, record)
    return record


def run_suite(suite: Suite, force: bool = False, shard: tuple[int, int] = (0, 1), console=None,
              progress=None, wait_timeout: float = DEFAULT_WAIT_SECONDS) -> list[dict]:
    """Run (or skip, if finished) every job of this shard; returns their records."""
    device = resolve_device(suite.device)
    dist.init_from_env(device)
    results_dir = suite.results_dir
    planned = plan(suite)
    jobs = shard_jobs(planned, *shard)
    runner = Runner(suite, device, results_dir, console, progress)
    runner.trained_elsewhere, runner.wait_timeout = trained_elsewhere(planned, *shard), wait_timeout
    overall = progress.add_task("jobs", total=len(jobs)) if progress else None
    records = []
    for job in jobs:
        path = record_path(results_dir, job.id)
        existing = read_record(path)
        if existing and existing.get("status") == "ok" and not force:
            records.append({**existing, "skipped": True})
        else:
            record = runner.run(job)
            if dist.is_main():
                write_json_atomic(path, record)
            dist.barrier()
            records.append(record)
        if progress is not None:
            progress.update(overall, advance=1)
    return records
