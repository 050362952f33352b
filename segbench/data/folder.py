"""``kind: folder``: a user's own dataset, as images and label PNGs in two folder trees.

Layout (folder names and file suffixes are options of the suite's dataset entry)::

    <root>/images/<split>/<any sub-folders>/<stem>.jpg|.jpeg|.png
    <root>/labels/<split>/<same sub-folders>/<stem>.png
    <root>/instances/<split>/.../<stem>.png     (optional: instance ids, 0 = none; for the size breakdown)
    <root>/classes.yaml                         (or `classes: path`, relative to the root)

The classes file::

    names: [background, road, car]   # class index = position
    palette: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional; needed for RGB colour labels
    ignore: 255                      # the raw label value that is not scored (default 255)
    ignore_color: [255, 255, 255]    # the same for RGB colour labels (optional)
    reduce_zero_label: false         # true: raw 0 is ignored, raw k is class k - 1
    label_map: {7: 0, 8: 1, 26: 2}   # optional: raw value -> class index (others are errors)

Label PNGs hold raw values (mode L, I or I;16), palette indices (mode P: the index is the
raw value) or colours (RGB, decoded through ``palette``). Every label is read when the
split is opened, so every problem of a split (an image without label or the reverse, a
value or colour the classes file does not declare, an unreadable or mis-sized file) is
listed together, each naming its file, before any job runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segbench.data.datasets import DATASETS, IGNORE_INDEX, DatasetError, SegDataset, lut_from_pairs, read_id_map

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = __doc__.split("::", 1)[1].split("\n\n")[1]
CLASSES_KEYS = ("names", "palette", "ignore", "ignore_color", "reduce_zero_label", "label_map")
SHOWN_PROBLEMS = 20  # a split's problems listed in one error; the rest counted

# Splits already checked in this process, by everything that decides their files: each job
# of a suite opens its dataset again, and reading every label once is enough.
_CHECKED: dict[str, list[tuple[Path, Path, Path | None]]] = {}


def read_classes(path: Path) -> dict:
    """A classes file, validated: names, palette (K x 3 or None), the raw -> index map."""
    if not path.is_file():
        raise DatasetError(f"{path}: classes file not found (a YAML file with `names: [...]`; set the "
                           "dataset's `classes:` option, relative to its root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with `names: [...]`")
    unknown = sorted(set(data) - set(CLASSES_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(CLASSES_KEYS)}")
    names = data.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: names: expected a list of class names, got {names!r}")
    k = len(names)
    palette = data.get("palette")
    if palette is not None:
        if (not isinstance(palette, list) or len(palette) != k
                or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in c)
                           for c in palette)):
            raise DatasetError(f"{path}: palette: expected {k} colours [R, G, B] (0-255), one per name")
        palette = np.array(palette, np.uint8)
        if len({tuple(c) for c in palette.tolist()}) != k:
            raise DatasetError(f"{path}: palette: two classes share a colour")
    ignore = data.get("ignore", IGNORE_INDEX)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or ignore < 0:
        raise DatasetError(f"{path}: ignore: expected a label value (integer >= 0), got {ignore!r}")
    label_map = data.get("label_map")
    if label_map is not None:
        if data.get("reduce_zero_label"):
            raise DatasetError(f"{path}: give label_map or reduce_zero_label, not both")
        if not isinstance(label_map, dict) or not all(
                isinstance(r, int) and r >= 0 and isinstance(i, int) and 0 <= i < k for r, i in label_map.items()):
            raise DatasetError(f"{path}: label_map: expected raw value -> class index (0..{k - 1})")
        raw_to_index = dict(label_map)
    elif data.get("reduce_zero_label"):
        raw_to_index = {r: r - 1 for r in range(1, k + 1)} | {0: IGNORE_INDEX}
    else:
        raw_to_index = {i: i for i in range(k)}
    if ignore in raw_to_index and raw_to_index[ignore] != IGNORE_INDEX:
        raise DatasetError(f"{path}: ignore value {ignore} is also class {names[raw_to_index[ignore]]!r}")
    raw_to_index[ignore] = IGNORE_INDEX
    colour_to_index = {}
    if palette is not None:
        colour_to_index = {_pack(c): i for i, c in enumerate(palette.tolist())}
        if data.get("ignore_color") is not None:
            colour_to_index[_pack(data["ignore_color"])] = IGNORE_INDEX
    return {"names": tuple(names), "palette": palette, "raw_to_index": raw_to_index,
            "colour_to_index": colour_to_index}


def _pack(colour) -> int:
    r, g, b = (int(v) for v in colour)
    return (r << 16) | (g << 8) | b


def _lookup(keys: np.ndarray, table: dict[int, int], path: Path, what: str) -> np.ndarray:
    """Map every value of ``keys`` through ``table``; undeclared values are an error naming the file."""
    declared = np.array(sorted(table), np.int64)
    indices = np.array([table[k] for k in sorted(table)], np.uint8)
    keys = keys.astype(np.int64)
    pos = np.clip(np.searchsorted(declared, keys), 0, len(declared) - 1)
    known = declared[pos] == keys
    if not known.all():
        bad = np.unique(keys[~known])[:5]
        shown = [f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in bad] if what == "colours" else bad.tolist()
        raise DatasetError(f"{path}: label {what} {', '.join(map(str, shown))} not declared in the classes file")
    return indices[pos]


def _unreadable_is_error(read, path: Path):
    try:
        return read(path)
    except DatasetError:
        raise
    except Exception as exc:  # PIL's errors for unreadable or truncated files come in many types
        raise DatasetError(f"{path}: unreadable: {type(exc).__name__}: {exc}") from None


def _image_size(path: Path) -> tuple[int, int]:
    def size(p):
        with Image.open(p) as im:
            im.verify()  # reads the whole file: truncated or corrupt images show here, not mid-run
            return im.size
    return _unreadable_is_error(size, path)


class FolderDataset(SegDataset):
    """A user's dataset in the folder layout above (see the module docstring)."""

    kind = "folder"
    layout = LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val", classes: str = "classes.yaml",
                 images: str = "images", labels: str = "labels", instances: str | None = None,
                 image_suffix: str | list[str] | tuple[str, ...] = IMAGE_SUFFIXES, label_suffix: str = ".png",
                 test_scale: list[int] | None = None, size_buckets: list[int] | None = None,
                 name: str | None = None):
        if root is None:
            raise DatasetError(f"folder: no root given. Set the dataset's `root` in the suite. Layout:\n{self.layout}")
        root = Path(root)
        spec = read_classes(root / classes)
        self.classes, self.official_palette = spec["names"], spec["palette"]
        self.raw_to_index, self.colour_to_index = spec["raw_to_index"], spec["colour_to_index"]
        # raw values -> indices as a table, for prediction PNGs written in the raw values (`--ids label`)
        self.label_lut = lut_from_pairs((raw, index) for raw, index in self.raw_to_index.items() if raw < 256)
        self.label_ids = f"the raw label values of {root / classes}"
        if test_scale is not None:
            if len(test_scale) != 2:
                raise DatasetError(f"{root}: test_scale: expected [long side, short side], got {test_scale}")
            self.test_scale = tuple(test_scale)
        if size_buckets is not None:
            if len(size_buckets) != 2 or not 0 < size_buckets[0] < size_buckets[1]:
                raise DatasetError(f"{root}: size_buckets: expected [small, large] areas in pixels, small < large")
            self.size_buckets = tuple(size_buckets)
        suffixes = (image_suffix,) if isinstance(image_suffix, str) else tuple(image_suffix)
        key = json.dumps([str(root.resolve()), split, classes, images, labels, instances, suffixes, label_suffix])
        if key not in _CHECKED:
            _CHECKED[key] = self._scan(root, split, images, labels, instances, suffixes, label_suffix)
        super().__init__(_CHECKED[key], name=f"{name or root.resolve().name}/{split}")

    @classmethod
    def class_names_for(cls, root, classes: str = "classes.yaml", **options) -> tuple[str, ...]:
        if root is None:
            raise DatasetError("folder: no root given: its class names come from its classes file. Set the dataset's "
                               "`root` in the suite (a command's --root DIR; `segbench profile` also takes --num-classes N)")
        return read_classes(Path(root) / classes)["names"]

    def _scan(self, root: Path, split: str, images: str, labels: str, instances: str | None,
              suffixes: tuple[str, ...], label_suffix: str) -> list[tuple[Path, Path, Path | None]]:
        image_dir, label_dir = root / images / split, root / labels / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DatasetError(f"folder: expected the folder {folder} but it does not exist. "
                                   f"Layout:\n{self.layout}")
        stems = {}
        for path in sorted(image_dir.rglob("*")):
            suffix = next((s for s in suffixes if path.name.lower().endswith(s.lower())), None)
            if suffix and path.is_file():
                stems[str(path.relative_to(image_dir))[: -len(suffix)]] = path
        label_stems = {str(p.relative_to(label_dir))[: -len(label_suffix)]: p
                       for p in sorted(label_dir.rglob(f"*{label_suffix}")) if p.is_file()}
        problems = [f"{path}: no label at {label_dir / (stem + label_suffix)}"
                    for stem, path in stems.items() if stem not in label_stems]
        problems += [f"{path}: a label without an image (no {image_dir / stem}{{{','.join(suffixes)}}})"
                     for stem, path in label_stems.items() if stem not in stems]
        files = []
        for stem, image_path in stems.items():
            if stem not in label_stems:
                continue
            label_path = label_stems[stem]
            instance_path = root / instances / split / f"{stem}.png" if instances else None
            try:
                width, height = _image_size(image_path)
                label = _unreadable_is_error(self.read_label, label_path)
                if label.shape != (height, width):
                    raise DatasetError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                                       f"{image_path.name} is {width}x{height}")
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            files.append((image_path, label_path, instance_path if instance_path and instance_path.is_file() else None))
        if problems:
            shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
            more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
            raise DatasetError(f"{root} ({split}): {len(problems)} problem(s) in the dataset:\n  {shown}{more}")
        if not files:
            raise DatasetError(f"{image_dir}: no images found (suffixes {', '.join(suffixes)}). Layout:\n{self.layout}")
        return files

    def read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                if not self.colour_to_index:
                    raise DatasetError(f"{path}: an RGB colour label, but the classes file has no palette to "
                                       "decode it with")
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
                packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                return _lookup(packed, self.colour_to_index, path, "colours")
        raw = read_id_map(path)
        return _lookup(raw, self.raw_to_index, path, "values")

    def read_instances(self, path: Path) -> np.ndarray:
        return read_id_map(path).astype(np.int32)


DATASETS["folder"] = FolderDataset
