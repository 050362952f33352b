"""`segbench corrupt --shard i/N`: the shards' outputs and manifests, once folded, are
byte-identical to one process's; a sweep reads the parts before they are folded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segbench.cli import main
from segbench.data.datasets import build_dataset, materialize_synthetic
from segbench.robustness.corruptions import CorruptionError, corruption_grid, generate, read_manifest
from segbench.robustness.sweep import CorruptedDataset, CorruptionCache

GRID = corruption_grid(["contrast", "gaussian_noise"], [1])


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return materialize_synthetic(tmp_path_factory.mktemp("data") / "syn", {"val": 5}, image_size=32)


def test_shards_then_fold_are_byte_identical_to_one_process(tmp_path, root):
    one = generate("synthetic", "val", str(root), tmp_path / "one", GRID)
    assert one["written"] == 10
    shared = tmp_path / "sharded"
    parts = [generate("synthetic", "val", str(root), shared, GRID, shard=(i, 3)) for i in range(3)]
    assert sorted(p["images"] for p in parts) == [1, 2, 2] and sum(p["written"] for p in parts) == 10
    names = sorted(p.name for p in shared.glob("manifest*"))
    assert names == [f"manifest.part-{i}-of-3.json" for i in range(3)]  # each shard its own file, no journal left
    assert read_manifest(shared) == read_manifest(tmp_path / "one")  # merged on read, before any fold
    fold = generate("synthetic", "val", str(root), shared, GRID)  # the one-process run finds all done
    assert fold["written"] == 0 and fold["skipped"] == 10
    assert files(shared) == files(tmp_path / "one")  # images, labels and manifest.json, byte for byte


def test_a_sweep_reads_an_unfolded_sharded_cache(tmp_path, root):
    for i in range(2):
        generate("synthetic", "val", str(root), tmp_path, GRID, shard=(i, 2))
    dataset = build_dataset("synthetic", "val", str(root))
    cached = CorruptedDataset(dataset, "contrast", 1, CorruptionCache(tmp_path, "synthetic", "val"))
    fly = CorruptedDataset(dataset, "contrast", 1)
    for index in range(len(dataset)):
        np.testing.assert_array_equal(cached[index].image, fly[index].image)


def test_shard_needs_a_dataset_folder(tmp_path):
    with pytest.raises(CorruptionError, match="--shard 0/2: give --root"):
        generate("synthetic", "val", None, tmp_path, GRID, shard=(0, 2), max_images=1)


def test_cli_shard_flag(tmp_path, root, capsys):
    argv = ["corrupt", "synthetic", "--root", str(root), "--out", str(tmp_path), "--corruptions", "contrast",
            "--severities", "1", "--workers", "1", "--shard", "1/2", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["manifest"] == str(tmp_path / "manifest.part-1-of-2.json")
    assert len(read_manifest(tmp_path)["images"]) == 2  # ids sorted, every 2nd from the second: 2 of 5
