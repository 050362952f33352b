"""Command-line front end: parse arguments, call the library, print tables or JSON.

Exit codes: 0 success, 1 a job or check failed (or a bug: its traceback is printed), 2 a
usage or input error (a ``SegbenchError``: one line naming the file or field). Every command
that prints a table also takes ``--json`` and then prints exactly one JSON document on stdout.

``eval``, ``train`` and ``profile`` turn their arguments into a one-job suite and run it
through ``segbench.runner``, the path ``segbench run`` takes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from segbench.errors import SegbenchError, UsageError
from segbench.sharding import DEFAULT_WAIT_SECONDS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _console() -> Console:
    """Progress and messages go to stderr, so stdout stays clean for tables and JSON."""
    return Console(stderr=True)


def _stdout() -> Console:
    # Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 200)


def _print_json(data) -> None:
    from segbench.results import _jsonable

    print(json.dumps(_jsonable(data), indent=1))


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return index, count


def _progress(console: Console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not enabled or not console.is_terminal)


def _summary_table(records: list[dict]) -> Table:
    table = Table(title="segbench results")
    for column in ("job", "kind", "model", "dataset", "protocol", "mIoU", "mAcc", "status"):
        table.add_column(column, justify="right" if column in ("mIoU", "mAcc") else "left")
    for r in records:
        metrics = r.get("metrics", {})
        status = "cached" if r.get("skipped") else r["status"]
        if r["status"] == "error":
            status = f"[red]error: {r['error']['message'][:60]}[/red]"
        miou = metrics.get("mIoU")
        macc = metrics.get("mAcc")
        kind = f"{r['kind']} {r['corruption']}-{r['severity']}" if r["kind"] == "corruption" else r["kind"]
        if r["kind"] == "profile":
            kind = f"profile {r['config']['profile']['height']}x{r['config']['profile']['width']} {r['config']['device']}"
        model = f"{r['model']} [yellow](random weights)[/yellow]" if r.get("random_weights") else r["model"]
        where = "/".join(p for p in (r.get("dataset"), r.get("split")) if p)
        table.add_row(r["job_id"][:8], kind, model, where, r.get("protocol_name") or "",
                      f"{miou:.2f}" if isinstance(miou, float) else "", f"{macc:.2f}" if isinstance(macc, float) else "",
                      status)
    return table


def cmd_run(args) -> int:
    from segbench import report
    from segbench.runner import check_inputs, plan, run_suite
    from segbench.sharding import shard_jobs
    from segbench.suite import load_suite

    suite = load_suite(args.suite)
    problems = check_inputs(suite, shard_jobs(plan(suite), *args.shard))
    if problems:
        raise UsageError("\n".join(problems))
    console = _console()
    with _progress(console, not args.json) as progress:
        records = run_suite(suite, force=args.force, shard=args.shard, console=console, progress=progress,
                            wait_timeout=args.wait_timeout)
    report_files = []
    if suite.report and not args.no_report and args.shard[1] == 1:  # shards: `segbench report` once all finish
        report_files = report.render(suite.results_dir, suite.report)
        for line in report.skipped(suite.results_dir):
            print(f"segbench report: skipped {line}", file=sys.stderr)
    failed = [r for r in records if r["status"] != "ok"]
    if args.json:
        _print_json({"suite": suite.name, "results": str(suite.results_dir), "records": records,
                     "report": [str(p) for p in report_files], "failed": len(failed)})
    else:
        _stdout().print(_summary_table(records))
        console.print(f"records: {suite.results_dir}/" + (f"   report: {suite.report}/" if report_files else ""))
        for r in failed:
            console.print(f"[red]job {r['job_id']} ({r['model']}, {r['kind']}) failed: "
                          f"{r['error']['type']}: {r['error']['message']}[/red]")
    return EXIT_FAILED if failed else EXIT_OK


def _single_suite(command: str, args, model: dict, datasets: dict, **blocks):
    """A command's arguments as a one-job suite (validated as a suite file is)."""
    from segbench.suite import build_suite

    return build_suite({"name": "", "device": args.device, "seed": getattr(args, "seed", 0),
                        **({"threads": args.threads} if getattr(args, "threads", None) else {}),
                        "datasets": datasets, "models": {args.model: model}, **blocks}, f"segbench {command}")


def _dataset_entry(args) -> dict:
    return {args.dataset: {"kind": args.dataset, **({"root": args.root} if args.root else {})}}


