"""Dataset readers. Each returns :class:`Sample` objects in one convention: an RGB uint8
image, a uint8 label map with classes 0..K-1 and 255 for ignored pixels, and (when the
dataset has them) an int32 instance map where 0 means "no instance".

Readers check the official on-disk layout up front and fail with a message that says
where the files must be, so a wrong ``root`` is found before any model runs. Label PNGs
hold each dataset's official ids; a reader maps them to training ids through one lookup
table (``label_lut``), and any value the table does not know is an error naming the file
and the values, never a silently wrong number. The same table maps predictions written
in the official ids (``segbench eval --predictions ... --ids label``).
"""
from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbench.data import classes as class_names
from segbench.data import synthetic
from segbench.errors import SegbenchError

IGNORE_INDEX = 255
INVALID = -1  # a label_lut entry for values that must not occur in a label PNG


class DatasetError(SegbenchError, ValueError):
    """A dataset on disk is missing or malformed; the message says what to do."""


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8: 0..K-1, 255 = ignore
    instances: np.ndarray | None  # (H, W) int32, 0 = no instance; None if the dataset has none
    name: str


def default_palette(num_classes: int) -> np.ndarray:
    """The Pascal VOC bit-interleaved colour map: distinct, deterministic colours."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        c, value = k + 1, np.zeros(3, np.int64)
        for shift in range(7, -1, -1):
            for channel in range(3):
                value[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        palette[k] = value
    return palette


def lut_from_pairs(pairs) -> np.ndarray:
    """A (256,) table from on-disk label value to training id; unlisted values are INVALID."""
    lut = np.full(256, INVALID, np.int16)
    for disk, train in pairs:
        lut[disk] = train
    return lut


def identity_lut(num_classes: int) -> np.ndarray:
    """Labels already in training ids: 0..K-1 and 255 = ignore."""
    return lut_from_pairs([(k, k) for k in range(num_classes)] + [(IGNORE_INDEX, IGNORE_INDEX)])


def zero_ignored_lut(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> ignore, 1..K -> 0..K-1 (255 stays ignore)."""
    return lut_from_pairs([(0, IGNORE_INDEX)] + [(k + 1, k) for k in range(num_classes)]
                     + [(IGNORE_INDEX, IGNORE_INDEX)])


def _open_image(path: Path) -> Image.Image:
    """PIL's decoded image; an unreadable, truncated or non-image file is an error naming it."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later without its name
            return im
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # SyntaxError: PIL's damaged-PNG chunks
        raise DatasetError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); "
                           "is the file complete and really an image?") from None


def opencv_single_threaded() -> None:
    """Call before forking worker processes (data loaders, evaluation readers, corruption workers). OpenCV's thread pool does not survive a fork: a
    worker that touches it (even through ``cv2.setNumThreads``) can wait forever on threads
    that exist only in the parent. With one OpenCV thread in the parent there is no pool to
    inherit; the worker processes are the parallelism."""
    import cv2

    cv2.setNumThreads(1)


def read_image(path: Path) -> np.ndarray:
    """Any PIL-readable image as (H, W, 3) uint8 RGB (grayscale and RGBA are converted)."""
    return np.asarray(_open_image(path).convert("RGB"))


def read_id_map(path: Path) -> np.ndarray:
    """A single-channel PNG (label or prediction) as an integer array."""
    im = _open_image(path)
    if im.mode not in ("L", "P", "I", "I;16"):
        raise DatasetError(f"{path}: expected a single-channel id image (mode L, P or I), got mode {im.mode}")
    return np.asarray(im)


def map_ids(raw: np.ndarray, lut: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Map an id image through ``lut``; values the table does not know are an error."""
    if raw.size and (int(raw.max()) > 255 or int(raw.min()) < 0):
        bad = np.unique(raw[(raw > 255) | (raw < 0)])[:5].tolist()
        raise DatasetError(f"{path}: values {bad} are not {what}")
    mapped = lut[raw.astype(np.intp)]
    if (mapped == INVALID).any():
        bad = np.unique(raw[mapped == INVALID])[:5].tolist()
        raise DatasetError(f"{path}: values {bad} are not {what}; is this the right dataset or folder?")
    return mapped.astype(np.uint8)


