"""Corrupted copies of a dataset split: Cityscapes-C as in SegFormer Table 5 (after Kamann
& Rother), for any dataset segbench reads.

Every corrupted image is a function of (image id, corruption, severity) alone::

    k = int.from_bytes(sha256(f"{image_id}/{corruption}/{severity}".encode()).digest()[:4], "big")
    np.random.seed(k)
    imagecorruptions.corrupt(image, severity, corruption, seed=k)   # seed= only for
                                                                    # impulse_noise, glass_blur

The image id is the image file's stem (e.g. ``frankfurt_000000_000294_leftImg8bit``), or
the sample's name for the in-memory synthetic set (``synthetic_val_00000001``, the stem
it has once written to disk). ``imagecorruptions`` is the maintained fork
``imagecorruptions-imaug``: it takes ``seed=`` for the two corruptions that otherwise
draw from unseeded generators. The same function serves the on-disk cache written by
:func:`generate` and the on-the-fly mode of a sweep, so both see the same pixels.

The cache (``segbench corrupt``) is a folder with one dataset root per cell::

    <out>/<corruption>/<severity>/<the dataset's own layout>   corrupted images as PNG,
                                                               labels hard-linked (or copied)
    <out>/manifest.json     library versions, the seed rule, sha256 of every source file and
                            output file, and of each source's decoded pixels

PNG because JPEG encoding differs between libjpeg builds: everyone evaluates the same
pixels. An output counts as done only when its file was renamed into place *and* its
line reached the manifest journal (``manifest.jsonl``, folded into ``manifest.json`` at
the end), so an interrupted generation resumes without redoing finished images.

``--shard i/N`` takes every N-th image by id (``sharding.deal``); shard i journals to and
writes ``manifest.part-i-of-N.json`` only, so shards share ``<out>``. Readers merge the
parts; a run without ``--shard`` folds them into ``manifest.json``, byte-identical to one
process's (sources and images sorted by key).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.errors import SegbenchError
from segbench.files import atomic_write
from segbench.identity import file_sha256
from segbench.results import write_json_atomic
from segbench.sharding import deal

# SegFormer Table 5's columns, in its order (blur, noise, digital, weather).
CORRUPTION_GROUPS = {
    "blur": ("motion_blur", "defocus_blur", "glass_blur", "gaussian_blur"),
    "noise": ("gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"),
    "digital": ("brightness", "contrast", "saturate", "jpeg_compression"),
    "weather": ("snow", "spatter", "fog", "frost"),
}
CORRUPTIONS = tuple(name for names in CORRUPTION_GROUPS.values() for name in names)
GROUP_OF = {name: group for group, names in CORRUPTION_GROUPS.items() for name in names}
SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")  # imagecorruptions-imaug's seed= argument
SEED_RULE = 'int.from_bytes(sha256(f"{image_id}/{corruption}/{severity}".encode()).digest()[:4], "big")'
MANIFEST_FORMAT = 1
# How the PNGs are encoded; stored in the manifest since it changes the bytes (not the
# pixels; its version is under `versions`). Chosen on 512x1024 corrupted images (one of each
# corruption, severity 3; `segbench bench` prints the comparison, README "Scale"): fpng's
# one-pass encoder (its own pixel-wise deflate; no zlib or libpng) took a seventh to a ninth
# of the time of the fastest libpng setting measured (OpenCV, Sub filter, Huffman-only zlib
# level 1), which was itself a third of Pillow's level 1, for files about 16 % larger. Encoding had been
# most of `segbench corrupt`'s overhead over the corruptions themselves. The bytes depend on
# fpng alone, not on the zlib and libpng a platform's OpenCV or Pillow was built with.
PNG_ENCODER = {"library": "fpng", "function": "fpng_ext.encode_ndarray"}


class CorruptionError(SegbenchError, ValueError):
    """Bad corruption settings, or a cache that does not match; the message says what to do."""


def protocol_severities(corruption: str) -> tuple[int, ...]:
    """Kamann & Rother / SegFormer Table 5: noise at severities 1-3, the rest at 1-5."""
    return (1, 2, 3) if GROUP_OF[corruption] == "noise" else (1, 2, 3, 4, 5)


def corruption_grid(corruptions=None, severities=None) -> dict[str, tuple[int, ...]]:
    """corruption -> its severities: the protocol's, or those asked for within the protocol's."""
    names = tuple(corruptions) if corruptions else CORRUPTIONS
    unknown = [n for n in names if n not in GROUP_OF]
    if unknown:
        raise CorruptionError(f"unknown corruption {unknown[0]!r}; choose from {', '.join(CORRUPTIONS)}")
    if len(set(names)) != len(names):
        raise CorruptionError(f"corruptions listed twice in {list(names)}")
    bad = [s for s in severities or () if s not in (1, 2, 3, 4, 5)]
    if bad:
        raise CorruptionError(f"severity {bad[0]!r} is not one of 1, 2, 3, 4, 5")
    grid = {}
    for name in names:
        allowed = protocol_severities(name)
        grid[name] = tuple(s for s in sorted(set(severities)) if s in allowed) if severities else allowed
        if not grid[name]:
            raise CorruptionError(f"{name} is evaluated at severities {allowed[0]}-{allowed[-1]} only "
                                  f"(SegFormer Table 5), none of {sorted(severities)}")
    return grid


def grid_cells(grid: dict[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    return [(name, severity) for name, severities in grid.items() for severity in severities]


def image_seed(image_id: str, corruption: str, severity: int) -> int:
    """The documented seed of one corrupted image (see the module docstring)."""
    return int.from_bytes(hashlib.sha256(f"{image_id}/{corruption}/{severity}".encode()).digest()[:4], "big")


def corrupt_image(image: np.ndarray, image_id: str, corruption: str, severity: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the corrupted image; numpy's global random state is left as it was."""
    from imagecorruptions import corrupt

    seed = image_seed(image_id, corruption, severity)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kwargs = {"seed": seed} if corruption in SEEDED_BY_ARGUMENT else {}
        return corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(state)


