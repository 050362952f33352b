"""requirements.lock (what `make` and CI install) covers pyproject.toml's dependencies, pins
each at one version per environment with hashes, and holds the deliberate pins."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def lock_entries() -> dict[str, list[str]]:
    """name -> the versions it is pinned at (one per environment marker), each with hashes checked."""
    text = (ROOT / "requirements.lock").read_text()
    entries: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[a-z0-9])", text, flags=re.I):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^ ;\\]+)", block)
        if not match:
            continue
        assert "--hash=sha256:" in block, f"{match[1]} has no hash in requirements.lock"
        entries.setdefault(match[1].lower().replace("_", "-"), []).append(match[2])
    return entries


def test_the_lock_pins_every_dependency_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    entries = lock_entries()
    assert "torch" in entries and all(entries.values())
    missing = sorted(wanted - set(entries))
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"


def test_the_deliberate_pins_are_the_locked_versions():
    entries = lock_entries()
    for line in (ROOT / "requirements-pins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert entries[_name(name)] == [version.strip()], (name, entries[_name(name)])