class SegDataset:
    """Base of the readers: a list of (image, label, instances) files and class metadata."""

    kind = ""  # the suite's dataset kind; also selects the paper's test protocol
    protocol_kind: str | None = None  # the dataset whose paper protocol applies, where not ``kind``
    classes: tuple[str, ...] = ()
    official_palette: np.ndarray | None = None  # the dataset's own colours, where it has them
    layout = "built in (no files)"
    label_lut: np.ndarray  # official on-disk label ids -> training ids (INVALID: cannot occur)
    label_ids = "training ids 0..K-1, 255 = ignore"  # what the label PNGs hold, for messages
    # mmseg-style test resize (long side, short side), keep ratio; None keeps the image size.
    test_scale: tuple[int, int] | None = None
    # Object-size buckets (instance area in pixels): small < a, medium < b, large >= b.
    size_buckets: tuple[int, int] = (32 ** 2, 96 ** 2)

    def __init__(self, files: list[tuple[Path, Path, Path | None]], name: str):
        self.files = files
        self.name = name
        self.palette = default_palette(self.num_classes) if self.official_palette is None else self.official_palette

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def title(self) -> str:
        """The dataset without its split, as records name it: the kind for the official
        datasets ("ade20k"), a folder dataset's own name, "acdc/fog" for one ACDC condition."""
        return self.name.rpartition("/")[0] or self.name

    @classmethod
    def class_names_for(cls, root: str | os.PathLike | None, **options) -> tuple[str, ...]:
        """The classes of the dataset at ``root``, without reading its images (a folder
        dataset reads them from its classes file)."""
        return cls.classes

    def __len__(self) -> int:
        return len(self.files)

    def sample_name(self, image_path: Path) -> str:
        """The name predictions are matched by (``segbench eval --predictions``)."""
        return image_path.stem

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path, instance_path = self.files[index]
        image = read_image(image_path)
        label = self.read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                               f"{image_path.name} is {image.shape[1]}x{image.shape[0]}")
        instances = self.read_instances(instance_path) if instance_path else None
        if instances is not None and instances.shape != label.shape:
            raise DatasetError(f"{instance_path}: instance map is {instances.shape[1]}x{instances.shape[0]} "
                               f"but its label is {label.shape[1]}x{label.shape[0]}")
        return Sample(image, label, instances, self.sample_name(image_path))

    def read_label(self, path: Path) -> np.ndarray:
        return map_ids(read_id_map(path), self.lut_for(path), path, f"{self.label_ids} ({type(self).__name__})")

    def lut_for(self, label_path: Path) -> np.ndarray:
        return self.label_lut

    def read_instances(self, path: Path) -> np.ndarray:
        raise NotImplementedError


def _require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{dataset}: expected the folder {path} but it does not exist. "
                           f"Expected layout under the dataset root:\n{layout}")


def _check_split(dataset: type, split: str) -> None:
    if split not in dataset.splits:
        raise DatasetError(f"{dataset.__name__}: unknown split {split!r}; choose from {sorted(dataset.splits)}")


def _images_and_annotations(dataset: type, root: Path, split: str) -> tuple[Path, Path]:
    """<root>/images/<folder> and <root>/annotations/<folder> of a split (ADE20K, COCO-Stuff)."""
    _check_split(dataset, split)
    images, annotations = root / "images" / dataset.splits[split], root / "annotations" / dataset.splits[split]
    _require_dir(images, dataset.__name__, dataset.layout)
    _require_dir(annotations, dataset.__name__, dataset.layout)
    return images, annotations


def _require_files(files: list, folder: Path, layout: str) -> None:
    if not files:
        raise DatasetError(f"{folder}: no images found. Expected layout:\n{layout}")


ADE_LAYOUT = """\
  <root>/images/training/ADE_train_00000001.jpg ...
  <root>/images/validation/ADE_val_00000001.jpg ...
  <root>/annotations/training/ADE_train_00000001.png ...     (0 = other, 1..150 = classes)
  <root>/annotations/validation/ADE_val_00000001.png ...
  <root>/annotations_instance/validation/*.png   (optional, for the size breakdown: the instance
                                                  challenge's masks, R = category, G = instance id)
(the ADEChallengeData2016 folder from the SceneParsing benchmark)"""


