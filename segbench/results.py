"""Records: one flat, self-describing JSON file per job, written atomically.

A record holds the job id, suite, model, checkpoint hash, dataset, split, protocol,
metric values, timings and the environment it ran in. ``status`` is ``ok`` or
``error``; an error record keeps the message and traceback so a failed job is visible
in reports instead of silently missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segbench.files import atomic_write

SCHEMA_VERSION = 1


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


def record_path(results_dir: Path, job_id: str) -> Path:
    return Path(results_dir) / f"{job_id}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_records(results_dir: str | os.PathLike) -> list[dict]:
    """Every record under a folder (recursively), oldest first."""
    return scan_records(results_dir)[0]


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
        records.append(record)
    return sorted(records, key=lambda r: r.get("finished") or ""), problems


def records_frame(records: list[dict]):
    """Records as a pandas DataFrame, nested fields flattened to dotted columns."""
    import pandas as pd

    return pd.json_normalize(records)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "git_sha": git_sha(),
        # the resolved versions of the packages the numbers depend on (requirements.lock pins them):
        # `segbench check` reports differences beside any regression
        "packages": {name: _installed_version(name) for name in ENV_PACKAGES},
        "cpu": _cpu_model(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def new_record(job_id: str, suite: str, kind: str, **fields) -> dict:
    return {"schema": SCHEMA_VERSION, "job_id": job_id, "suite": suite, "kind": kind, **fields}
