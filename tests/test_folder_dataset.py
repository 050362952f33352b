"""kind: folder (segbench.data.folder): each label encoding, the classes file's mappings, the
layout options, and every problem of a split listed together, each naming its file."""
import json

import numpy as np
import pytest
from PIL import Image

from folder_writers import shapes_scene, write_folder_dataset
from segbench.data.datasets import DATASETS, DatasetError, build_dataset, dataset_classes
from segbench.data.folder import _CHECKED


@pytest.fixture(autouse=True)
def fresh():
    _CHECKED.clear()  # each test writes its own files; a split is checked once per process


@pytest.mark.parametrize("encoding", ["index", "palette", "rgb"])
def test_each_label_encoding_reads_as_the_same_class_indices(tmp_path, encoding):
    root = write_folder_dataset(tmp_path / encoding, {"val": 2}, encoding=encoding)
    dataset = build_dataset("folder", "val", str(root))
    assert dataset.classes == ("background", "square", "disc") and len(dataset) == 2
    for index in range(2):
        image, label = shapes_scene(index + 300)  # write_folder_dataset's scene numbering for "val"
        sample = dataset[index]
        assert np.array_equal(sample.label, label)  # 255 stays ignored in every encoding
        assert sample.image.shape == image.shape and sample.name == f"scene_{index:03d}"
    assert dataset.palette.tolist()[1] == [220, 20, 60]  # the classes file's palette