def pixels_sha256(image: np.ndarray) -> str:
    """Checksum of decoded pixels (shape included): ties a cached image to its source image."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def image_id(dataset, index: int) -> str:
    """The id an image is seeded by: its file stem, or the sample's name in memory."""
    entry = dataset.files[index]
    return Path(entry[0]).stem if entry is not None else dataset[index].name


def library_versions() -> dict[str, str]:
    """What the corrupted pixels and their PNG bytes depend on."""
    import cv2
    import scipy
    import skimage

    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"imagecorruptions": dist("imagecorruptions-imaug") or dist("imagecorruptions"),
            "numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
            "opencv": cv2.__version__, "pillow": Image.__version__, "numba": dist("numba"),
            "fpng": dist("fpng"), "python": platform.python_version()}


# --------------------------------------------------------------------------- manifest


def _manifest_name(shard: tuple[int, int]) -> str:
    """The file a generation writes: manifest.json, or one part per shard of a sharded one."""
    index, count = shard
    return "manifest.json" if count == 1 else f"manifest.part-{index}-of-{count}.json"


def _read_manifest_file(path: Path) -> dict | None:
    """One manifest file plus the journal lines of its unfinished run (a torn last line is ignored)."""
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    journal = path.with_suffix(".jsonl")
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when the run was killed
            manifest["images"][entry.pop("path")] = entry
    return manifest


def read_manifest(out: Path) -> dict | None:
    """manifest.json and the parts of sharded generations (``--shard``), merged."""
    manifest = None
    for path in [out / "manifest.json", *sorted(out.glob("manifest.part-*.json"))]:
        part = _read_manifest_file(path)
        if part is None:
            continue
        if manifest is None:
            manifest = part
            continue
        _check_compatible(manifest, part, path)
        manifest["sources"].update(part["sources"])
        manifest["images"].update(part["images"])
    return manifest


def _fold_journal(out: Path, name: str) -> None:
    """Write the manifest file ``name`` with its journal folded in, keys sorted (the bytes
    depend on the images only, not on the order workers or shards finished them). The
    one-process manifest.json takes in every shard's part, which then goes."""
    merged = name == "manifest.json"
    manifest = read_manifest(out) if merged else _read_manifest_file(out / name)
    if manifest is None:
        return
    manifest["sources"] = dict(sorted(manifest["sources"].items()))
    manifest["images"] = dict(sorted(manifest["images"].items()))
    write_json_atomic(out / name, manifest)
    for part in [out / name, *(sorted(out.glob("manifest.part-*.json")) if merged else [])]:
        part.with_suffix(".jsonl").unlink(missing_ok=True)
        if part.name != name:
            part.unlink()


def _check_compatible(old: dict, new: dict, path: Path) -> None:
    for key in ("format", "dataset", "seed_rule", "versions", "png_encoder"):
        if old.get(key) != new.get(key):
            raise CorruptionError(
                f"{path}: this folder was generated with a different {key} "
                f"({old.get(key)} vs now {new.get(key)}); images would not match. Write to a new --out folder.")
    for name, source in new["sources"].items():
        if name in old["sources"] and old["sources"][name] != source:
            raise CorruptionError(f"{path}: source image {source['path']} changed since it was "
                                  "corrupted (sha256 differs). Write to a new --out folder.")


