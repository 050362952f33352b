"""Training augmentation against mmsegmentation 1.2.2's own transforms (the pipeline all
three papers train with): same random draws -> the same pixels."""
from __future__ import annotations

import numpy as np
import pytest

from segbench.data.datasets import IGNORE_INDEX, build_dataset
from segbench.data.transforms import train_augment
from test_mmseg_parity import mmseg_models  # noqa: F401  (fixture: registers mmcv-lite's missing _ext)


def mmseg_pipeline(image_rgb, label, scale, crop, seed):
    """RandomResize -> RandomCrop(cat_max_ratio=0.75) -> RandomFlip(0.5) -> PhotoMetricDistortion,
    as mmseg's ADE20K / Cityscapes training configs, on mmseg's BGR images."""
    from mmcv.transforms import RandomFlip, RandomResize
    from mmseg.datasets.transforms import PhotoMetricDistortion, RandomCrop

    height, width = label.shape
    results = {"img": np.ascontiguousarray(image_rgb[..., ::-1]), "gt_seg_map": label.copy(),
               "seg_fields": ["gt_seg_map"], "img_shape": (height, width), "ori_shape": (height, width)}
    np.random.seed(seed)
    for transform in (RandomResize(scale=scale or (width, height), ratio_range=(0.5, 2.0), keep_ratio=True),
                      RandomCrop(crop_size=crop, cat_max_ratio=0.75), RandomFlip(prob=0.5),
                      PhotoMetricDistortion()):
        results = transform(results)
    return results["img"][..., ::-1], results["gt_seg_map"]


@pytest.mark.parametrize("scale, crop", [(None, (96, 96)), ((256, 96), (64, 80))])
def test_augmentation_matches_mmseg(mmseg_models, scale, crop):  # noqa: F811
    dataset = build_dataset("synthetic", "train", num_images=6)
    lopsided = np.zeros((128, 128), np.uint8)  # one class almost everywhere: the crop is redrawn, often 10 times
    lopsided[100:, 90:], lopsided[:48] = 1, IGNORE_INDEX
    for seed in range(16):
        sample = dataset[seed % len(dataset)]
        labels = sample.label if seed % 2 else lopsided
        ref_image, ref_label = mmseg_pipeline(sample.image, labels, scale, crop, seed)
        image, label = train_augment(sample.image, labels, crop, np.random.RandomState(seed), scale,
                                     mean=(0, 0, 0), std=(1, 1, 1))
        h, w = ref_label.shape  # mmseg pads later, in its data preprocessor
        np.testing.assert_array_equal(label[:h, :w], ref_label)
        np.testing.assert_array_equal(image[:, :h, :w].transpose(1, 2, 0), ref_image.astype(np.float32))


def test_padding_is_zero_after_normalisation_and_ignore_in_the_label():
    image = np.full((20, 30, 3), 200, np.uint8)
    label = np.zeros((20, 30), np.uint8)
    label[:, 15:] = 1
    x, y = train_augment(image, label, (64, 64), np.random.RandomState(0), None, mean=(100, 100, 100),
                         std=(50, 50, 50), ratio_range=(1.0, 1.0), photometric=False)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert np.all(x[:, :20, :30] == 2.0) and np.all(x[:, 20:] == 0) and np.all(x[:, :, 30:] == 0)
    assert np.all(y[20:] == IGNORE_INDEX) and np.all(y[:, 30:] == IGNORE_INDEX)
    assert set(np.unique(y[:20, :30])) == {0, 1}