class ADE20K(SegDataset):
    """ADEChallengeData2016: 150 classes; label 0 ("other") is ignored."""

    kind = "ade20k"
    classes = class_names.ADE20K
    test_scale = (2048, 512)
    label_lut = zero_ignored_lut(len(class_names.ADE20K))
    label_ids = "ADE20K ids (0 = other, 1..150 = classes)"
    splits = {"train": "training", "val": "validation"}
    layout = ADE_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        root = Path(root)
        images, annotations = _images_and_annotations(type(self), root, split)
        files = []
        for image_path in sorted(images.iterdir()):
            if image_path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            label_path = annotations / (image_path.stem + ".png")
            if not label_path.exists():
                raise DatasetError(f"{image_path}: no annotation at {label_path}")
            instance_path = root / "annotations_instance" / self.splits[split] / (image_path.stem + ".png")
            files.append((image_path, label_path, instance_path if instance_path.exists() else None))
        _require_files(files, images, self.layout)
        super().__init__(files, name=f"{self.kind}/{split}")

    def read_instances(self, path: Path) -> np.ndarray:
        # The SceneParsing instance masks (CSAILVision/placeschallenge, instancesegmentation):
        # R = category, G = instance id, unique within the image whatever the category; 0 = none.
        return read_image(path)[..., 1].astype(np.int32)


def _cityscapes_table() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Class names, colours and labelId -> trainId table from cityscapesscripts' labels.py."""
    from cityscapesscripts.helpers.labels import labels

    train_ids = sorted({label.trainId for label in labels if 0 <= label.trainId < IGNORE_INDEX})
    first = {t: next(label for label in labels if label.trainId == t) for t in train_ids}  # as the official inverse map
    names = tuple(first[t].name for t in train_ids)
    colours = np.array([first[t].color for t in train_ids], np.uint8)
    lut = lut_from_pairs((label.id, label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX)
                         for label in labels if 0 <= label.id < 256)
    return names, colours, lut


CITYSCAPES_CLASSES, CITYSCAPES_COLOURS, CITYSCAPES_LUT = _cityscapes_table()

CITYSCAPES_LAYOUT = """\
  <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
        (label ids 0..33, mapped to the 19 train ids by cityscapesscripts' label table)
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
        (optional, for the size breakdown: labelId * 1000 + instance for objects)
(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com)"""


class Cityscapes(SegDataset):
    """Cityscapes fine annotations: 19 evaluated classes, tested at the full 2048x1024."""

    kind = "cityscapes"
    classes = CITYSCAPES_CLASSES
    official_palette = CITYSCAPES_COLOURS
    label_lut = CITYSCAPES_LUT
    label_ids = "Cityscapes label ids (0..33)"
    test_scale = (2048, 1024)
    splits = ("train", "val", "test")
    layout = CITYSCAPES_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        root = Path(root)
        _check_split(type(self), split)
        images, labels = root / "leftImg8bit" / split, root / "gtFine" / split
        _require_dir(images, type(self).__name__, self.layout)
        _require_dir(labels, type(self).__name__, self.layout)
        files = []
        for image_path in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = self.sample_name(image_path)
            label_path = labels / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label_path.exists():
                raise DatasetError(f"{image_path}: no annotation at {label_path}")
            instance_path = label_path.with_name(f"{stem}_gtFine_instanceIds.png")
            files.append((image_path, label_path, instance_path if instance_path.exists() else None))
        _require_files(files, images, self.layout)
        super().__init__(files, name=f"{self.kind}/{split}")

    def sample_name(self, image_path: Path) -> str:
        return image_path.stem.removesuffix("_leftImg8bit")  # <city>_<seq>_<frame>, as the official evaluator

    def read_instances(self, path: Path) -> np.ndarray:
        # Values >= 1000 are object instances (labelId * 1000 + index); smaller values are a
        # class without instances (stuff, or a crowd region): no instance there.
        ids = read_id_map(path).astype(np.int32)
        return np.where(ids >= 1000, ids, 0)


