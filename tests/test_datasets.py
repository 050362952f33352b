"""Dataset readers on generated fixture trees in each official layout."""
from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, labels as cs_labels
from layouts import save, write_ade, write_cityscapes, write_coco_stuff, write_pascal_context

from segbench.data import classes
from segbench.data.datasets import (DATASETS, DatasetError, Synthetic, build_dataset, materialize_synthetic)


def test_every_kind_has_layout_scale_and_buckets():
    for kind, cls in DATASETS.items():
        assert cls.kind == kind
        assert cls.layout and len(cls.size_buckets) == 2
        assert len(set(cls.classes)) == len(cls.classes)
    assert len(DATASETS["cityscapes"].classes) == 19 and DATASETS["cityscapes"].test_scale == (2048, 1024)
    assert len(DATASETS["pascal_context"].classes) == 60 and len(DATASETS["pascal_context_59"].classes) == 59
    assert len(DATASETS["coco_stuff"].classes) == 171 and len(DATASETS["ade20k"].classes) == 150


@pytest.mark.parametrize("kind", ["ade20k", "cityscapes", "pascal_context", "coco_stuff"])
def test_missing_layout_names_the_expected_layout(tmp_path, kind):
    with pytest.raises(DatasetError) as info:
        build_dataset(kind, "val", str(tmp_path / "nothing"))
    assert "Expected layout" in str(info.value) and "does not exist" in str(info.value)


def test_ade20k_odd_sizes_grayscale_rgba_and_instances(tmp_path):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 151, (37, 53)), rng.integers(0, 151, (64, 31))]
    instances = [rng.integers(0, 5, (37, 53)), np.zeros((64, 31), int)]
    names = write_ade(tmp_path, labels, instances=instances)
    save(tmp_path / "images" / "validation" / f"{names[0]}.jpg", rng.integers(0, 256, (37, 53), dtype=np.uint8))  # grayscale
    (tmp_path / "images" / "validation" / f"{names[1]}.jpg").unlink()
    save(tmp_path / "images" / "validation" / f"{names[1]}.png", rng.integers(0, 256, (64, 31, 4), dtype=np.uint8))  # RGBA
    dataset = build_dataset("ade20k", "val", str(tmp_path))
    first, second = dataset[0], dataset[1]
    assert first.image.shape == (37, 53, 3) and second.image.shape == (64, 31, 3)
    assert first.image.dtype == np.uint8
    expected = np.where(labels[0] == 0, 255, labels[0] - 1)
    np.testing.assert_array_equal(first.label, expected)
    np.testing.assert_array_equal(first.instances, instances[0])  # the G channel of the instance PNG
    assert first.name == names[0]


def test_label_with_out_of_range_value_is_a_clear_error(tmp_path):
    label = np.full((8, 8), 3)
    label[2, 2] = 151  # ADE20K has ids 0..150
    write_ade(tmp_path, [label])
    dataset = build_dataset("ade20k", "val", str(tmp_path))
    with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png: values \[151\]"):
        dataset[0]


def test_rgb_label_is_an_error(tmp_path):
    write_ade(tmp_path, [np.ones((4, 4))])
    save(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", np.ones((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel"):
        build_dataset("ade20k", "val", str(tmp_path))[0]


def test_cityscapes_maps_label_ids_with_the_official_table(tmp_path):
    rng = np.random.default_rng(1)
    label_ids = [rng.integers(0, 34, (15, 26)), rng.integers(0, 34, (9, 7))]
    instance_ids = [np.where(label_ids[0] == 26, 26000 + rng.integers(0, 3, (15, 26)), label_ids[0]),
                    label_ids[1].copy()]
    names = write_cityscapes(tmp_path, label_ids, instance_ids=instance_ids)
    dataset = build_dataset("cityscapes", "val", str(tmp_path))
    assert dataset.classes == tuple(next(l.name for l in cs_labels if l.trainId == t) for t in range(19))
    np.testing.assert_array_equal(dataset.palette[13], next(l.color for l in cs_labels if l.trainId == 13))
    sample = dataset[0]
    assert sample.name == names[0]
    expected = np.vectorize(lambda i: id2label[i].trainId if 0 <= id2label[i].trainId < 255 else 255)(label_ids[0])
    np.testing.assert_array_equal(sample.label, expected)
    np.testing.assert_array_equal(sample.instances, np.where(instance_ids[0] >= 1000, instance_ids[0], 0))
    assert dataset[1].instances.max() == 0  # stuff only: no annotated objects


def test_cityscapes_value_outside_label_ids_is_an_error(tmp_path):
    write_cityscapes(tmp_path, [np.full((4, 4), 40)])
    with pytest.raises(DatasetError, match=r"values \[40\] are not Cityscapes label ids"):
        build_dataset("cityscapes", "val", str(tmp_path))[0]