def cmd_train(args) -> int:
    from segbench import dist
    from segbench.runner import run_single

    train = {"dataset": args.dataset, "split": args.split, "accumulate": args.accumulate, "workers": args.workers,
             "checkpoint_every": args.checkpoint_every, "eval_every": args.eval_every,
             "eval_split": args.eval_split}
    train.update({k: v for k, v in (("recipe", args.recipe), ("iters", args.iters), ("batch_size", args.batch_size),
                                    ("lr", args.lr), ("crop_size", args.crop_size), ("amp", args.amp),
                                    ("encoder_init", args.encoder_init), ("eval_max_images", args.eval_max_images))
                  if v is not None})
    suite = _single_suite("train", args, {"arch": args.model, "train": train}, _dataset_entry(args))
    console = _console()
    with _progress(console, not args.json and dist.is_main()) as progress:
        record = run_single(suite, Path(args.out), console, progress, out=Path(args.out), resume=not args.no_resume)
    if not dist.is_main():
        return EXIT_OK
    if args.json:
        _print_json(record)
        return EXIT_OK
    recipe = record["recipe"]
    start = f" (resumed at iteration {record['resumed_from']})" if record["resumed_from"] else ""
    console.print(f"recipe {recipe['name']}: {recipe['iters']} iterations, batch {recipe['batch_size']}, "
                  f"crop {recipe['crop_size'][0]}x{recipe['crop_size'][1]}, lr {recipe['lr']:g}{start}")
    for note in record["notes"]:
        console.print(f"note: {note}")
    evaluation = {k.removeprefix("val_"): v for k, v in record["metrics"].items() if k.startswith("val_")}
    if evaluation:
        console.print("last evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in evaluation.items()))
    console.print(f"checkpoint: {record['checkpoint']}   log: {record['train_log']}   job: {record['job_id']}")
    return EXIT_OK


def _eval_suite(args):
    """`segbench eval MODEL` as a one-job suite."""
    if args.checkpoint is not None and args.random_weights:
        raise UsageError("segbench eval: --checkpoint and --random-weights exclude each other")
    if args.checkpoint is None and not args.random_weights:
        raise UsageError(f"segbench eval {args.model}: no weights; give --checkpoint FILE, or --random-weights to "
                         "evaluate untrained weights on purpose")
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    evaluation = {"dataset": args.dataset, "split": args.split, "protocol": args.protocol,
                  "max_images": args.max_images, "bootstrap": args.bootstrap, "size_breakdown": not args.no_size,
                  "per_image": bool(args.out), "batch_size": batch_size, "workers": args.workers,
                  "amp": args.amp, "compile": args.compile, "boundary": not args.no_boundary,
                  "calibration": not args.no_calibration,
                  **({"boundary_dilation": args.boundary_dilation} if args.boundary_dilation is not None else {})}
    model = {"arch": args.model, **({"checkpoint": args.checkpoint} if args.checkpoint else {"weights": "random"})}
    return _single_suite("eval", args, model, _dataset_entry(args), evaluate=[evaluation])


def cmd_eval(args) -> int:
    import tempfile

    from segbench.data.datasets import DATASETS
    from segbench.results import write_record
    from segbench.runner import predictions_record, run_single

    if (args.model is None) == (args.predictions is None):
        raise UsageError("segbench eval: give a model to run, or --predictions DIR to score, not both")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        raise UsageError(f"segbench eval: --batch-size takes a positive number or 'auto', got {args.batch_size!r}")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"segbench eval: --max-images takes a positive number, got {args.max_images}")
    if args.predictions and (args.no_boundary or args.no_calibration or args.boundary_dilation is not None):
        raise UsageError("segbench eval: --no-boundary, --no-calibration and --boundary-dilation apply to a model "
                         "run, not to --predictions")
    suite = _eval_suite(args) if args.model else None
    with _progress(_console(), not args.json) as progress, tempfile.TemporaryDirectory() as scratch:
        if suite is None:
            task = progress.add_task(f"eval {args.predictions}", total=None)
            record = predictions_record(args.dataset, args.root, args.split, Path(args.predictions), args.ids,
                                        args.max_images, not args.no_size, args.bootstrap,
                                        Path(args.out) if args.out else None,
                                        lambda: progress.update(task, advance=1))
        else:  # per-image counts go beside --out; without it, nowhere that stays
            record = run_single(suite, Path(args.out).parent if args.out else Path(scratch), progress=progress)
    if args.out:
        write_record(Path(args.out), record)
    results = record["metrics"]
    if args.json:
        _print_json(record)
        return EXIT_OK
    title = args.model or args.predictions
    weights = " (RANDOM WEIGHTS)" if record.get("random_weights") else ""
    table = Table(title=f"{title} on {record['dataset']}/{record['split']}" + (f" ({args.protocol})" if args.model else "")
                  + weights)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    for name in DATASETS[args.dataset].classes if args.dataset in DATASETS else results["IoU"]:
        iou, acc = results["IoU"][name], results["Acc"][name]
        table.add_row(name, "absent" if iou is None or iou != iou else f"{iou:.2f}",
                      "—" if acc is None or acc != acc else f"{acc:.2f}")
    table.add_row("[bold]mean[/bold]", f"[bold]{results['mIoU']:.2f}[/bold]", f"[bold]{results['mAcc']:.2f}[/bold]")
    out = _stdout()
    out.print(table)
    per_image = results["per_image"]
    line = (f"aAcc {results['aAcc']:.2f}  fwIoU {results['fwIoU']:.2f}  per-image mIoU {per_image['mIoU_mean']:.2f} "
            f"(worst 10 %: {per_image['mIoU_worst10']:.2f}, {per_image['images_scored']} images)")
    if "mIoU_ci" in results:
        ci = results["mIoU_ci"]
        line += f"  mIoU 95 % CI [{ci['low']:.2f}, {ci['high']:.2f}] ({ci['resamples']} resamples)"
    out.print(line)
    if "boundary" in results:
        b = results["boundary"]
        out.print(f"boundary IoU (d = {100 * b['dilation_ratio']:g} % of the diagonal): mBIoU {b['mBIoU']:.2f}  "
                  f"mean min(IoU, BIoU) {b['mIoU_BIoU_min']:.2f}")
    if (results.get("calibration") or {}).get("pixels"):
        c = results["calibration"]
        detection = ("" if c["AUROC"] is None else
                     f"  errors by max softmax: AUROC {c['AUROC']:.2f}  AUPR-Error {c['AUPR_error']:.2f}  "
                     f"FPR95 {c['FPR95']:.2f}")
        out.print(f"calibration ({c['probabilities']}): ECE {c['ECE']:.2f} %  NLL {c['NLL']:.3f}  "
                  f"Brier {c['Brier']:.3f}{detection}")
    if "size" in results:
        sizes = Table(title="object-size breakdown (segbench protocol: see README)")
        for column in ("bucket", "area (px)", "mIoU", "segments", "classes"):
            sizes.add_column(column, justify="left" if column == "bucket" else "right")
        for name, b in results["size"].items():
            area = f"{b['min_area']}-{b['max_area']}" if b["max_area"] else f">= {b['min_area']}"
            sizes.add_row(name, area, "—" if b["mIoU"] != b["mIoU"] else f"{b['mIoU']:.2f}", str(b["segments"]),
                          str(b["classes_present"]))
        out.print(sizes)
    if args.predictions:
        _console().print(f"predictions read as {record['ids']} ids ({record['ids_note']})")
    return EXIT_OK


