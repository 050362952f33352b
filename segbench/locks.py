"""One lock file per job in a shared results folder, so that two ``segbench run`` (two
shells, two SLURM jobs, the shards of one suite) never compute the same job at once.

A lock is ``<results>/.locks/<job id>.lock`` created exclusively, holding the owner's host
and pid. A lock whose owner is a dead process on this host is stale (a crash or kill -9)
and is taken over; a lock from another host is trusted while it exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # a torn lock file: its writer died while creating it
    return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0)))


def try_lock(folder: Path, name: str) -> Path | None:
    """Take the lock ``name``; its path, or None while another live process holds it."""
    folder = Path(folder) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if not _stale(path):
                return None
            # Rename first: of two processes taking over one stale lock, only one wins the rename.
            grave = path.with_name(f"{path.name}.{os.getpid()}.stale")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, grave)
                grave.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
        return path
    return None


def release(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