PASCAL_CONTEXT_LAYOUT = """\
  <root>/JPEGImages/2008_000002.jpg ...
  <root>/SegmentationClassContext/2008_000002.png ...   (0 = background, 1..59 = classes)
  <root>/ImageSets/SegmentationContext/{train,val}.txt  (one image id per line)
(<root> is VOCdevkit/VOC2010, or a folder holding it; the label PNGs are written by
 mmsegmentation's tools/dataset_converters/pascal_context.py from trainval_merged.json)"""


class PascalContext(SegDataset):
    """Pascal Context, 59 classes + background counted as a class (60), as SETR and Segmenter report."""

    kind = "pascal_context"
    classes = class_names.PASCAL_CONTEXT
    label_lut = identity_lut(len(class_names.PASCAL_CONTEXT))
    label_ids = "Pascal Context ids (0 = background, 1..59 = classes)"
    test_scale = (520, 520)
    splits = ("train", "val")
    layout = PASCAL_CONTEXT_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        root = Path(root)
        if (root / "VOCdevkit" / "VOC2010").is_dir():
            root = root / "VOCdevkit" / "VOC2010"
        _check_split(type(self), split)
        for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
            _require_dir(root / sub, type(self).__name__, self.layout)
        split_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"{type(self).__name__}: no split list at {split_file}. Expected layout:\n{self.layout}")
        files = []
        for image_id in split_file.read_text().split():
            image_path = root / "JPEGImages" / f"{image_id}.jpg"
            label_path = root / "SegmentationClassContext" / f"{image_id}.png"
            for path in (image_path, label_path):
                if not path.exists():
                    raise DatasetError(f"{split_file}: lists {image_id}, but {path} does not exist")
            files.append((image_path, label_path, None))
        _require_files(files, root / "JPEGImages", self.layout)
        super().__init__(files, name=f"{self.kind}/{split}")


class PascalContext59(PascalContext):
    """Pascal Context without background: 59 classes, background ignored (mmseg's
    PascalContextDataset59, ``reduce_zero_label=True``)."""

    kind = "pascal_context_59"
    classes = class_names.PASCAL_CONTEXT_59
    label_lut = zero_ignored_lut(len(class_names.PASCAL_CONTEXT_59))


COCO_STUFF_LAYOUT = """\
  <root>/images/{train2017,val2017}/000000000139.jpg ...
  <root>/annotations/{train2017,val2017}/000000000139_labelTrainIds.png
        (train ids 0..170, 255 = ignore: mmsegmentation's coco_stuff164k converter), or
  <root>/annotations/{train2017,val2017}/000000000139.png
        (the official stuffthingmaps_trainval2017: 0-based COCO ids 0..181, 255 = unlabeled)"""


class COCOStuff(SegDataset):
    """COCO-Stuff 164k: 171 classes (80 things + 91 stuff), as SegFormer reports it."""

    kind = "coco_stuff"
    classes = class_names.COCO_STUFF
    label_lut = lut_from_pairs([(coco, train) for train, coco in enumerate(class_names.COCO_STUFF_IDS)]
                               + [(IGNORE_INDEX, IGNORE_INDEX)])
    label_ids = "COCO-Stuff ids (0-based COCO ids, 255 = unlabeled)"
    test_scale = (2048, 512)
    splits = {"train": "train2017", "val": "val2017"}
    layout = COCO_STUFF_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        images, labels = _images_and_annotations(type(self), Path(root), split)
        files = []
        for image_path in sorted(images.glob("*.jpg")):
            candidates = [labels / f"{image_path.stem}_labelTrainIds.png", labels / f"{image_path.stem}.png"]
            label_path = next((p for p in candidates if p.exists()), None)
            if label_path is None:
                raise DatasetError(f"{image_path}: no annotation at {candidates[0]} or {candidates[1]}")
            files.append((image_path, label_path, None))
        _require_files(files, images, self.layout)
        super().__init__(files, name=f"{self.kind}/{split}")

    def lut_for(self, label_path: Path) -> np.ndarray:
        if label_path.name.endswith("_labelTrainIds.png"):
            return identity_lut(self.num_classes)
        return self.label_lut