def cmd_compare(args) -> int:
    from segbench.metrics.stats import compare_records

    try:
        result = compare_records(Path(args.a), Path(args.b), args.resamples, args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print_json(result)
        return EXIT_OK
    _stdout().print(
        f"{result['dataset']}, {result['images']} images: mIoU A {result['mIoU_a']:.2f}, B {result['mIoU_b']:.2f}, "
        f"A - B = {result['delta_mIoU']:+.2f} (95 % CI [{result['low']:+.2f}, {result['high']:+.2f}]); "
        f"A not better than B in {100 * result['p_value']:.1f} % of {result['resamples']} paired bootstrap resamples "
        f"(one-sided p = {result['p_value']:.3f})")
    return EXIT_OK


def cmd_models(args) -> int:
    from segbench.models import describe_models

    rows = describe_models(args.pattern)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    table = Table(title=f"segbench models ({len(rows)})")
    for column in ("name", "family", "encoder", "decoder", "params (M)", "encoder (M)", "decoder (M)", "aux (M)",
                   "crop", "patch", "norm"):
        table.add_column(column, justify="right" if "(M)" in column or column in ("crop", "patch") else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], r["encoder"], r["decoder"], f"{r['params'] / 1e6:.2f}",
                      f"{r['encoder_params'] / 1e6:.2f}", f"{r['decoder_params'] / 1e6:.2f}",
                      f"{r['aux_params'] / 1e6:.2f}", str(r["crop_size"]),
                      str(r["patch_size"]), r["normalization"])
    _stdout().print(table)
    return EXIT_OK


