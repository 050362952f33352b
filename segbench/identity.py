"""Job identity: which finished record answers which job.

A job's id hashes exactly what changes its numbers, per job kind (see ``runner.plan``):
the architecture, the weights by content (sha256 of the checkpoint, the id of the training
job that writes them, or "random" with the seed), the dataset's kind, split and the
options that change its content, the protocol, the metric settings, amp / compile, the
seed and the thread count when the suite pins it. Nothing else goes in: not the model's
key in the suite (a renamed model reuses its records under the new name), not the other
models of its block, not machine paths (dataset root, checkpoint path: one results folder
serves machines with other mount points), not workers or batch size, not report settings.

``ID_VERSION`` names this scheme; records carry it, and a results folder holding records
of another version is refused (``runner.check_results_folder``) rather than silently
recomputed. Bump it whenever what goes into an id changes.
"""
from __future__ import annotations

import hashlib
import json
import os

ID_VERSION = 2

_sha256_cache: dict[tuple[str, int, int], str] = {}


def job_id(kind: str, identity: dict) -> str:
    blob = json.dumps({"id_version": ID_VERSION, "kind": kind, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, cached per (real path, size, mtime): a sweep that evaluates
    one 1 GB checkpoint in a hundred cells reads it once, and a file rewritten in place
    (a checkpoint retrained into the same path) is hashed again."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


def dataset_identity(spec, split: str) -> dict:
    """A dataset's content, not where it lives: kind, split and reader options. The synthetic
    set generated in memory and one written to disk are different content."""
    identity = {"kind": spec.kind, "split": split, "options": dict(spec.options)}
    if spec.kind == "synthetic" and spec.root is not None:
        identity["on_disk"] = True
    return identity
