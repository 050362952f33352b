"""Records: one flat, self-describing JSON file per job, written atomically.

A record holds the job id, suite, model, checkpoint hash, dataset, split, protocol,
metric values, timings and the environment it ran in. ``status`` is ``ok`` or
``error``; an error record keeps the message and traceback so a failed job is visible
in reports instead of silently missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
import subprocess
import tempfile
import types
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segbench.errors import ResultsError
from segbench.files import atomic_write
from segbench.identity import ID_VERSION

SCHEMA_VERSION = 2  # 2: `dataset` without its split and `split` a field of its own in every kind; id_version


class RecordFormatError(ResultsError):
    """A JSON file in a results folder that is not valid JSON."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN -> null: JSON has no NaN
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same folder, then rename: never a half file."""
    with atomic_write(path, "w") as f:
        json.dump(_jsonable(data), f, indent=1, allow_nan=False)


def record_path(results_dir: Path, job_id: str, model: str) -> Path:
    """One record per (job, suite model): two models with the same weights get one each."""
    return Path(results_dir) / f"{job_id}.{model}.json"


def find_record(results_dir: Path, job_id: str) -> dict | None:
    """A finished record of this job under any model name (two suite models with the same
    weights, or a renamed model, share the computation), else any record of it."""
    found = [read_record(p) for p in sorted(Path(results_dir).glob(f"{job_id}.*.json"))]
    found = [r for r in found if r]
    return next((r for r in found if r.get("status") == "ok"), found[0] if found else None)


def read_record(path: Path) -> dict | None:
    """The record at ``path``; None if there is none. A file that cannot be read (permissions)
    is an error naming it, never taken for a missing record."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read this record ({exc.strerror}); fix its permissions "
                           "(records are written with the umask's mode) or move it away") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordFormatError(f"{path}: not a valid record (JSON error at line {exc.lineno}: {exc.msg}); "
                                "delete it to recompute its job") from None


def load_records(results_dir: str | os.PathLike) -> list[dict]:
    """Every record under a folder (recursively), oldest first. A record file that cannot be
    used (unreadable, not JSON, incomplete) is an error naming it, and so is a folder holding
    records of another schema: nothing is silently left out."""
    records, problems = scan_records(results_dir)
    if problems:
        path, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ResultsError(f"{path}: {why}{more}")
    return records