# --------------------------------------------------------------------------- generation


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes as :data:`PNG_ENCODER` says (lossless)."""
    import fpng

    return fpng.fpng_ext.encode_ndarray(np.ascontiguousarray(image))


def _write_png_atomic(path: Path, image: np.ndarray) -> str:
    """Encode, write atomically; the sha256 of the bytes written (no second read of the file)."""
    data = encode_png(image)
    with atomic_write(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _link(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


_worker_dataset = None
_worker_image: tuple[int, np.ndarray, str] | None = None  # index, pixels, their sha256


def _init_worker(kind: str, split: str, root: str, options: dict) -> None:
    global _worker_dataset, _worker_image
    from segbench.data.datasets import build_dataset

    _worker_dataset, _worker_image = build_dataset(kind, split, root, **options), None


def _init_forked_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool


def _init_spawned_worker(*dataset_args) -> None:
    from segbench.data.datasets import opencv_single_threaded

    _init_forked_worker()
    opencv_single_threaded()  # the worker processes are the parallelism
    _init_worker(*dataset_args)


def _corrupt_to_file(task: tuple[int, str, str, int, str]) -> tuple[str, str, str]:
    """Worker: corrupt one image, write it atomically; returns (path, its sha256, the source's pixels_sha256)."""
    global _worker_image
    index, name, corruption, severity, path = task
    if _worker_image is None or _worker_image[0] != index:  # tasks come grouped by image
        image = _worker_dataset[index].image
        _worker_image = (index, image, pixels_sha256(image))
    sha = _write_png_atomic(Path(path), corrupt_image(_worker_image[1], name, corruption, severity))
    return path, sha, _worker_image[2]


def _source_root(kind: str, split: str, root: str | None, out: Path, options: dict,
                 max_images: int | None) -> tuple[str, dict]:
    """A dataset root on disk: the given one, or the in-memory synthetic set written to <out>/clean."""
    if root is not None:
        return str(root), options
    if kind != "synthetic":
        raise CorruptionError(f"{kind}: --root is needed (the dataset folder in its official layout)")
    from segbench.data.datasets import Synthetic, materialize_synthetic

    count = options.get("num_images") or Synthetic.default_sizes[split]
    count = count if max_images is None else min(count, max_images)
    extra = {k: options[k] for k in ("image_size", "seed") if k in options}
    return str(materialize_synthetic(out / "clean", {split: count}, **extra)), {}


def _sources(dataset, count: int, root: Path, shard: tuple[int, int]) -> dict[str, dict]:
    """image id -> {index, path relative to the root, sha256} for this shard's share (by
    image id, as ``sharding.deal`` deals jobs) of the first ``count`` images."""
    names = {}
    for index in range(count):
        name = image_id(dataset, index)
        if name in names:
            raise CorruptionError(f"two images share the id {name!r} (their file stem): "
                                  f"{dataset.files[names[name]][0]} and {dataset.files[index][0]}; "
                                  "ids must be unique to seed them")
        names[name] = index
    sources = {}
    for name in sorted(deal(names, *shard)):
        path = Path(os.path.abspath(dataset.files[names[name]][0]))
        if not path.is_relative_to(root):
            raise CorruptionError(f"{path}: not under the dataset root {root}")
        sources[name] = {"index": names[name], "path": path.relative_to(root).as_posix(), "sha256": file_sha256(path)}
    return sources


def generate(kind: str, split: str, root: str | None, out: str | os.PathLike, grid: dict[str, tuple[int, ...]],
             workers: int = 1, max_images: int | None = None, options: dict | None = None,
             progress=None, shard: tuple[int, int] = (0, 1)) -> dict:
    """Write the corrupted copies of a split (``grid``: corruption -> severities) under ``out``.

    Resumes: outputs already in the manifest (and on disk) are skipped. ``progress(done,
    total)`` is called after each image. ``shard`` (i, N): only every N-th image (by id),
    its entries in manifest.part-i-of-N.json; a run without ``shard`` afterwards finds
    everything done and folds the parts into a manifest.json byte-identical to one
    process's. Returns a summary (counts, seconds, paths).
    """
    from segbench.data.datasets import build_dataset

    start = time.perf_counter()
    out = Path(out)
    if shard[1] > 1 and root is None:
        raise CorruptionError(f"--shard {shard[0]}/{shard[1]}: give --root (shards must read one dataset folder; "
                              "write the synthetic set first with `segbench datasets --materialize`)")
    root, options = _source_root(kind, split, root, out, dict(options or {}), max_images)
    out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(kind, split, root, **options)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    root_path = Path(os.path.abspath(root))
    sources = _sources(dataset, count, root_path, shard)

    manifest_file = out / _manifest_name(shard)
    manifest = {"format": MANIFEST_FORMAT, "dataset": {"kind": kind, "split": split, "options": options},
                "source_root": str(root_path), "seed_rule": SEED_RULE, "versions": library_versions(),
                "png_encoder": PNG_ENCODER,
                "sources": {name: {k: v for k, v in s.items() if k != "index"} for name, s in sources.items()},
                "images": {}}
    old = read_manifest(out)
    if old is not None:
        _check_compatible(old, manifest, manifest_file)
        mine = old["sources"] if shard[1] == 1 else sources  # a shard keeps its own images only
        manifest["sources"] = dict(sorted({**{k: v for k, v in old["sources"].items() if k in mine},
                                           **manifest["sources"]}.items()))
        manifest["images"] = {k: v for k, v in old["images"].items() if v["image_id"] in mine}
    write_json_atomic(manifest_file, manifest)
    journal_path = manifest_file.with_suffix(".jsonl")
    journal_path.unlink(missing_ok=True)  # its lines are in the manifest file now

    todo = {}  # output path -> (image id, corruption, severity)
    for image, source in sources.items():
        rel = Path(source["path"]).with_suffix(".png")
        for corruption, severity in grid_cells(grid):
            cell = out / corruption / str(severity)
            for extra in dataset.files[source["index"]][1:]:  # labels and instance maps, unchanged
                if extra is not None:
                    _link(Path(extra), cell / Path(os.path.abspath(extra)).relative_to(root_path))
            key = f"{corruption}/{severity}/{rel.as_posix()}"
            if key not in manifest["images"] or not (out / key).is_file():
                (cell / rel).parent.mkdir(parents=True, exist_ok=True)
                todo[str(out / key)] = (image, corruption, severity)
    total = len(sources) * len(grid_cells(grid))
    done = total - len(todo)
    if progress is not None:
        progress(done, total)
    tasks = [(sources[image]["index"], image, c, s, path) for path, (image, c, s) in todo.items()]
    try:
        with open(journal_path, "a") as journal:
            for path, sha, source_sha in _run_tasks(tasks, workers, (kind, split, root, options)):
                image, corruption, severity = todo[path]
                entry = {"path": Path(path).relative_to(out).as_posix(), "image_id": image, "corruption": corruption,
                         "severity": severity, "seed": image_seed(image, corruption, severity), "sha256": sha,
                         "source_pixels_sha256": source_sha}
                journal.write(json.dumps(entry) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        _fold_journal(out, manifest_file.name)
    return {"out": str(out), "dataset": kind, "split": split, "images": len(sources), "outputs": total,
            "written": len(tasks), "skipped": total - len(tasks), "workers": workers, "shard": list(shard),
            "manifest": str(manifest_file), "seconds": time.perf_counter() - start}


def _run_tasks(tasks: list, workers: int, dataset_args: tuple):
    """Yield :func:`_corrupt_to_file`'s result per task, in this process or in ``workers`` others.

    On Linux the workers are forked from this process once it has the dataset, the libraries
    and the grid's numba functions (glass_blur compiles for ~4 s) loaded: spawned workers each
    paid all of that again before their first image. Elsewhere (fork is unsafe on macOS, absent
    on Windows) they are spawned. Tasks are single outputs, handed out one at a time in
    whatever order workers free up, so both cores stay busy to the last few outputs."""
    global _worker_dataset, _worker_image
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(*dataset_args)
        try:
            yield from map(_corrupt_to_file, tasks)
        finally:
            _worker_dataset = _worker_image = None
        return
    processes = min(workers, len(tasks))
    if not sys.platform.startswith("linux"):
        with multiprocessing.get_context("spawn").Pool(processes, _init_spawned_worker, dataset_args) as pool:
            yield from pool.imap_unordered(_corrupt_to_file, tasks)
        return
    from segbench.data.datasets import opencv_single_threaded

    opencv_single_threaded()  # before forking: OpenCV's thread pool does not survive a fork
    _init_worker(*dataset_args)
    tiny = np.zeros((64, 64, 3), np.uint8)
    for corruption, severity in sorted({(c, s) for _, _, c, s, _ in tasks}):
        corrupt_image(tiny, "warm-up", corruption, severity)  # loads files, compiles numba once, for all workers
    try:
        with multiprocessing.get_context("fork").Pool(processes, _init_forked_worker) as pool:
            yield from pool.imap_unordered(_corrupt_to_file, tasks)
    finally:
        _worker_dataset = _worker_image = None