def cmd_datasets(args) -> int:
    from segbench.data.datasets import DATASETS, materialize_synthetic

    if args.materialize:
        out = materialize_synthetic(args.out, {"train": args.train_images, "val": args.val_images})
        _print_json({"written": str(out)}) if args.json else _console().print(f"synthetic dataset written to {out}")
        return EXIT_OK
    # a kind without class names of its own (folder) reads them from its root's classes file: None
    rows = [{"kind": kind, "classes": len(cls.classes) or None, "test_scale": cls.test_scale,
             "size_buckets": cls.size_buckets, "layout": getattr(cls, "layout", "built in (no files)")}
            for kind, cls in DATASETS.items()]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    table = Table(title="segbench datasets")
    for column in ("kind", "classes", "test scale", "size buckets (px)"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["kind"], "from its classes file" if r["classes"] is None else str(r["classes"]),
                      str(r["test_scale"]), str(r["size_buckets"]))
    _stdout().print(table)
    _console().print("On-disk layouts: `segbench datasets --json`, or the README.")
    return EXIT_OK


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _severities(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--severities takes numbers 1-5 separated by commas, got {text!r}") from None


def cmd_corrupt(args) -> int:
    from segbench.robustness.corruptions import CorruptionError, corruption_grid, generate

    try:
        grid = corruption_grid(args.corruptions, args.severities)
    except CorruptionError as exc:
        raise UsageError(str(exc)) from None
    console = _console()
    with _progress(console, not args.json) as progress:
        task = progress.add_task(f"corrupt {args.dataset} ({args.split})", total=None)
        summary = generate(args.dataset, args.split, args.root, args.out, grid, workers=args.workers,
                           max_images=args.max_images, shard=args.shard,
                           progress=lambda done, total: progress.update(task, completed=done, total=total))
    if args.json:
        _print_json(summary)
    else:
        rate = summary["written"] / summary["seconds"] if summary["seconds"] else 0.0
        console.print(f"{summary['written']} images written, {summary['skipped']} already done, "
                      f"{summary['outputs']} in all ({summary['images']} images x {len(grid)} corruptions x "
                      f"their severities) in {summary['seconds']:.1f} s ({rate:.2f} images/s, "
                      f"{summary['workers']} workers): {summary['manifest']}")
    return EXIT_OK


def _millions(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _giga(n) -> str:
    return "—" if n is None else f"{n / 1e9:.2f} G"


def cmd_profile(args) -> int:
    from segbench.results import write_record
    from segbench.runner import run_single

    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    profile = {"dataset": args.dataset, "sizes": [args.size], "batch_size": batch_size, "warmup": args.warmup,
               "runs": args.runs, "pipeline": not args.no_pipeline, "fvcore": not args.no_fvcore, "amp": args.amp,
               "channels_last": args.channels_last}
    # costs need no trained weights: the architecture's own (random) ones, said so
    model = {"arch": args.model, "weights": "random", **({"num_classes": args.num_classes} if args.num_classes else {})}
    suite = _single_suite("profile", args, model, _dataset_entry(args), profile=[profile])
    with _console().status(f"profiling {args.model} at {args.size}", spinner="dots") if not args.json \
            else contextlib.nullcontext():
        record = run_single(suite, Path(args.out).parent if args.out else Path("."))
    size = (record["config"]["profile"]["height"], record["config"]["profile"]["width"])
    num_classes = record["config"]["num_classes"]
    if args.out:
        write_record(Path(args.out), record)
    if args.json:
        _print_json(record)
        return EXIT_OK
    m, prof = record["metrics"], record["profile"]
    table = Table(title=f"{args.model}: {size[0]}x{size[1]} input, {num_classes} classes")
    for column in ("quantity", "value", "counted / measured by"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("parameters", _millions(m["params"]), f"encoder {_millions(m['params_encoder'])}, decoder "
                  f"{_millions(m['params_decoder'])}, auxiliary heads {_millions(m['params_aux'])}")
    table.add_row("MACs", _giga(m["macs"]), "FlopCounterMode / 2 (attention included), per image")
    skipped = ", ".join(f"{op} x{n}" for op, n in (prof["fvcore_skipped_ops"] or {}).items()) or "none"
    table.add_row("MACs (fvcore)", _giga(m["macs_fvcore"]),
                  f"fvcore, skipped: {skipped}" if m["macs_fvcore"] is not None else prof["counters"]["macs_fvcore"])
    latency = prof["latency"]
    if latency:
        where = f"{latency['device']} ({latency['device_name']}, {latency['threads']} threads)"
        table.add_row("latency", f"{m['latency_ms']:.2f} ms", f"median of {latency['runs']}, 10-90 %: "
                      f"{m['latency_ms_p10']:.2f}-{m['latency_ms_p90']:.2f} ms; batch {latency['batch_size']} on {where}")
        table.add_row("throughput (model)", f"{m['images_per_second']:.1f} im/s", f"forward only, on {latency['device']}")
        if m["pipeline_images_per_second"] is not None:
            table.add_row("throughput (pipeline)", f"{m['pipeline_images_per_second']:.1f} im/s",
                          prof["pipeline"]["protocol"]["source"])
        table.add_row("peak memory", f"{m['peak_memory_mb']:.0f} MB", prof["memory"]["kind"])
    else:
        table.add_row("latency", "—", "not measured (--runs 0)")
    out = _stdout()
    out.print(table)
    if args.breakdown:
        rows = Table(title="per module (MACs counted by FlopCounterMode)")
        for column in ("module", "params", "MACs", "share"):
            rows.add_column(column, justify="left" if column == "module" else "right")
        for row in prof["by_module"]:
            indent = "  " * row["name"].count(".")
            rows.add_row(indent + row["name"], _millions(row["params"]), _giga(row["macs"]),
                         f"{100 * row['macs'] / m['macs']:.1f} %" if m["macs"] else "—")
        out.print(rows)
    return EXIT_OK


def _percent(x: float) -> str:
    return f"{100 * x:.0f} %"


def cmd_bench(args) -> int:
    from segbench.bench import Settings, quick_settings, run_bench
    from segbench.devices import resolve_device
    from segbench.results import write_json_atomic

    overrides = {k: v for k, v in {"size": args.size, "rounds": args.rounds, "calls": args.calls,
                                   "images": args.images}.items() if v is not None}
    if any(v < 1 for v in [*overrides.values(), args.scale_images, args.scale_rounds, args.corruption_images]):
        raise UsageError("segbench bench: --size, --rounds, --calls, --images, --scale-images, --scale-rounds "
                         "and --corruption-images must be at least 1")
    device = resolve_device(args.device)
    common = {"device": device, "workers": args.workers, "amp": args.amp, "compile": args.compile,
              "scale": not args.no_scale, "scale_images": args.scale_images, "scale_rounds": args.scale_rounds,
              "corruption_images": args.corruption_images,
              **overrides}
    settings = quick_settings(**common) if args.quick else Settings(**common)
    console = _console()
    with console.status("bench", spinner="dots") if not args.json else contextlib.nullcontext() as status:
        result = run_bench(settings, progress=(lambda text: status.update(f"bench: {text}")) if status else None)
    if args.out:
        write_json_atomic(Path(args.out), result)
    if args.json:
        _print_json(result)
        return EXIT_OK
    out = _stdout()
    mm = result["matmul"]
    precision = f"{settings.amp} autocast" if settings.amp else "float32"
    out.print(f"{result['device_name']} ({settings.device}, {result['threads']} threads, {precision}"
              f"{', compiled' if settings.compile else ''}); matrix multiply {mm['n']}^3 {mm['dtype']}: "
              f"{mm['macs_per_second'] / 1e9:.1f} GMAC/s; load average "
              f"{result['load_average']['before'][0]:.2f} -> {result['load_average']['after'][0]:.2f}", highlight=False)
    table = Table(title=f"forward passes, same weights (median of {settings.rounds} interleaved rounds)")
    for column in ("comparison", "reference", "ours ms", "reference ms", "speed-up [min-max]", "max |Δ logit|",
                   "GMACs (run)", "efficiency ours (run)", "efficiency reference"):
        table.add_column(column, justify="left" if column in ("comparison", "reference") else "right")
    for c in result["comparisons"]:
        ours, ref, up = c["ours"], c["reference"], c["speedup"]
        run = f" ({ours['executed_gmacs']:.1f})" if abs(ours["executed_gmacs"] - ours["gmacs"]) > 1e-3 else ""
        run_eff = f" ({_percent(ours['executed_efficiency'])})" if run else ""
        table.add_row(f"{c['name']} {c['input']}", c["reference_name"], f"{ours['ms']:.1f}", f"{ref['ms']:.1f}",
                      f"{up['median']:.2f}x [{up['min']:.2f}-{up['max']:.2f}]", f"{c['max_abs_diff']:.1e}",
                      f"{ours['gmacs']:.1f}{run}", _percent(ours["efficiency"]) + run_eff, _percent(ref["efficiency"]))
        if "model" in c:
            m = c["model"]
            table.add_row(f"  full model {m['name']}", f"decoder: {m['decoder_ms']:+.1f} ms", f"{m['ms']:.1f}", "",
                          "", "", f"{m['gmacs']:.1f}", _percent(m["efficiency"]), "")
    out.print(table)
    for c in result["comparisons"]:
        out.print(f"  {c['name']}: reference {c['reference_impl']}", highlight=False)
    out.print("  GMACs: the architecture's (segbench.profiling); in brackets what the forward executes where a fast "
              "path does less work. Efficiency: MACs per second over the matrix product's.", highlight=False)
    table = Table(title=f"evaluation loop on the synthetic set ({settings.images} images, "
                        f"median of {settings.rounds} runs, {settings.workers} workers)")
    for column in ("model", "protocol", "images/s (loop)", "images/s (predict)", "images/s (forwards only)",
                   "forwards / image", "predict over forwards [min-max]", "boundary + calibration ms / image"):
        table.add_column(column, justify="left" if column in ("model", "protocol") else "right")
    for p in result["pipelines"]:
        for name in ("single_scale", "multi_scale"):
            r = p[name]
            table.add_row(p["model"], name, f"{r['images_per_second']:.2f}", f"{r['predict_images_per_second']:.2f}",
                          f"{r['forward_images_per_second']:.2f}", f"{r['forwards_per_image']:.0f}",
                          f"+{_percent(r['overhead'])} [{_percent(r['overhead_min'])}-{_percent(r['overhead_max'])}]",
                          f"{1000 * sum(r['metric_seconds_per_image'].get(k, 0) for k in ('boundary', 'calibration')):.1f}"
                          f" (+{100 * r['added_metrics_fraction']:.1f} %)")
    out.print(table)
    added = result["added_metrics"]
    seconds = added["metric_seconds_per_image"]
    out.print(f"added metrics, {added['model']} single scale on {added['scene'][0]}x{added['scene'][1]} scenes "
              f"({added['protocol']}): evaluation {added['seconds_per_image']:.2f} s / image; boundary "
              f"{seconds.get('boundary', 0):.3f} s + calibration {seconds.get('calibration', 0):.3f} s = "
              f"+{100 * added['added_metrics_fraction']:.1f} % over the evaluation without them", highlight=False)
    if result["scale"]:
        _print_scale(out, result["scale"])
    return EXIT_OK


def _spread(r: dict) -> str:
    return f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"


def _print_scale(out, scale: dict) -> None:
    mm = scale["mmseg_pipeline"]
    if "skipped" in mm:
        out.print(f"evaluation loop against mmsegmentation: skipped: {mm['skipped']}", highlight=False)
    else:
        table = Table(title=f"whole evaluation loop (PNG files to confusion matrix), segbench against mmsegmentation "
                            f"{mm['mmseg']}, same weights, interleaved rounds")
        for column in ("model", "images", "protocol", "segbench images/s", "mmseg images/s", "speed-up [min-max]",
                       "same pixels", "max |Δ prob|"):
            table.add_column(column, justify="left" if column in ("model", "images", "protocol") else "right")
        for c in mm["comparisons"]:
            for name in ("single_scale", "multi_scale"):
                if name not in c:
                    continue
                r = c[name]
                diff = r.get("max_probability_difference")
                table.add_row(c["model"], f"{c['images']} x {c['image_size'][0]}x{c['image_size'][1]}", r["protocol"],
                              f"{r['ours_images_per_second']:.3f}", f"{r['mmseg_images_per_second']:.3f}",
                              _spread(r["speedup"]), f"{100 * r['pixel_agreement']:.2f} %",
                              "—" if diff is None else f"{diff:.1e}")
        out.print(table)
    c = scale["corruption"]
    ips = c["images_per_second"]
    pair = ("the plain loop in 2 processes: not measured (no fork here)" if c["plain_two_processes_speedup"] is None
            else f"the plain loop in 2 processes: {c['plain_two_processes_speedup']:.2f}x the loop in 1, 2 workers at "
                 f"{_percent(c['two_workers_share_of_plain_two'])} of its images/s")
    png = ", ".join(f"{k}: {v['seconds_per_image'] * 1e3:.0f} ms, {v['bytes_per_image'] / 1e6:.2f} MB"
                    for k, v in c["png_encoding"].items())
    out.print(f"corruption generation ({c['images']} images {c['image_size'][0]}x{c['image_size'][1]} x "
              f"{len(c['corruptions'])} corruptions at severity {c['severity']}, median of {c['rounds']} rounds): "
              f"plain imagecorruptions loop {ips['plain']:.2f} images/s, segbench corrupt {ips['workers_1']:.2f} (1 worker, "
              f"overhead {_percent(c['overhead'])}), {ips['workers_2']:.2f} (2 workers, "
              f"{c['two_workers_speedup']:.2f}x one worker; {pair}; CPU time: overhead {_percent(c['cpu_overhead'])}, 2 workers "
              f"{_percent(c['two_workers_extra_cpu'])} over 1; {c['cpu_count']} cores, load average "
              f"{c['load_average'][0]:.1f}); PNG per image ({png}); segbench's: {c['png_encoder']}",
              highlight=False)
    m = scale["memory"]
    small, large = m["runs"]
    out.print(f"peak memory (RSS, fresh processes, size breakdown + bootstrap + per-image counts): "
              f"{small['images']} images {small['peak_rss_bytes'] / 2**20:.0f} MiB, {large['images']} images "
              f"{large['peak_rss_bytes'] / 2**20:.0f} MiB (x{m['ratio']:.3f}, "
              f"{m['rss_bytes_per_image'] / 1024:.1f} KiB per image); per-image file {m['per_image_file_bytes_per_image']:.0f} B per image, record "
              f"{m['record_bytes_per_image']:.1f} B per image", highlight=False)


def cmd_report(args) -> int:
    from segbench import report

    from segbench.results import scan_records

    if not Path(args.results).is_dir():
        raise UsageError(f"{args.results}: no such results folder")
    for line in report.skipped(args.results):
        print(f"segbench report: skipped {line}", file=sys.stderr)
    if not scan_records(args.results)[0]:
        raise UsageError(f"{args.results}: no records in this folder (write some with `segbench run SUITE`)")
    files = report.render(args.results, args.out)
    if args.json:
        _print_json({"index": str(Path(args.out) / "index.html"), "written": [str(p) for p in files]})
    else:
        tables = sum(p.suffix == ".csv" for p in files)
        plots = sum(p.suffix == ".png" for p in files)
        _console().print(f"report: {Path(args.out) / 'index.html'} (one self-contained page), report.md, report.tex; "
                         f"{tables} tables as CSV and LaTeX, {plots} plots, in {args.out}/")
    return EXIT_OK


def _number(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if abs(value) >= 1e5 else f"{value:.3f}".rstrip("0").rstrip(".")


def _change(before, after) -> str:
    if before is None or after is None:
        return "—"
    delta = after - before
    pct = f" ({100 * delta / abs(before):+.1f} %)" if before else ""
    return f"{_number(delta) if delta < 0 else '+' + _number(delta)}{pct}"


def cmd_check(args) -> int:
    from segbench.regression import as_dict, check, load_tolerances, where

    result = check(args.results, args.baseline, load_tolerances(args.tolerances))  # CheckError: exit 2
    if args.json:
        _print_json(as_dict(result))
        return EXIT_OK if result.ok else EXIT_FAILED
    table = Table(title=f"segbench check: {args.results} against {args.baseline}")
    for column in ("job", "kind", "model", "where", "metric", "baseline", "current", "change", "tolerance", "verdict"):
        table.add_column(column, justify="right" if column in ("baseline", "current", "change") else "left")
    colour = {"regression": "red", "metric missing": "red", "not gated": "yellow", "ok": "green"}
    shown = [f for f in result.findings if args.all or f.failed or f.moved]
    for f in shown:
        verdict = f.verdict.upper() if f.failed else f.verdict
        table.add_row(f.current["job_id"][:8], f.current["kind"], f.current["model"], where(f.current), f.metric,
                      _number(f.before), _number(f.after), _change(f.before, f.after), f.limit,
                      f"[{colour[f.verdict]}]{verdict}[/{colour[f.verdict]}]" + (f" ({f.note})" if f.note else ""))
    for r in result.pairing.missing:
        table.add_row(r["job_id"][:8], r["kind"], r.get("model", ""), where(r), "—", "", "", "", "",
                      "[red]MISSING: no record of this baseline job[/red]")
    for r in result.errors:
        table.add_row(r["job_id"][:8], r["kind"], r.get("model", ""), where(r), "—", "", "", "", "",
                      f"[red]ERROR: {r['error']['type']}: {r['error']['message'][:80]}[/red]")
    out = _stdout()
    if table.row_count:
        out.print(table)
    pairs = result.pairing.pairs
    by_key = sum(m != "job id" for _, _, m in pairs)
    lines = [f"{len(pairs)} records compared with the baseline ({len(pairs) - by_key} matched by job id"
             + (f", {by_key} by kind, model, dataset and protocol: their job ids differ, so a setting of the "
                "suite changed" if by_key else "") + ")",
             f"{len(result.findings)} metrics checked, {sum(f.moved for f in result.findings)} moved "
             f"({len(shown)} shown{'' if args.all else '; --all shows every metric'}), "
             f"{len(result.regressions)} beyond tolerance, "
             f"{sum(f.verdict == 'not gated' for f in result.findings)} not gated"]
    if result.pairing.missing or result.errors:
        lines.append(f"{len(result.pairing.missing)} baseline jobs without a record, {len(result.errors)} failed")
    if result.pairing.new:
        lines.append(f"{len(result.pairing.new)} records not in the baseline (not checked): "
                     + ", ".join(f"{r['job_id'][:8]} {r['kind']} {r.get('model', '')}" for r in result.pairing.new[:5])
                     + (" ..." if len(result.pairing.new) > 5 else ""))
    for path, why in result.unreadable:
        lines.append(f"{path}: {why}")
    if result.environments:
        lines.append(f"environment differs from the baseline's: {result.environments_text}")
    lines.append("check passed" if result.ok else "check FAILED: " + "; ".join(result.reasons))
    for line in lines:
        out.print(line, highlight=False)
    return EXIT_OK if result.ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every job of a suite file (skips finished ones)")
    p.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    p.add_argument("--force", action="store_true", help="redo finished jobs")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/N",
                   help="run every N-th job (by id) of each kind, e.g. one SLURM array task; shards share the "
                        "results folder; no report (run `segbench report` once all shards finished)")
    p.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
                   help="how long a job waits for its training job's record from another shard (default 48 h)")
    p.add_argument("--no-report", action="store_true", help="skip the report named in the suite")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train one model with a paper recipe (resumable; torchrun for several GPUs)",
                       description="Train MODEL on a dataset with a paper's recipe (default: the one for the "
                                   "model's family and the dataset; the README lists them). Re-running with the "
                                   "same --out continues from the last checkpoint. Under torchrun the global "
                                   "batch is split over the processes.")
    p.add_argument("model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root")
    p.add_argument("--split", default="train")
    p.add_argument("--recipe", help="e.g. segmenter_ade20k, setr_cityscapes, segformer_coco_stuff, cnn_ade20k, scratch")
    p.add_argument("--iters", type=int, help="override the recipe's iterations")
    p.add_argument("--batch-size", type=int, help="override the recipe's global batch size")
    p.add_argument("--lr", type=float, help="override the recipe's base learning rate")
    p.add_argument("--crop-size", type=int, help="override the recipe's (square) crop")
    p.add_argument("--accumulate", type=int, default=1, help="gradient-accumulation steps per iteration")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision")
    p.add_argument("--encoder-init", metavar="FILE", help="ImageNet weights for a ViT encoder (timm .pth / "
                                                           ".safetensors, Google .npz), as the papers fine-tune")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (0: none)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="iterations between resumable checkpoints")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on --eval-split every N iterations")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--eval-max-images", type=int)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch / OpenMP threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="folder for checkpoints (last.pth, final.pth) and train_log.jsonl")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate one model, or score a folder of predictions, on one dataset split")
    p.add_argument("model", nargs="?", help="registry name (omit with --predictions)")
    p.add_argument("--predictions", metavar="DIR",
                   help="score prediction PNGs named after the images (<name>.png) instead of running a model")
    p.add_argument("--ids", choices=("auto", "train", "label"), default="auto",
                   help="what prediction PNGs hold: training ids, the dataset's label ids (e.g. Cityscapes "
                        "labelIds), or auto-detect (default)")
    p.add_argument("--checkpoint")
    p.add_argument("--random-weights", action="store_true",
                   help="evaluate the architecture's untrained weights (drawn from --seed) on purpose")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and of the bootstrap")
    p.add_argument("--threads", type=int, help="torch / OpenMP threads (default: torch's)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root")
    p.add_argument("--split", default="val")
    p.add_argument("--protocol", choices=("single_scale", "multi_scale"), default="single_scale")
    p.add_argument("--max-images", type=int)
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95 %% CI of mIoU (0: none)")
    p.add_argument("--no-size", action="store_true", help="skip the object-size breakdown")
    p.add_argument("--no-boundary", action="store_true", help="skip boundary IoU (mBIoU)")
    p.add_argument("--boundary-dilation", type=float, metavar="F",
                   help="boundary band as a fraction of the image diagonal (default 0.02)")
    p.add_argument("--no-calibration", action="store_true", help="skip ECE / NLL / Brier and error detection")
    p.add_argument("--out", metavar="RECORD.json", help="also write a record (+ per-image counts beside it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that read and resize images ahead of the model (default 0: none)")
    p.add_argument("--batch-size", default="auto",
                   help="sliding-window crops per forward pass (windows of all scales and flips share passes); "
                        "default auto: the largest that fits on a GPU (up to 32), 8 on a CPU")
    p.add_argument("--amp", choices=("bf16", "fp16"),
                   help="autocast the model (GPU); off by default, stated in the record (timings.dtype)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model; stated in the record")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="paired bootstrap test: does record A beat record B on the same images?")
    p.add_argument("a", help="evaluation record (JSON) of model A")
    p.add_argument("b", help="evaluation record (JSON) of model B")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'segformer*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="list dataset kinds, or write the synthetic set to disk")
    p.add_argument("--materialize", action="store_true", help="write the synthetic dataset in the ADE20K layout")
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("corrupt", help="write the corrupted copies of a split (Cityscapes-C); resumable",
                       description="Write every image of a split under each corruption and severity (SegFormer "
                                   "Table 5: 16 corruptions, noise at severities 1-3, the rest at 1-5) as PNG in "
                                   "the dataset's own layout, one root per OUT/<corruption>/<severity>, with "
                                   "OUT/manifest.json (sha256 of every file, seeds, library versions). "
                                   "Re-running continues where it stopped.")
    p.add_argument("dataset", nargs="?", default="cityscapes", help="dataset kind (default: cityscapes)")
    p.add_argument("--root", help="the dataset folder (not needed for synthetic)")
    p.add_argument("--out", required=True, help="folder for the corrupted copies and manifest.json")
    p.add_argument("--split", default="val")
    p.add_argument("--corruptions", type=_names, help="comma-separated subset (default: all 16): "
                                                      "motion_blur,defocus_blur,glass_blur,gaussian_blur,"
                                                      "gaussian_noise,impulse_noise,shot_noise,speckle_noise,"
                                                      "brightness,contrast,saturate,jpeg_compression,"
                                                      "snow,spatter,fog,frost")
    p.add_argument("--severities", type=_severities, help="e.g. 1,3 (default: noise 1-3, the others 1-5; "
                                                           "noise never above 3)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--max-images", type=int, help="only the first N images of the split")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/N",
                   help="only every N-th image (by id), listed in OUT/manifest.part-i-of-N.json; shards share OUT; "
                        "a run without --shard afterwards folds the parts into OUT/manifest.json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corrupt)

    p = sub.add_parser("profile", help="parameters, MACs (attention included), latency, throughput and memory of a model",
                       description="Count parameters and multiply-accumulates (FlopCounterMode, attention included; "
                                   "fvcore's figure beside it with the operators it skips) and time the model's "
                                   "forward and its full test-time protocol. MACs are counted on the meta device "
                                   "(no memory, no compute); --runs 0 --no-fvcore never builds the real model.")
    p.add_argument("model", help="registry name (`segbench models`)")
    p.add_argument("--size", default="512x512", help="input HEIGHTxWIDTH (default 512x512)")
    p.add_argument("--dataset", default="ade20k", help="class count and test protocol of the pipeline timing "
                                                       "(default ade20k: 150 classes)")
    p.add_argument("--root", help="the dataset folder, where its class count needs one (folder: its classes file)")
    p.add_argument("--num-classes", type=int, help="override the dataset's class count")
    p.add_argument("--batch-size", default="1", help="images per timed forward, or 'max': the largest power of two "
                                                     "that fits in memory (Segmenter's images/s protocol)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards before timing")
    p.add_argument("--runs", type=int, default=20, help="timed forwards (0: parameters and MACs only)")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-fvcore", action="store_true", help="skip fvcore's count (it needs a real forward)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the full test-protocol timing")
    p.add_argument("--breakdown", action="store_true", help="also print MACs and parameters per module")
    p.add_argument("--out", metavar="RECORD.json", help="also write the profile record")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("bench", help="segbench's speed against HF transformers and timm, with the same weights, "
                                     "and the evaluation pipeline's throughput",
                       description="Time segbench's SegFormer-B0/B2 against HF transformers', and its Segmenter / SETR "
                                   "ViT encoders against timm's, with the same weights (max logit difference printed "
                                   "beside each speed-up), in interleaved rounds on this machine; each model's "
                                   "efficiency (architecture MACs per second over a large matrix product's); and the "
                                   "evaluation loop on the synthetic set (single scale, multi-scale + flip) next to "
                                   "the sum of its forward passes. A benchmark, not a test: nothing passes or fails. "
                                   "Threads: set OMP_NUM_THREADS.")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--quick", action="store_true", help="256 x 256 inputs, 3 rounds, micro models in the pipeline "
                                                        "(about a minute on a CPU)")
    p.add_argument("--size", type=int, help="input side of the forward comparisons (default 512)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    p.add_argument("--calls", type=int, help="timed forwards per contestant and round (default 1)")
    p.add_argument("--images", type=int, help="synthetic images per pipeline run (default 4)")
    p.add_argument("--workers", type=int, default=0, help="data-loading workers in the pipeline runs (default 0)")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast both sides (and the matrix product's dtype)")
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument("--no-scale", action="store_true", help="skip the loop against mmsegmentation, corruption "
                                                            "generation and memory measurements")
    p.add_argument("--scale-images", type=int, default=2, help="ADE-like images per loop against mmsegmentation "
                                                               "(default 2)")
    p.add_argument("--corruption-images", type=int, default=8, help="images per corruption-generation run, each "
                                                                    "x 16 corruptions (default 8)")
    p.add_argument("--scale-rounds", type=int, default=3, help="interleaved rounds of those comparisons (default 3)")
    p.add_argument("--out", metavar="BENCH.json", help="also write the results as JSON")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="render tables and plots from a results folder",
                       description="Render the records of a results folder as paper-shaped tables (the papers' "
                                   "numbers beside ours), generic tables and plots: OUT/index.html (self-contained), "
                                   "OUT/report.md, OUT/report.tex, and every table as CSV and LaTeX.")
    p.add_argument("results", help="folder of records, e.g. results/quickstart")
    p.add_argument("--out", required=True, help="output folder, e.g. reports/quickstart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("check", help="regression gate: compare records to a baseline with tolerances (exit 1 on "
                                     "a regression)",
                       description="Pair each baseline record with the record of the same job id in RESULTS (else "
                                   "the one of the same kind, model, dataset and protocol), check every metric the "
                                   "tolerance file names, and print what moved. Exit 0: within tolerance; 1: a "
                                   "regression, a missing job or an error record; 2: bad input.")
    p.add_argument("results", help="folder of records to check")
    p.add_argument("--baseline", required=True, help="folder of baseline records, e.g. baselines/quickstart")
    p.add_argument("--tolerances", required=True, help="YAML file of limits, e.g. baselines/tolerances.yaml")
    p.add_argument("--all", action="store_true", help="list every metric checked, not only those that moved")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SegbenchError as exc:  # the user's input: one line. Anything else is a bug and keeps its traceback.
        print(f"segbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("segbench: interrupted; finished jobs are saved and a re-run continues from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