ACDC_LAYOUT = """\
  <root>/rgb_anon/{fog,night,rain,snow}/{train,val}/<sequence>/<name>_rgb_anon.png
  <root>/gt/{fog,night,rain,snow}/{train,val}/<sequence>/<name>_gt_labelTrainIds.png
        (Cityscapes train ids 0..18, 255 = ignore)
  <root>/gt/<condition>/<split>/<sequence>/<name>_gt_invIds.png
        (invalid-region masks, 1 = uncertain content: ignored unless invalid_regions: score)
(rgb_anon_trainvaltest.zip and gt_trainval.zip from acdc.vision.ee.ethz.ch; test labels are not public)"""

DARK_ZURICH_LAYOUT = """\
  <root>/rgb_anon/val/night/<sequence>/<name>_rgb_anon.png
  <root>/gt/val/night/<sequence>/<name>_gt_labelTrainIds.png   (Cityscapes train ids 0..18, 255 = ignore)
  <root>/gt/val/night/<sequence>/<name>_gt_invGray.png          (invalid-region masks, nonzero = invalid:
        ignored unless invalid_regions: score)
(Dark_Zurich_val_anon.zip from the Dark Zurich page, trace.ethz.ch; test labels are not public)"""

INVALID_REGIONS = ("ignore", "score")


class _CityscapesLabelled(SegDataset):
    """Driving scenes labelled in Cityscapes train ids, with invalid-region masks (the ETH
    adverse-condition sets): scored with the Cityscapes models at their Cityscapes protocol.

    Invalid regions (content the annotators could not label with confidence in the
    adverse image) are ignored by default, as the BRAVO challenge's ACDC evaluation does
    for its semantic metrics (valeoai/bravo_challenge, ``compute_semantic_metrics_invalid_area``
    off); ``invalid_regions: score`` keeps their labels, as evaluations that read only the
    ``_gt_labelTrainIds.png`` files do."""

    classes = CITYSCAPES_CLASSES
    official_palette = CITYSCAPES_COLOURS
    label_lut = identity_lut(len(CITYSCAPES_CLASSES))
    label_ids = "Cityscapes train ids (0..18, 255 = ignore)"
    protocol_kind = "cityscapes"
    test_scale = (1920, 1080)  # the native 1920x1080 frames
    invalid_suffixes: tuple[str, ...] = ()

    def _collect(self, images: Path, labels: Path, invalid_regions: str) -> list:
        if invalid_regions not in INVALID_REGIONS:
            raise DatasetError(f"{type(self).__name__}: invalid_regions must be one of {INVALID_REGIONS}, "
                               f"got {invalid_regions!r}")
        self.invalid_regions = invalid_regions
        _require_dir(images, type(self).__name__, self.layout)
        _require_dir(labels, type(self).__name__, self.layout)
        files = []
        for image_path in sorted(images.glob("*/*_rgb_anon.png")):
            stem = self.sample_name(image_path)
            label_path = labels / image_path.parent.name / f"{stem}_gt_labelTrainIds.png"
            if not label_path.exists():
                raise DatasetError(f"{image_path}: no annotation at {label_path}")
            if invalid_regions == "ignore" and not self._invalid_mask(label_path).exists():
                raise DatasetError(f"{label_path}: no invalid-region mask beside it "
                                   f"({' or '.join(self.invalid_suffixes)}); add the masks from the official "
                                   f"archive, or set the dataset option invalid_regions: score")
            files.append((image_path, label_path, None))
        _require_files(files, images, self.layout)
        return files

    def sample_name(self, image_path: Path) -> str:
        return image_path.name.removesuffix("_rgb_anon.png")

    def _invalid_mask(self, label_path: Path) -> Path:
        stem = label_path.name.removesuffix("_gt_labelTrainIds.png")
        candidates = [label_path.with_name(stem + suffix) for suffix in self.invalid_suffixes]
        return next((p for p in candidates if p.exists()), candidates[0])

    def read_label(self, path: Path) -> np.ndarray:
        label = super().read_label(path)
        if self.invalid_regions == "ignore":
            mask_path = self._invalid_mask(path)
            invalid = read_id_map(mask_path)
            if invalid.shape != label.shape:
                raise DatasetError(f"{mask_path}: invalid-region mask is {invalid.shape[1]}x{invalid.shape[0]} "
                                   f"but its label is {label.shape[1]}x{label.shape[0]}")
            label = np.where(invalid > 0, IGNORE_INDEX, label).astype(np.uint8)
        return label


