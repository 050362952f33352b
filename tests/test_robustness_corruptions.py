"""Corrupted-image generation: the documented seeds, byte-identical caches across processes
and worker counts, resuming, and dataset layouts (synthetic/ADE, Cityscapes)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagecorruptions import corrupt
from layouts import write_ade, write_cityscapes
from PIL import Image

from segbench.data.datasets import Synthetic, build_dataset, read_image
from segbench.robustness import corruptions
from segbench.robustness.corruptions import (CORRUPTIONS, CorruptionError, corrupt_image, corruption_grid, generate,
                                             image_seed, read_manifest)
from segbench.robustness.sweep import CorruptedDataset, CorruptionCache

REPO = Path(__file__).resolve().parents[1]


def documented_seed(image_id: str, corruption: str, severity: int) -> int:
    # The rule as the README and the manifest state it, written out independently.
    return int.from_bytes(hashlib.sha256(f"{image_id}/{corruption}/{severity}".encode()).digest()[:4], "big")


def direct_call(image: np.ndarray, image_id: str, corruption: str, severity: int) -> np.ndarray:
    k = documented_seed(image_id, corruption, severity)
    np.random.seed(k)
    kwargs = {"seed": k} if corruption in ("impulse_noise", "glass_blur") else {}
    return corrupt(image, severity=severity, corruption_name=corruption, **kwargs)


def test_the_16_corruptions_of_segformer_table5_and_their_severities():
    grid = corruption_grid()
    assert list(grid) == ["motion_blur", "defocus_blur", "glass_blur", "gaussian_blur", "gaussian_noise",
                          "impulse_noise", "shot_noise", "speckle_noise", "brightness", "contrast", "saturate",
                          "jpeg_compression", "snow", "spatter", "fog", "frost"]
    assert sum(len(s) for s in grid.values()) == 4 * 3 + 12 * 5
    assert grid["speckle_noise"] == (1, 2, 3) and grid["frost"] == (1, 2, 3, 4, 5)
    # Asked-for severities stay within the protocol's: noise never above 3.
    assert corruption_grid(["fog", "shot_noise"], [5, 1, 3]) == {"fog": (1, 3, 5), "shot_noise": (1, 3)}


@pytest.mark.parametrize("corruptions_, severities, message", [
    (["zoom_blur"], None, "unknown corruption 'zoom_blur'"),
    (["fog", "fog"], None, "listed twice"),
    (["fog"], [0], "severity 0"),
    (["impulse_noise"], [4, 5], "impulse_noise is evaluated at severities 1-3 only"),
])
def test_bad_grids_are_errors(corruptions_, severities, message):
    with pytest.raises(CorruptionError, match=message):
        corruption_grid(corruptions_, severities)


def test_each_corruption_equals_a_direct_imagecorruptions_call_with_the_documented_seed():
    image = Synthetic("val", num_images=1, image_size=48)[0].image
    for corruption in CORRUPTIONS:
        severity = 2
        ours = corrupt_image(image, "scene_7", corruption, severity)
        assert ours.dtype == np.uint8 and ours.shape == image.shape
        np.testing.assert_array_equal(ours, direct_call(image, "scene_7", corruption, severity), err_msg=corruption)
    assert image_seed("scene_7", "fog", 2) == documented_seed("scene_7", "fog", 2)


def test_seeds_depend_on_image_corruption_and_severity_and_global_state_is_kept():
    image = Synthetic("val", num_images=1, image_size=48)[0].image
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = corrupt_image(image, "a", "gaussian_noise", 1)
    assert np.random.rand() == expected_next  # the caller's random stream is untouched
    assert not np.array_equal(a, corrupt_image(image, "b", "gaussian_noise", 1))
    assert not np.array_equal(a, corrupt_image(image, "a", "gaussian_noise", 2))
    np.testing.assert_array_equal(a, corrupt_image(image, "a", "gaussian_noise", 1))


def _run_cli(out: Path, workers: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "segbench", "corrupt", "synthetic", "--out", str(out),
                             "--corruptions", "gaussian_noise,impulse_noise,fog,jpeg_compression",
                             "--severities", "1,3", "--max-images", "3", "--workers", str(workers), "--json"],
                            capture_output=True, text=True, env=env, cwd=out.parent, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_two_generations_in_separate_processes_with_different_worker_counts_are_byte_identical(tmp_path):
    one, two = _run_cli(tmp_path / "one", workers=1), _run_cli(tmp_path / "two", workers=2)
    assert one["written"] == two["written"] == 3 * (2 + 2 + 2 + 2)
    files_one, files_two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert files_one == files_two
    manifest_one, manifest_two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert manifest_one["images"] == manifest_two["images"] and manifest_one["sources"] == manifest_two["sources"]
    assert not (tmp_path / "one" / "manifest.jsonl").exists()  # folded into manifest.json

    clean = Synthetic("val", num_images=3)
    for key, entry in manifest_one["images"].items():
        path = tmp_path / "one" / key
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert entry["seed"] == documented_seed(entry["image_id"], entry["corruption"], entry["severity"])
        index = int(entry["image_id"].rsplit("_", 1)[1]) - 1
        expected = direct_call(clean[index].image, entry["image_id"], entry["corruption"], entry["severity"])
        np.testing.assert_array_equal(read_image(path), expected, err_msg=key)
    assert manifest_one["versions"]["imagecorruptions"] and manifest_one["seed_rule"]


def test_a_corrupted_root_reads_as_the_dataset_and_matches_on_the_fly_mode(tmp_path):
    grid = corruption_grid(["speckle_noise", "contrast"], [2])
    generate("synthetic", "val", None, tmp_path, grid, max_images=2)
    clean = Synthetic("val", num_images=2)
    cache = CorruptionCache(tmp_path, "synthetic", "val")
    for corruption in grid:
        on_disk = build_dataset("synthetic", "val", str(tmp_path / corruption / "2"))  # the reader, on the copy
        assert len(on_disk) == 2
        cached, on_the_fly = CorruptedDataset(clean, corruption, 2, cache), CorruptedDataset(clean, corruption, 2)
        for i in range(2):
            np.testing.assert_array_equal(on_disk[i].image, on_the_fly[i].image)
            np.testing.assert_array_equal(cached[i].image, on_the_fly[i].image)
            np.testing.assert_array_equal(on_disk[i].label, clean[i].label)
            assert not np.array_equal(on_the_fly[i].image, clean[i].image)


def test_a_modified_cache_file_is_refused(tmp_path):
    generate("synthetic", "val", None, tmp_path, corruption_grid(["contrast"], [1]), max_images=1)
    path = next((tmp_path / "contrast" / "1" / "images").rglob("*.png"))
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(path)
    cache = CorruptionCache(tmp_path, "synthetic", "val")
    dataset = CorruptedDataset(Synthetic("val", num_images=1), "contrast", 1, cache)
    with pytest.raises(CorruptionError, match="sha256 differs"):
        dataset[0]
    with pytest.raises(CorruptionError, match="holds corrupted synthetic"):
        CorruptionCache(tmp_path, "synthetic", "train")


def test_an_interrupted_generation_resumes_without_redoing_finished_images(tmp_path, monkeypatch):
    grid = corruption_grid(["gaussian_noise", "brightness"], [1, 2])
    calls = []
    real = corruptions.corrupt_image

    def interrupted(*args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(corruptions, "corrupt_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate("synthetic", "val", None, tmp_path, grid, max_images=3)
    finished = read_manifest(tmp_path)["images"]
    assert len(finished) == 5  # the finished ones, folded into manifest.json on the way out
    mtimes = {key: (tmp_path / key).stat().st_mtime_ns for key in finished}

    calls.clear()
    monkeypatch.setattr(corruptions, "corrupt_image", lambda *args: calls.append(args[1:]) or real(*args))
    summary = generate("synthetic", "val", None, tmp_path, grid, max_images=3)
    assert (summary["written"], summary["skipped"]) == (12 - 5, 5)
    assert len(calls) == 7 and len(set(calls)) == 7
    assert not set(calls) & {(e["image_id"], e["corruption"], e["severity"]) for e in finished.values()}
    assert all((tmp_path / key).stat().st_mtime_ns == mtime for key, mtime in mtimes.items())
    assert len(read_manifest(tmp_path)["images"]) == 12

    # A third run has nothing left to do; a lost output file is redone.
    lost = next(iter(read_manifest(tmp_path)["images"]))
    (tmp_path / lost).unlink()
    calls.clear()
    assert generate("synthetic", "val", None, tmp_path, grid, max_images=3)["written"] == 1 and len(calls) == 1


def test_a_torn_journal_line_is_ignored_and_other_library_versions_are_refused(tmp_path, monkeypatch):
    grid = corruption_grid(["contrast"], [1])
    generate("synthetic", "val", None, tmp_path, grid, max_images=1)
    with open(tmp_path / "manifest.jsonl", "w") as f:
        f.write('{"path": "contrast/1/images/validation/x.png", "image_id"')  # killed mid-line
    assert len(read_manifest(tmp_path)["images"]) == 1
    versions = corruptions.library_versions()
    monkeypatch.setattr(corruptions, "library_versions", lambda: {**versions, "numpy": "0.0"})
    with pytest.raises(CorruptionError, match="different versions"):
        generate("synthetic", "val", None, tmp_path, grid, max_images=1)



def test_the_png_encoder_is_lossless_and_a_cache_from_another_encoder_is_refused(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes, no structure to exploit
    smooth = np.broadcast_to(np.arange(53, dtype=np.uint8)[None, :, None], (37, 53, 3))  # not contiguous either
    for image in (noisy, smooth, corrupt_image(np.ascontiguousarray(smooth), "x", "fog", 3)):
        data = corruptions.encode_png(image)
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(decoded), image)
        assert corruptions.encode_png(image.copy()) == data

    grid = corruption_grid(["contrast"], [1])
    generate("synthetic", "val", None, tmp_path, grid, max_images=1)
    assert read_manifest(tmp_path)["png_encoder"] == corruptions.PNG_ENCODER
    monkeypatch.setattr(corruptions, "PNG_ENCODER", {**corruptions.PNG_ENCODER, "compression": 6})
    with pytest.raises(CorruptionError, match="different png_encoder"):
        generate("synthetic", "val", None, tmp_path, grid, max_images=1)


# --- official layouts: Cityscapes (nested city folders, PNG) and ADE20K (JPEG sources)


def test_cityscapes_c_keeps_the_layout_links_the_labels_and_reads_with_the_reader(tmp_path):
    root = tmp_path / "cityscapes"
    label_ids = [np.full((40, 80), 7, np.uint8), np.full((40, 80), 26, np.uint8)]  # road, car
    instances = [np.zeros((40, 80), np.uint16), np.full((40, 80), 26001, np.uint16)]
    for city in ("aachen", "bochum"):
        write_cityscapes(root, label_ids, instance_ids=instances, city=city)
    grid = corruption_grid(["frost", "impulse_noise"], [3])
    assert generate("cityscapes", "val", str(root), tmp_path / "out", grid, workers=2)["written"] == 4 * 2
    clean = build_dataset("cityscapes", "val", str(root))
    for corruption in grid:
        cell = tmp_path / "out" / corruption / "3"
        copy = build_dataset("cityscapes", "val", str(cell))  # the reader, on the corrupted root
        assert [Path(f[0]).relative_to(cell) for f in copy.files] == [Path(f[0]).relative_to(root) for f in clean.files]
        for i in range(len(clean)):
            name = Path(clean.files[i][0]).stem  # the image id: aachen_000000_000019_leftImg8bit
            np.testing.assert_array_equal(copy[i].image, direct_call(clean[i].image, name, corruption, 3))
            np.testing.assert_array_equal(copy[i].label, clean[i].label)
            np.testing.assert_array_equal(copy[i].instances, clean[i].instances)
            assert os.path.samefile(copy.files[i][1], clean.files[i][1])  # hard-linked, not rewritten


def test_ade20k_jpeg_sources_become_png_the_reader_accepts(tmp_path):
    write_ade(tmp_path / "ade", [np.full((40, 60), 3, np.uint8)] * 2)
    generate("ade20k", "val", str(tmp_path / "ade"), tmp_path / "out", corruption_grid(["snow"], [1]))
    copy = build_dataset("ade20k", "val", str(tmp_path / "out" / "snow" / "1"))
    clean = build_dataset("ade20k", "val", str(tmp_path / "ade"))
    assert [Path(f[0]).name for f in copy.files] == ["ADE_val_00000001.png", "ADE_val_00000002.png"]
    for i in range(2):
        np.testing.assert_array_equal(copy[i].image, CorruptedDataset(clean, "snow", 1)[i].image)
