"""User models (segbench.models.custom): Python factories and HuggingFace folders, their
settings, checkpoints, training, and every kind of bad input, through suites as a user
writes them, with their files outside the repository."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from folder_writers import EXAMPLE, write_folder_dataset
from segbench.cli import main
from segbench.engine.inference import Protocol, predict
from segbench.models import create_model, custom
from segbench.models.checkpoints import CheckpointError, load_model, save_checkpoint
from segbench.results import load_records
from segbench.runner import plan
from segbench.suite import SuiteError, load_suite

MODEL = (EXAMPLE / "model.py").read_text()


def write_suite(folder: Path, data: Path, models: dict, extra: str = "", evaluate=None) -> Path:
    """A suite in ``folder`` over the folder dataset ``data``; ``models``: key -> entry (YAML text)."""
    entries = "\n".join(f"  {key}:\n" + textwrap.indent(_with_weights(textwrap.dedent(body).strip()), "    ")
                         for key, body in models.items())
    evaluate = evaluate or "  - {dataset: shapes, bootstrap: 0, size_breakdown: false}"
    path = folder / "suite.yaml"
    path.write_text(f"name: user\ndevice: cpu\nresults: {folder / 'results'}\ndatasets:\n"
                    f"  shapes: {{kind: folder, root: {data}}}\nmodels:\n{entries}\nevaluate:\n{evaluate}\n{extra}")
    return path


def _with_weights(entry: str) -> str:
    """Factory models here are evaluated untrained, which a suite must say (`weights: random`)."""
    given = any(key in entry for key in ("checkpoint:", "train:", "weights:", "arch: hf:", "arch: fcn"))
    return entry if given else entry + "\nweights: random"


@pytest.fixture
def data(tmp_path):
    return write_folder_dataset(tmp_path / "shapes", {"val": 2, "train": 2})


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder, outside the repository, with the example model file."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    return folder


TINY = """
arch: model.py:build_model
args: {width: 4}
protocol: {test_mode: whole}
"""


# --- sources and settings ----------------------------------------------------------------

def test_file_and_module_factories_get_num_classes_and_args(project, data, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    suite = load_suite(write_suite(project, data, {
        "by_file": TINY,
        "by_module": "arch: model:build_model\nargs: {width: 6}\nprotocol: {test_mode: whole}"}))
    by_file = create_model(suite.models["by_file"].arch, num_classes=3)
    by_module = create_model(suite.models["by_module"].arch, num_classes=3)
    assert by_file.decoder.out_channels == by_module.decoder.out_channels == 3
    assert by_file.decoder.in_channels == 8 and by_module.decoder.in_channels == 12  # 2 * width
    assert by_file.info.mean == (123.675, 116.28, 103.53)  # from the model's info attribute
    assert by_file.info.family == "custom" and by_file.info.test_mode == "whole"
    ids = {job.model: job.id for job in plan(suite)}
    assert ids["by_file"] != ids["by_module"]  # args are part of the job identity


def test_suite_settings_override_the_models_info_and_reach_the_protocol(project, data):
    suite = load_suite(write_suite(project, data, {"slide": """
        arch: model.py:build_model
        preprocess: {mean: [1, 2, 3], std: [4, 5, 6]}
        protocol: {test_mode: slide, test_window: 24, test_stride: 16, test_scale: [96, 40], size_divisor: 8}
    """}))
    model = create_model(suite.models["slide"].arch, num_classes=3)
    assert model.info.mean == (1, 2, 3) and model.info.std == (4, 5, 6)
    from segbench.data.datasets import build_dataset
    from segbench.engine.protocols import paper_protocol

    protocol = paper_protocol(model.info, build_dataset("folder", "val", str(data)))
    assert (protocol.mode, protocol.window, protocol.stride) == ("slide", 24, 16)
    assert protocol.test_scale == (96, 40) and protocol.size_divisor == 8


@pytest.mark.parametrize("entry, key", [
    ("arch: model.py:build_model", "protocol.test_mode"),
    ("arch: model.py:build_model\nprotocol: {test_mode: slide, test_stride: 8}", "protocol.crop_size"),
    ("arch: model.py:build_model\nprotocol: {test_mode: slide, crop_size: 32}", "protocol.test_stride"),
])
def test_a_needed_setting_nobody_gives_is_an_error_naming_the_key(project, data, capsys, entry, key):
    suite = write_suite(project, data, {"mine": entry})
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:8: models.mine" in err and key in err


def test_mean_and_std_come_from_the_suite_when_the_model_has_no_info(project, data, capsys):
    (project / "model.py").write_text(MODEL.replace("    info = {", "    no_info = {"))
    suite = write_suite(project, data, {"mine": TINY})
    assert main(["run", str(suite)]) == 2
    assert "preprocess.mean" in capsys.readouterr().err


def test_registry_entries_refuse_user_model_keys(project, data):
    with pytest.raises(SuiteError, match=r"models.seg.args: only for user models"):
        load_suite(write_suite(project, data, {"seg": "arch: fcn_micro\nargs: {width: 3}"}))


# --- bad input --------------------------------------------------------------------------------

LOAD_TIME = {
    "import fails": ("import not_a_module_anyone_has\n" + MODEL, "importing model.py failed: ModuleNotFoundError"),
    "factory raises": (MODEL.replace("    return TinySegNet",
                                     "    raise RuntimeError('out of ideas')\n    return TinySegNet"),
                       "raised RuntimeError: out of ideas"),
    "not a module": (MODEL.replace("return TinySegNet(num_classes, width)", "return 42"), "returned int, not a torch"),
    "not 4-D": (MODEL.replace("return self.decoder(self.encoder(x))",
                              "return self.decoder(self.encoder(x)).flatten(2)"),
                "expected float logits (B, 3, h, w)"),
    "not float": (MODEL.replace("return self.decoder(self.encoder(x))", "return self.decoder(self.encoder(x)).long()"),
                  "returned a torch.int64 tensor"),
    "wrong channels": (MODEL.replace("nn.Conv2d(2 * width, num_classes, 1)", "nn.Conv2d(2 * width, 5, 1)"),
                       "expected (1, 3, h, w): 3 classes"),
}


@pytest.mark.parametrize("case", sorted(LOAD_TIME))
def test_bad_models_known_at_load_time_exit_2_naming_file_line_key(project, data, capsys, case):
    source, message = LOAD_TIME[case]
    (project / "model.py").write_text(source)
    suite = write_suite(project, data, {"mine": TINY})
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:8: models.mine" in err and message in err
    assert not (project / "results").exists()  # nothing ran


def test_missing_function_and_file_are_load_time_errors(project, data, capsys):
    suite = write_suite(project, data, {"a": TINY.replace("build_model", "build")})
    assert main(["run", str(suite)]) == 2
    assert "has no function 'build'" in capsys.readouterr().err
    suite = write_suite(project, data, {"a": TINY.replace("model.py", "models/nowhere.py")})
    assert main(["run", str(suite)]) == 2
    assert "nowhere.py" in capsys.readouterr().err


RUN_TIME = {
    "nan logits": ("return self.decoder(self.encoder(x))", "return self.decoder(self.encoder(x)) * float('nan')",
                   "NaN or infinite logits"),
    "input size": ("return self.decoder(self.encoder(x))",
                   "assert x.shape[-1] == 32, 'needs 32 px'\n        return self.decoder(self.encoder(x))",
                   "the model failed on an input of shape (1, 3, 48, 64): AssertionError: needs 32 px"),
}


@pytest.mark.parametrize("case", sorted(RUN_TIME))
def test_bad_models_found_while_running_give_an_error_record_and_the_suite_goes_on(project, data, capsys, case):
    old, new, message = RUN_TIME[case]
    (project / "bad.py").write_text(MODEL.replace(old, new))
    suite = write_suite(project, data, {"bad": TINY.replace("model.py", "bad.py"), "good": TINY})
    assert main(["run", str(suite), "--json"]) == 1  # a failed job
    capsys.readouterr()
    records = {r["model"]: r for r in load_records(project / "results")}
    assert records["good"]["status"] == "ok"
    assert records["bad"]["status"] == "error"
    assert records["bad"]["error"]["message"].startswith(f"{suite}:8: models.bad: ")
    assert message in records["bad"]["error"]["message"]


def test_command_line_model_paths_resolve_against_the_working_directory(project, data, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setattr(custom, "_SOURCES", {})
    with pytest.raises(custom.CustomModelError, match="protocol.test_mode"):
        create_model("model.py:build_model", num_classes=3)  # no suite entry: the model's info must say it all
    (project / "model.py").write_text(MODEL.replace('"std": (58.395, 57.12, 57.375)}',
                                                    '"std": (58.395, 57.12, 57.375), "test_mode": "whole"}'))
    assert create_model("model.py:build_model", num_classes=3).info.test_mode == "whole"


# --- checkpoints and training ---------------------------------------------------------------------

def test_checkpoints_segbench_format_and_plain_state_dicts(project, data, tmp_path):
    name = load_suite(write_suite(project, data, {"mine": TINY})).models["mine"].arch
    torch.manual_seed(1)
    trained = create_model(name, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    expected = trained(x)
    from safetensors.torch import save_file

    files = {"segbench": save_checkpoint(tmp_path / "a.pth", trained), "plain": tmp_path / "b.pth",
             "wrapped": tmp_path / "c.pth", "safetensors": tmp_path / "d.safetensors"}
    torch.save(trained.state_dict(), files["plain"])
    torch.save({"state_dict": trained.state_dict()}, files["wrapped"])
    save_file(trained.state_dict(), str(files["safetensors"]))
    for kind, path in files.items():
        model, report = load_model(name, path, num_classes=3)
        assert report.complete, kind
        assert torch.equal(model(x), expected), kind
    import argparse

    torch.save({"state_dict": trained.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_model(name, tmp_path / "pickled.pth", num_classes=3)
    torch.save({"decoder.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(name, tmp_path / "wrong.pth", num_classes=3)


def test_suite_checkpoint_entry_and_training_with_a_named_recipe(project, data, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    torch.save(create_model(load_suite(write_suite(project, data, {"m": TINY})).models["m"].arch, 3).state_dict(),
               weights)
    suite = write_suite(project, data, {
        "given": TINY + f"checkpoint: {weights}\n",
        "trained": TINY.replace("protocol: {test_mode: whole}", "protocol: {test_mode: whole, crop_size: 32}")
                   + "train: {dataset: shapes, recipe: scratch, iters: 2, batch_size: 2, workers: 0}\n"})
    assert main(["run", str(suite), "--json"]) == 0
    capsys.readouterr()
    records = load_records(project / "results")
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    train = next(r for r in records if r["kind"] == "train")
    assert train["recipe"]["name"] == "scratch" and train["recipe"]["iters"] == 2
    evals = {r["model"]: r for r in records if r["kind"] == "eval"}
    assert evals["trained"]["checkpoint"] == train["checkpoint"]
    assert evals["given"]["checkpoint_load"]["format"] == "state_dict"


def test_registry_job_ids_are_unchanged():
    from segbench.runner import plan as plan_jobs

    root = Path(__file__).resolve().parents[1]
    ids = {job.id for job in plan_jobs(load_suite(root / "suites" / "quickstart.yaml"))}
    assert ids == {json.loads(p.read_text())["job_id"] for p in (root / "baselines" / "quickstart").glob("*.json")}


# --- HuggingFace folders -------------------------------------------------------------------------

hf_writers = pytest.importorskip("hf_writers")
pytest.importorskip("transformers")
HF_ARCHS = ("segformer", "upernet_convnext", "upernet_swin", "dpt", "beit")


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_hf_folder_logits_equal_transformers_forward(tmp_path, monkeypatch, arch):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    folder = hf_writers.write_hf_model(tmp_path / arch, hf_writers.tiny_configs(3)[arch])
    monkeypatch.chdir(tmp_path)
    name = custom.register(f"hf:{arch}", tmp_path, {}, {"test_mode": "whole"}, "suite.yaml:3: models.hf")
    model = create_model(name, num_classes=3).eval()
    assert model.info.mean == pytest.approx([255 * m for m in hf_writers.MEAN])  # from preprocessor_config.json
    assert model.info.std == pytest.approx([255 * s for s in hf_writers.STD])
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ours = predict(model, image, Protocol(mode="whole"), 3)
    reference = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = F.interpolate(reference(pixel_values=pixels).logits, size=(32, 32), mode="bilinear",
                               align_corners=False)[0]
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("archs", [("segformer", "dpt"),  # whole and slide; all five take ~15 s on 2 cores
                                   pytest.param(HF_ARCHS, marks=pytest.mark.slow)])
def test_hf_folders_go_through_every_stage(tmp_path, monkeypatch, capsys, archs):
    data = write_folder_dataset(tmp_path / "shapes", {"val": 2}, encoding="rgb")
    project = tmp_path / "project"
    project.mkdir()
    for arch in archs:
        hf_writers.write_hf_model(project / "hf" / arch, hf_writers.tiny_configs(3)[arch])
    protocol = {"segformer": "{test_mode: whole, size_divisor: 32}",
                "upernet_convnext": "{test_mode: whole, size_divisor: 32}", "upernet_swin": "{test_mode: whole}",
                "beit": "{test_mode: whole, size_divisor: 8}",  # patch 8
                "dpt": "{test_mode: slide, test_window: 32, test_stride: 16}"}  # square inputs only
    multi_scale = [a for a in archs if a in ("segformer", "upernet_convnext", "beit")]  # DPT, Swin: see above
    suite = write_suite(project, data, {a: f"arch: hf:hf/{a}\nprotocol: {protocol[a]}" for a in archs},
                        evaluate="  - {dataset: shapes, bootstrap: 20}\n"
                                 "  - {dataset: shapes, protocol: multi_scale, bootstrap: 0, max_images: 1,\n"
                                 f"     models: [{', '.join(multi_scale)}]}}",
                        extra="profile:\n  - {dataset: shapes, sizes: [32x32], runs: 1, warmup: 0, fvcore: false}\n"
                              "corruption:\n  - {dataset: shapes, corruptions: [gaussian_noise], severities: [1], "
                              "bootstrap: 0, models: [segformer, dpt]}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--json"]) == 0
    capsys.readouterr()
    records = load_records(project / "results")
    assert len(records) == 2 * len(archs) + len(multi_scale) + 2 * 2  # SS eval + profile, MS, clean + noise
    assert all(r["status"] == "ok" for r in records), [r["error"]["message"] for r in records if "error" in r]
    profiles = {r["model"]: r["metrics"] for r in records if r["kind"] == "profile"}
    assert all(p["params"] > 0 and p["macs"] > 0 for p in profiles.values())
    dpt = next(r for r in records if r["model"] == "dpt" and r["kind"] == "eval")
    assert dpt["protocol"]["mode"] == "slide" and dpt["protocol"]["window"] == 32


def test_hf_folder_with_another_class_count_or_no_config_is_a_load_time_error(tmp_path, data, capsys):
    hf_writers.write_hf_model(tmp_path / "seg", hf_writers.tiny_configs(5)["segformer"])
    suite = write_suite(tmp_path, data, {"seg": f"arch: hf:{tmp_path / 'seg'}\nprotocol: {{test_mode: whole}}"})
    assert main(["run", str(suite)]) == 2
    assert f"{suite}:8: models.seg: {tmp_path / 'seg'}: the model predicts 5 classes but the dataset has 3" \
        in capsys.readouterr().err
    suite = write_suite(tmp_path, data, {"seg": "arch: hf:nowhere\nprotocol: {test_mode: whole}"})
    assert main(["run", str(suite)]) == 2
    assert f"{tmp_path / 'nowhere'} has no config.json" in capsys.readouterr().err


def test_hf_checkpoints_are_segbench_files_or_the_transformers_state_dict(tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    folder = hf_writers.write_hf_model(tmp_path / "seg", hf_writers.tiny_configs(3)["segformer"], seed=0)
    other = AutoModelForSemanticSegmentation.from_config(hf_writers.tiny_configs(3)["segformer"]).eval()
    torch.save(other.state_dict(), tmp_path / "fine_tuned.pth")  # e.g. fine-tuned elsewhere
    name = custom.register(f"hf:{folder}", tmp_path, {}, {"test_mode": "whole"}, "s.yaml:1: models.seg")
    model, report = load_model(name, tmp_path / "fine_tuned.pth", num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert report.complete and torch.equal(model(x), other(pixel_values=x).logits)


def test_user_models_sit_in_the_paper_tables_with_no_paper_number():
    import report_records as rr
    from segbench.report import papers
    from segbench.report.tables import DIFF

    mine = rr.eval_record("u1", "mine", "model.py:build_model", 41.0, dataset="ade20k")
    tables = {t.name: t for t in papers.paper_tables(rr.paper_records() + [mine])}
    frame = tables["segmenter_table3"].frame
    row = frame[frame[("model", "")] == "mine"].iloc[0]
    assert row[("mIoU (SS)", "ours")] == 41.0 and row[("mIoU (SS)", "paper")] == "no paper number"
    assert np.isnan(row[("mIoU (SS)", DIFF)])
    paper_row = frame[frame[("model", "")] == "seg_b16"].iloc[0]
    assert paper_row[("mIoU (SS)", "paper")] == 48.06  # the papers' rows keep their numbers


def test_a_factory_that_cannot_build_on_the_meta_device_is_built_for_real(project, data):
    (project / "model.py").write_text(MODEL.replace(  # reads a tensor's value: impossible on the meta device
        "    return TinySegNet(num_classes, width)",
        "    import torch\n    width = int(torch.tensor(float(width)).item())\n"
        "    return TinySegNet(num_classes, width)"))
    with pytest.raises(Exception, match="meta"):
        with torch.device("meta"):
            custom.create(custom.register("model.py:build_model", project, {}, {"test_mode": "whole"}, ""), 3)
    suite = load_suite(write_suite(project, data, {"mine": TINY}))  # no error: checked off the meta device
    assert create_model(suite.models["mine"].arch, num_classes=3).decoder.out_channels == 3


def test_hf_folder_weights_saved_in_bfloat16_load_as_float32_and_mean_std_need_a_source(tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    folder = tmp_path / "bf16"
    AutoModelForSemanticSegmentation.from_config(hf_writers.tiny_configs(3)["segformer"]).to(torch.bfloat16) \
        .save_pretrained(folder)  # no preprocessor_config.json either
    with pytest.raises(custom.CustomModelError, match=r"s.yaml:1: models.bf: preprocess.mean is needed"):
        create_model(custom.register(f"hf:{folder}", tmp_path, {}, {"test_mode": "whole"}, "s.yaml:1: models.bf"), 3)
    name = custom.register(f"hf:{folder}", tmp_path, {}, {"test_mode": "whole", "mean": [0, 0, 0],
                                                          "std": [1, 1, 1]}, "s.yaml:1: models.bf")
    model = create_model(name, num_classes=3)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.randn(1, 3, 32, 32)).dtype == torch.float32
    with torch.device("meta"):  # as profiling builds it
        assert {p.dtype for p in create_model(name, num_classes=3).parameters()} == {torch.float32}


def test_a_model_may_carry_a_model_info(project, data):
    (project / "model.py").write_text(MODEL.replace(
        '    info = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}',
        '    from segbench.models import ModelInfo\n'
        '    info = ModelInfo(name="tiny", family="mine", encoder="", decoder="", num_classes=3, patch_size=1,\n'
        '                     output_stride=4, crop_size=48, mean=(1, 2, 3), std=(4, 5, 6), test_stride=24)'))
    suite = load_suite(write_suite(project, data, {"mine": "arch: model.py:build_model"}))
    info = create_model(suite.models["mine"].arch, num_classes=3).info
    assert (info.mean, info.std, info.test_mode, info.crop_size, info.test_stride) == ((1, 2, 3), (4, 5, 6),
                                                                                       "slide", 48, 24)
    assert info.family == "custom" and info.name == suite.models["mine"].arch  # segbench's own fields
