import numpy as np
import pytest

from segbench.data import synthetic
from segbench.data.datasets import SYNTHETIC_SIZE_BUCKETS, Synthetic, build_dataset, materialize_synthetic


def test_scene_is_a_pure_function_of_seed_split_index():
    a = synthetic.scene(5, "train", seed=0)
    b = synthetic.scene(5, "train", seed=0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(synthetic.scene(5, "val")[0], a[0])
    assert not np.array_equal(synthetic.scene(6, "train")[0], a[0])


def test_labels_instances_and_ignore_are_consistent():
    ds = Synthetic("val", num_images=20)
    for sample in (ds[i] for i in range(len(ds))):
        assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
        classes = set(np.unique(sample.label).tolist())
        assert classes <= set(range(len(synthetic.CLASSES))) | {255}
        # every labelled pixel belongs to exactly one instance; ignored clutter to none
        assert (sample.instances[sample.label == 255] == 0).all()
        assert (sample.instances[sample.label != 255] > 0).all()
        for instance in np.unique(sample.instances[sample.instances > 0]):
            assert len(np.unique(sample.label[sample.instances == instance])) == 1


def test_colour_does_not_decide_the_class():
    # Same shape, different context: balloons (sky) and balls (ground) must not be
    # separable by their mean colour; neither may any thing class by colour alone.
    ds = Synthetic("train", num_images=150)
    means = {k: [] for k in range(len(synthetic.CLASSES))}
    for i in range(len(ds)):
        s = ds[i]
        for inst in np.unique(s.instances[s.instances > 0]):
            mask = s.instances == inst
            means[int(s.label[mask][0])].append(s.image[mask].mean(0))
    centroids = {k: np.mean(v, 0) for k, v in means.items() if len(v) > 20}
    spread = np.mean([np.std(v, 0).mean() for k, v in means.items() if len(v) > 20])
    things = [synthetic.BALLOON, synthetic.BALL, synthetic.KITE, synthetic.TENT, synthetic.RING, synthetic.CRATE]
    for a in things:
        for b in things:
            if a < b:
                assert np.abs(centroids[a] - centroids[b]).max() < spread, (synthetic.CLASSES[a], synthetic.CLASSES[b])


def test_context_classes_sit_in_their_context():
    # A balloon or kite is entirely sky-surrounded: the pixel right below its lowest point
    # is never ground; a ball or tent never has sky right below it.
    for i in range(60):
        _, ade_label, instances = synthetic.scene(i, "val")
        label = ade_label.astype(int) - 1
        for inst in np.unique(instances[instances > 2]):
            ys, xs = np.nonzero(instances == inst)
            cls = label[ys[0], xs[0]]
            bottom = ys.max()
            if bottom + 1 >= label.shape[0]:
                continue
            below = label[bottom + 1, xs[ys == bottom]]
            if cls in (synthetic.BALLOON, synthetic.KITE):
                assert synthetic.GROUND not in below
            if cls in (synthetic.BALL, synthetic.TENT):
                assert synthetic.SKY not in below


def test_object_sizes_span_all_buckets():
    small, medium = SYNTHETIC_SIZE_BUCKETS
    counts = {"small": 0, "medium": 0, "large": 0}
    for i in range(40):
        _, _, instances = synthetic.scene(i, "val")
        for inst, area in zip(*np.unique(instances[instances > 0], return_counts=True)):
            counts["small" if area < small else "medium" if area < medium else "large"] += 1
    assert all(c >= 10 for c in counts.values()), counts


def test_materialized_copy_reads_back_identically(tmp_path):
    root = materialize_synthetic(tmp_path / "syn", {"train": 2, "val": 3})
    on_disk = build_dataset("synthetic", "val", str(root))
    in_memory = Synthetic("val", num_images=3)
    assert len(on_disk) == 3 and on_disk.classes == in_memory.classes
    for i in range(3):
        a, b = on_disk[i], in_memory[i]
        assert a.name == b.name
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        # same partition into instances (ids may be encoded differently on disk)
        pairs = set(zip(a.instances.ravel().tolist(), b.instances.ravel().tolist()))
        assert len(pairs) == len(np.unique(b.instances))


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split"):
        Synthetic("nope")