def scan_records(results_dir: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every record under a folder (recursively), oldest first, and the record files that could
    not be used, each with why: unreadable, not JSON, or a record without the fields every
    record has. JSON files that are not records (no ``job_id`` and no ``schema``: a dataset
    manifest, a model config) are neither."""
    records, problems = [], []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except OSError as exc:
            problems.append((path, f"unreadable ({exc.strerror or exc})"))
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append((path, f"not valid JSON ({exc})"))
            continue
        if not isinstance(record, dict) or not ({"job_id", "schema"} & set(record)):
            continue
        missing = [key for key in ("job_id", "schema", "kind", "status") if key not in record]
        if not missing and record["status"] == "ok" and not isinstance(record.get("metrics"), dict):
            missing = ["metrics"]
        if missing:
            problems.append((path, f"not a complete record: no {', '.join(f'`{m}`' for m in missing)}"))
            continue
        if record["schema"] != SCHEMA_VERSION:
            problems.append((path, f"record schema {record['schema']}, this segbench reads schema {SCHEMA_VERSION} "
                                   "(README: Records): re-run its suite into a new folder, or read it with the "
                                   "segbench that wrote it"))
            continue
        records.append(record)
    return sorted(records, key=lambda r: r.get("finished") or ""), problems


def write_record(path: Path, record: dict) -> None:
    """Write a finished record; if the folder refuses it (full disk, lost permissions), keep it
    in the temporary folder and say where, so the computed result is not lost."""
    try:
        write_json_atomic(path, record)
    except OSError as exc:
        keep = Path(tempfile.gettempdir()) / "segbench-unsaved" / Path(path).name
        write_json_atomic(keep, record)
        raise ResultsError(f"{path}: could not write this record ({exc.strerror}); the finished record is "
                           f"kept at {keep}: copy it there once the folder is writable, and re-run") from None


def check_writable(folder: Path) -> None:
    """Fail before any job computes if its record could not be written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ResultsError(f"{folder}: results folder is not writable ({exc.strerror}); fix its permissions "
                           "or set `results:` in the suite to another folder") from None


def records_frame(records: list[dict]):
    """Records as a pandas DataFrame, nested fields flattened to dotted columns."""
    import pandas as pd

    return pd.json_normalize(records)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


ENV_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy", "pillow", "opencv-python", "imagecorruptions-imaug")


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """Where a record was produced: library versions, device, threads, git commit."""
    import timm
    import torch

    from segbench.devices import device_name

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "device_name": device_name(device),
        "git_sha": git_sha(),
        # the resolved versions of the packages the numbers depend on (requirements.lock pins them):
        # `segbench check` reports differences beside any regression
        "packages": {name: _installed_version(name) for name in ENV_PACKAGES},
        "cpu": _cpu_model(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
    return env


def new_record(job_id: str, suite: str, kind: str, **fields) -> dict:
    return {"schema": SCHEMA_VERSION, "id_version": ID_VERSION, "job_id": job_id, "suite": suite, "kind": kind,
            **fields}


# --- the record schema -----------------------------------------------------------------
# One dataclass per record kind: the fields a record of that kind always has (more may
# follow, e.g. a sweep cell's `preview`). `runner` validates every record before writing
# it; readers get `schema` checked (``load_records``).

@dataclass(frozen=True)
class Record:
    schema: int  # SCHEMA_VERSION
    id_version: int  # segbench.identity.ID_VERSION: how job_id was computed
    job_id: str
    suite: str  # "" for a command's one-job suite
    kind: str  # train | eval | corruption | profile
    model: str  # the suite's name for the model
    arch: str | None  # its registry name (None: scored predictions)
    status: str  # ok | error
    dataset: str  # the dataset without its split: the kind ("ade20k"), a folder dataset's name, "acdc/fog"
    split: str | None  # e.g. "val" (None: profile records, which read no data)
    finished: str
    env: dict


@dataclass(frozen=True)
class ErrorRecord(Record):
    error: dict  # type, message, traceback


@dataclass(frozen=True)
class TrainRecord(Record):
    checkpoint: str
    checkpoint_sha256: str
    recipe: dict
    metrics: dict  # first_loss, final_loss, val_* of the last periodic evaluation
    train_log: str
    resumed_from: int
    notes: list
    timings: dict


@dataclass(frozen=True)
class EvalRecord(Record):
    metrics: dict  # mIoU, mAcc, aAcc, IoU, per_image, mIoU_ci, size...
    random_weights: bool  # untrained weights, on purpose: reports must say so beside the row
    per_image_file: str | None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_load: dict | None = None  # how the checkpoint loaded (format, ignored / missing keys)
    protocol_name: str | None = None  # None: scored predictions
    protocol: dict | None = None
    timings: dict | None = None


@dataclass(frozen=True)
class CorruptionRecord(EvalRecord):
    corruption: str = ""
    severity: int = 0
    sweep: dict | None = None


@dataclass(frozen=True)
class ProfileRecord(Record):
    input: dict
    metrics: dict
    profile: dict


RECORD_KINDS = {"train": TrainRecord, "eval": EvalRecord, "corruption": CorruptionRecord, "profile": ProfileRecord}


def _fits(value, hint) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        return type(None) in options
    return any(isinstance(value, o) and not (o is int and isinstance(value, bool)) for o in options
               if o is not type(None))


def record_problems(record: dict) -> list[str]:
    """What in ``record`` does not fit its kind's schema (empty: it fits)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    if record.get("schema") != SCHEMA_VERSION:
        return [f"schema {record.get('schema')!r}, this segbench reads schema {SCHEMA_VERSION}"]
    kind = record.get("kind")
    if kind not in RECORD_KINDS:
        return [f"kind {kind!r} is none of {', '.join(RECORD_KINDS)}"]
    cls = ErrorRecord if record.get("status") == "error" else RECORD_KINDS[kind]
    hints = typing.get_type_hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        if f.name not in record:
            if f.default is dataclasses.MISSING:
                problems.append(f"no field {f.name!r}")
        elif not _fits(record[f.name], hints[f.name]):
            problems.append(f"{f.name}: {record[f.name]!r} is not {hints[f.name]}")
    return problems


def validate_record(record: dict, where: str = "record") -> None:
    problems = record_problems(record)
    if problems:
        raise RecordFormatError(f"{where}: does not fit the record schema {SCHEMA_VERSION}: {'; '.join(problems)}")