class ACDC(_CityscapesLabelled):
    """ACDC (Sakaridis et al., ICCV 2021): fog, night, rain and snow, 19 Cityscapes classes."""

    kind = "acdc"
    conditions = ("fog", "night", "rain", "snow")
    splits = ("train", "val")  # the test split's labels are withheld for the benchmark server
    invalid_suffixes = ("_gt_invIds.png",)
    layout = ACDC_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val", conditions=conditions,
                 invalid_regions: str = "ignore"):
        root = Path(root)
        _check_split(type(self), split)
        conditions = (conditions,) if isinstance(conditions, str) else tuple(conditions)
        unknown = [c for c in conditions if c not in self.conditions]
        if unknown or not conditions:
            raise DatasetError(f"ACDC: conditions must be among {self.conditions}, got {list(conditions)}")
        files = []
        for condition in conditions:
            files += self._collect(root / "rgb_anon" / condition / split, root / "gt" / condition / split,
                                   invalid_regions)
        name = "+".join(conditions) if conditions != self.conditions else "all"
        super().__init__(files, name=f"{self.kind}/{name}/{split}")


class DarkZurich(_CityscapesLabelled):
    """Dark Zurich val (Sakaridis et al., ICCV 2019): 50 nighttime images, 19 Cityscapes classes."""

    kind = "dark_zurich"
    splits = ("val",)  # the test split's labels are withheld for the benchmark server
    invalid_suffixes = ("_gt_invGray.png", "_gt_invIds.png")
    layout = DARK_ZURICH_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val", invalid_regions: str = "ignore"):
        root = Path(root)
        _check_split(type(self), split)
        files = self._collect(root / "rgb_anon" / split / "night", root / "gt" / split / "night", invalid_regions)
        super().__init__(files, name=f"{self.kind}/{split}")


# ADE20K's buckets scaled to 128 px scenes (ADE20K is tested at short side 512): the same
# fraction of the image, so "small" means the same thing relative to the scene.
SYNTHETIC_SIZE_BUCKETS = (16 ** 2, 48 ** 2)


class SyntheticOnDisk(ADE20K):
    """A materialised synthetic split, read through the ADE20K-layout reader."""

    kind = "synthetic"
    classes = synthetic.CLASSES
    label_lut = zero_ignored_lut(len(synthetic.CLASSES))
    label_ids = "synthetic ids (0 = other, 1..9 = classes)"
    test_scale = None
    size_buckets = SYNTHETIC_SIZE_BUCKETS
    layout = ADE_LAYOUT.replace("ADE_train", "synthetic_train").replace("ADE_val", "synthetic_val")


class Synthetic(SegDataset):
    """The built-in synthetic scenes (see :mod:`segbench.data.synthetic`), from memory."""

    kind = "synthetic"
    classes = synthetic.CLASSES
    size_buckets = SYNTHETIC_SIZE_BUCKETS
    label_lut = zero_ignored_lut(len(synthetic.CLASSES))
    default_sizes = {"train": 400, "val": 100, "test": 100}

    def __init__(self, split: str = "val", num_images: int | None = None, image_size: int = 128, seed: int = 0):
        if split not in synthetic.SPLIT_SEEDS:
            raise DatasetError(f"synthetic: unknown split {split!r}; choose from {sorted(synthetic.SPLIT_SEEDS)}")
        self.split, self.image_size, self.seed = split, image_size, seed
        count = self.default_sizes[split] if num_images is None else num_images
        super().__init__([None] * count, name=f"synthetic/{split}")
        # Training revisits its scenes often: they are kept. An evaluation reads each once, and
        # keeping them would grow its memory with the image count (`segbench bench` measures it).
        self._cache: dict[int, Sample] | None = {} if split == "train" else None

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image, ade_label, instances = synthetic.scene(index, self.split, self.seed, self.image_size)
        label = self.label_lut[ade_label].astype(np.uint8)
        sample = Sample(image, label, instances, f"synthetic_{self.split}_{index + 1:08d}")
        if self._cache is not None:
            self._cache[index] = sample
        return sample