def test_pascal_context_60_and_59(tmp_path):
    rng = np.random.default_rng(2)
    labels = [rng.integers(0, 60, (21, 33)), rng.integers(0, 60, (17, 5))]
    write_pascal_context(tmp_path, labels)
    with_background = build_dataset("pascal_context", "val", str(tmp_path))  # root holds VOCdevkit/VOC2010
    without = build_dataset("pascal_context_59", "val", str(tmp_path / "VOCdevkit" / "VOC2010"))
    assert len(with_background) == len(without) == 2
    np.testing.assert_array_equal(with_background[0].label, labels[0])
    np.testing.assert_array_equal(without[0].label, np.where(labels[0] == 0, 255, labels[0] - 1))
    assert with_background.classes[0] == "background" and with_background.classes[1:] == classes.PASCAL_CONTEXT_59
    bad = labels[1].copy()
    bad[0, 0] = 60
    save(tmp_path / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "2008_000001.png", bad.astype(np.uint8))
    with pytest.raises(DatasetError, match=r"values \[60\]"):
        with_background[1]


def test_pascal_context_split_listing_a_missing_image(tmp_path):
    write_pascal_context(tmp_path, [np.zeros((4, 4))])
    split = tmp_path / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext" / "val.txt"
    split.write_text("2008_000000\n2008_999999\n")
    with pytest.raises(DatasetError, match="2008_999999"):
        build_dataset("pascal_context", "val", str(tmp_path))


def test_coco_stuff_train_ids_and_official_coco_ids_agree(tmp_path):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 171, (13, 19)).astype(np.uint8)
    train[0, :3] = 255
    coco = np.where(train == 255, 255, np.array(classes.COCO_STUFF_IDS)[np.minimum(train, 170)])
    write_coco_stuff(tmp_path / "a", [train], train_ids=True)
    write_coco_stuff(tmp_path / "b", [coco], train_ids=False)
    a, b = build_dataset("coco_stuff", "val", str(tmp_path / "a")), build_dataset("coco_stuff", "val", str(tmp_path / "b"))
    np.testing.assert_array_equal(a[0].label, train)
    np.testing.assert_array_equal(b[0].label, train)
    assert a.classes[0] == "person" and a.classes[80] == "banner" and a.classes[-1] == "wood"
    # mmseg's converter: COCO id 12 ("stop sign", 0-based) is train id 11; 11 was never used
    assert b.label_lut[12] == 11 and b.label_lut[11] == -1 and b.label_lut[181] == 170
    write_coco_stuff(tmp_path / "c", [np.full((3, 3), 11)], train_ids=False)
    with pytest.raises(DatasetError, match=r"values \[11\]"):
        build_dataset("coco_stuff", "val", str(tmp_path / "c"))[0]


def test_materialised_synthetic_matches_memory_in_the_ade_instance_format(tmp_path):
    materialize_synthetic(tmp_path, {"val": 3}, image_size=48)
    disk = build_dataset("synthetic", "val", str(tmp_path))
    memory = Synthetic("val", num_images=3, image_size=48)
    for i in range(3):
        np.testing.assert_array_equal(disk[i].image, memory[i].image)
        np.testing.assert_array_equal(disk[i].label, memory[i].label)
        np.testing.assert_array_equal(disk[i].instances, memory[i].instances)
        assert disk[i].name == memory[i].name


def test_unreadable_images_are_errors_naming_the_file(tmp_path):
    from PIL import Image

    from segbench.data.datasets import read_id_map, read_image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    (tmp_path / "notes.png").write_text("not an image at all")
    for name in ("cut.png", "notes.png"):
        for reader in (read_image, read_id_map):
            with pytest.raises(DatasetError, match=f"{tmp_path / name}: not a readable image"):
                reader(tmp_path / name)
    assert read_image(good).shape == (16, 16, 3)


@pytest.mark.parametrize("root, options, message", [
    (None, {"image_size": "64"}, "dataset 'synthetic': option 'image_size': expected int, got '64'"),
    (None, {"num_images": True}, "option 'num_images': expected int or null, got True"),
    (None, {"size": 64}, "dataset 'synthetic': unknown option 'size'; allowed: num_images, image_size, seed"),
    ("/nowhere", {"num_images": 3}, "read from a root (the materialised files): unknown option 'num_images'; "
                                    "allowed: none"),
    ("/nowhere", {"reduce_zero_label": True}, "dataset 'ade20k': unknown option 'reduce_zero_label'; allowed: none"),
])
def test_dataset_options_are_checked_by_name_and_type(root, options, message):
    kind = "ade20k" if "reduce_zero_label" in options else "synthetic"
    with pytest.raises(DatasetError) as error:
        build_dataset(kind, "val", root, **options)
    assert message in str(error.value)
