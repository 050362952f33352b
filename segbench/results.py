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
    records = [read_record(p) for p in sorted(Path(results_dir).rglob("*.json"))]
    records = [r for r in records if r and "job_id" in r and "schema" in r]
    return sorted(records, key=lambda r: r.get("finished") or "")


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
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def new_record(job_id: str, suite: str, kind: str, **fields) -> dict:
    return {"schema": SCHEMA_VERSION, "job_id": job_id, "suite": suite, "kind": kind, **fields}