def write(root, classes_yaml, labels: dict, image_size=(4, 3), images=None, split="val"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(classes_yaml)
    for name in (labels if images is None else images):
        Image.new("RGB", image_size).save(root / "images" / split / f"{name}.png")
    for name, array in labels.items():
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(root / "labels" / split / f"{name}.png")
    return root


def test_label_map_reduce_zero_label_and_ignore(tmp_path):
    raw = [[7, 8, 26, 0]] * 3
    root = write(tmp_path / "a", "names: [road, car, sky]\nlabel_map: {7: 0, 8: 1, 26: 2}\nignore: 0\n", {"x": raw})
    assert build_dataset("folder", "val", str(root))[0].label.tolist() == [[0, 1, 2, 255]] * 3
    root = write(tmp_path / "b", "names: [a, b]\nreduce_zero_label: true\n", {"x": [[0, 1, 2, 255]] * 3})
    assert build_dataset("folder", "val", str(root))[0].label.tolist() == [[255, 0, 1, 255]] * 3


def test_sub_folders_suffixes_instances_test_scale_and_size_buckets(tmp_path):
    root = tmp_path / "city"
    for top, suffix in (("img", "_leftImg8bit.png"), ("gt", "_gtFine.png"), ("inst", ".png")):
        folder = root / top / "val" / "berlin"
        folder.mkdir(parents=True)
        value = np.zeros((3, 4, 3) if top == "img" else (3, 4), np.uint8)
        Image.fromarray(value).save(folder / f"berlin_000{'' if top != 'inst' else '_leftImg8bit'}{suffix}"
                                    if top != "inst" else folder / "berlin_000.png")
    (root / "classes.yaml").write_text("names: [road, car]\n")
    dataset = build_dataset("folder", "val", str(root), images="img", labels="gt", instances="inst",
                            image_suffix="_leftImg8bit.png", label_suffix="_gtFine.png", test_scale=[2048, 1024],
                            size_buckets=[10, 100], name="mycity")
    assert len(dataset) == 1 and dataset.name == "mycity/val"
    assert dataset.test_scale == (2048, 1024) and dataset.size_buckets == (10, 100)
    assert dataset[0].instances is not None and dataset[0].instances.dtype == np.int32
    assert dataset_classes("folder", str(root), {}) == ("road", "car")
    assert DATASETS["folder"].layout.startswith("    <root>/images/<split>")


def test_every_problem_of_a_split_is_listed_together_naming_files(tmp_path):
    root = write(tmp_path / "bad", "names: [a, b]\npalette: [[0, 0, 0], [255, 0, 0]]\n",
                 {"ok": [[0, 1, 1, 0]] * 3, "value": [[0, 9, 1, 0]] * 3, "orphan": [[0] * 4] * 3},
                 images=["ok", "value", "nolabel", "colour", "size", "broken"])
    Image.fromarray(np.full((3, 4, 3), 7, np.uint8)).save(root / "labels" / "val" / "colour.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "labels" / "val" / "size.png")
    (root / "labels" / "val" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError) as caught:
        build_dataset("folder", "val", str(root))
    message = str(caught.value)
    assert "6 problem(s)" in message
    images, labels = root / "images" / "val", root / "labels" / "val"
    for line in (f"{images / 'nolabel.png'}: no label at {labels / 'nolabel.png'}",
                 f"{labels / 'orphan.png'}: a label without an image",
                 f"{labels / 'value.png'}: label values 9 not declared in the classes file",
                 f"{labels / 'colour.png'}: label colours (7, 7, 7) not declared in the classes file",
                 f"{labels / 'size.png'}: label is 5x5 but its image size.png is 4x3",
                 f"{labels / 'broken.png'}: unreadable"):
        assert line in message, line


def test_classes_file_errors_name_the_file(tmp_path):
    root = write(tmp_path / "c", "names: [a, b]\npalette: [[0, 0, 0]]\n", {"x": [[0]]}, image_size=(1, 1))
    with pytest.raises(DatasetError, match=r"classes.yaml: palette: expected 2 colours"):
        build_dataset("folder", "val", str(root))
    (root / "classes.yaml").write_text("names: [a]\ncolours: []\n")
    with pytest.raises(DatasetError, match=r"classes.yaml: unknown key 'colours'"):
        build_dataset("folder", "val", str(root))
    (root / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match=r"classes.yaml: classes file not found"):
        dataset_classes("folder", str(root), {})
    root = write(tmp_path / "d", "names: [a, b]\n", {"x": [[0, 0, 0, 0]] * 3})
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(root / "labels" / "val" / "x.png")
    with pytest.raises(DatasetError, match=r"x.png: an RGB colour label, but the classes file has no palette"):
        build_dataset("folder", "val", str(root))


def test_suite_lists_a_folder_splits_problems_before_any_job_runs(tmp_path, capsys):
    from segbench.cli import main

    root = write(tmp_path / "data", "names: [a, b]\n", {"x": [[0, 5, 1, 0]] * 3, "y": [[0, 7, 1, 0]] * 3})
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: f\ndevice: cpu\nresults: {tmp_path / 'results'}\n"
                     f"datasets:\n  mine: {{kind: folder, root: {root}}}\nmodels:\n  m: {{arch: fcn_micro, weights: random}}\n"
                     "evaluate:\n  - {dataset: mine}\n")
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:5: datasets.mine.root" in err and "2 problem(s)" in err
    assert "x.png: label values 5" in err and "y.png: label values 7" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("ids", ["train", "label"])
def test_prediction_pngs_score_against_a_folder_dataset(tmp_path, capsys, ids):
    import json

    from segbench.cli import main

    raw = [[7, 8, 26, 0]] * 3
    root = write(tmp_path / "d", "names: [road, car, sky]\nlabel_map: {7: 0, 8: 1, 26: 2}\nignore: 0\n", {"x": raw})
    predictions = tmp_path / "pred"
    predictions.mkdir()
    written = raw if ids == "label" else [[0, 1, 2, 2]] * 3  # the raw values, or the class indices
    Image.fromarray(np.asarray(written, np.uint8)).save(predictions / "x.png")
    assert main(["eval", "--predictions", str(predictions), "--dataset", "folder", "--root", str(root),
                 "--ids", ids, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["mIoU"] == 100.0


def test_commands_take_a_folder_datasets_class_count_from_its_classes_file(tmp_path, capsys):
    from segbench.cli import main

    root = write(tmp_path / "data", "names: [a, b, c, d]\n", {"x": [[0, 1, 2, 3]] * 3})
    assert main(["datasets", "--json"]) == 0
    assert {r["kind"]: r["classes"] for r in json.loads(capsys.readouterr().out)}["folder"] is None
    assert main(["datasets"]) == 0
    assert "from its classes file" in capsys.readouterr().out
    costs = ["profile", "segformer_micro", "--dataset", "folder", "--size", "32x32", "--runs", "0", "--no-fvcore",
             "--json"]
    assert main(costs + ["--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_classes"] == 4
    assert main(costs) == 2
    assert "--root DIR" in capsys.readouterr().err