def materialize_synthetic(out: str | os.PathLike, splits: dict[str, int], image_size: int = 128, seed: int = 0) -> Path:
    """Write synthetic splits to ``out`` in the ADE20K layout (lossless PNG), instance
    masks in the SceneParsing instance format (R = category, G = instance id)."""
    out = Path(out)
    for split, count in splits.items():
        folder = ADE20K.splits[split]
        for sub in ("images", "annotations", "annotations_instance"):
            (out / sub / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, ade_label, instances = synthetic.scene(index, split, seed, image_size)
            name = f"synthetic_{split}_{index + 1:08d}"
            Image.fromarray(image).save(out / "images" / folder / f"{name}.png")
            Image.fromarray(ade_label).save(out / "annotations" / folder / f"{name}.png")
            encoded = np.zeros(image.shape, np.uint8)
            encoded[..., 0] = np.where(instances > 0, ade_label, 0)
            encoded[..., 1] = instances  # < 256 instances per synthetic scene, as in ADE20K
            Image.fromarray(encoded).save(out / "annotations_instance" / folder / f"{name}.png")
    return out


DATASETS = {"synthetic": Synthetic, "ade20k": ADE20K, "cityscapes": Cityscapes, "pascal_context": PascalContext,
            "pascal_context_59": PascalContext59, "coco_stuff": COCOStuff, "acdc": ACDC, "dark_zurich": DarkZurich}


def dataset_classes(kind: str, root: str | None, options: dict) -> tuple[str, ...]:
    """The class names of a suite's dataset entry (its class count sizes the models)."""
    return DATASETS[kind].class_names_for(root, **options)


def check_dataset_options(kind: str, root: str | None, options: dict) -> None:
    """The ``options`` of a dataset entry against its reader's keyword arguments: an unknown
    option or a value of the wrong type is an error naming the option and what is allowed."""
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {sorted(DATASETS)}")
    reader = SyntheticOnDisk if kind == "synthetic" and root is not None else DATASETS[kind]
    hints = typing.get_type_hints(reader.__init__)
    allowed = [name for name in inspect.signature(reader.__init__).parameters if name not in ("self", "root", "split")]
    for name, value in options.items():
        if name not in allowed:
            where = " read from a root (the materialised files)" if reader is SyntheticOnDisk else ""
            raise DatasetError(f"dataset {kind!r}{where}: unknown option {name!r}; allowed: "
                               f"{', '.join(allowed) or 'none'}")
        if name not in hints:  # an unannotated option: its reader checks it
            continue
        types = typing.get_args(hints[name]) or (hints[name],)
        # list[int] and the like are checked as lists: the reader checks their items
        if not any(value is None if t is type(None) else
                   (isinstance(value, typing.get_origin(t) or t) and not isinstance(value, bool)) for t in types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DatasetError(f"dataset {kind!r}: option {name!r}: expected {expected}, got {value!r}")


def build_dataset(kind: str, split: str, root: str | None = None, **options) -> SegDataset:
    """Build a dataset by its kind name (the ``kind`` of a suite's dataset entry)."""
    check_dataset_options(kind, root, options)
    if kind == "synthetic" and root is not None:
        return SyntheticOnDisk(root, split)
    if kind == "synthetic":
        return Synthetic(split, **options)
    if root is None:
        raise DatasetError(f"{kind}: no root given. Set the dataset's `root` in the suite "
                           f"(e.g. root: ${{SEGBENCH_DATA}}/{kind}). Expected layout:\n{DATASETS[kind].layout}")
    return DATASETS[kind](root, split, **options)


import segbench.data.folder  # noqa: E402,F401  registers kind "folder" (it builds on the readers above)
