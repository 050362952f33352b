import subprocess
import sys
from pathlib import Path

import pytest

from segbench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
name: t
datasets:
  syn: {kind: synthetic, options: {num_images: 4}}
models:
  a:
    arch: segmenter_micro_p8_linear
    train: {dataset: syn, recipe: scratch, iters: 2}
evaluate:
  - dataset: syn
    protocol: multi_scale
    scales: 1.0
"""


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_valid_suite_becomes_frozen_dataclasses(tmp_path):
    suite = load_suite(write(tmp_path, VALID))
    assert suite.models["a"].train.iters == 2
    assert suite.evaluate[0].scales == (1.0,)  # a scalar where a list is expected is a one-item list
    assert suite.datasets["syn"].options == {"num_images": 4}
    with pytest.raises(Exception):
        suite.name = "other"


def test_shipped_suites_are_valid():
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        load_suite(path)


@pytest.mark.parametrize("edit, message", [
    (("    train: {dataset: syn, recipe: scratch, iters: 2}", "    train: {dataset: syn, iters: two}"),
     r"suite.yaml:7: models.a.train.iters: expected an integer, got str 'two'"),
    (("    arch: segmenter_micro_p8_linear", "    arch: segmenter_micro_p8_linear\n    colour: red"),
     r"suite.yaml:7: models.a.colour: unknown key 'colour'"),
    (("    arch: segmenter_micro_p8_linear", "    arch: no_such_model"),
     r"suite.yaml:6: models.a.arch: unknown model 'no_such_model'"),
    (("  - dataset: syn", "  - dataset: other"),
     r"suite.yaml:9: evaluate\[0\].dataset: no dataset named 'other'"),
    (("    protocol: multi_scale", "    protocol: triple_scale"),
     r"suite.yaml:10: evaluate\[0\].protocol: unknown protocol 'triple_scale'"),
    (("name: t\n", ""), r"suite.yaml:1: missing required key 'name'"),
    (("  syn: {kind: synthetic, options: {num_images: 4}}", "  syn: {kind: imagenet}"),
     r"suite.yaml:3: datasets.syn.kind: unknown dataset kind 'imagenet'"),
    (("{num_images: 4}}", "{num_images: 4, colour: red}}"),
     r"suite.yaml:3: datasets.syn.options.colour: dataset 'synthetic': unknown option 'colour'; allowed: "),
    (("  syn: {kind: synthetic, options: {num_images: 4}}",
      "  syn:\n    kind: synthetic\n    options:\n      num_images: 4\n      seed: one"),
     r"suite.yaml:7: datasets.syn.options.seed: dataset 'synthetic': option 'seed': expected int, got 'one'"),
])
def test_bad_suites_name_the_line_and_field(tmp_path, edit, message):
    with pytest.raises(SuiteError, match=message):
        load_suite(write(tmp_path, VALID.replace(*edit)))


def test_missing_files_are_all_listed_with_their_lines(tmp_path):
    from segbench.suite import missing_files

    text = VALID.replace("    arch: segmenter_micro_p8_linear",
                         "    arch: segmenter_micro_p8_linear\n    checkpoint: /no/such.pth")
    text = text.replace("evaluate:", "  b: {arch: segmenter_micro_p8_linear, checkpoint: /no/other.pth}\nevaluate:")
    suite = load_suite(write(tmp_path, text))  # the schema is fine; the files are checked apart
    assert [m.split("suite.yaml:")[1] for m in missing_files(suite)] == [
        "7: models.a.checkpoint: file not found: /no/such.pth",
        "9: models.b.checkpoint: file not found: /no/other.pth"]


def test_environment_variables_expand_with_defaults(tmp_path, monkeypatch):
    text = VALID.replace("{kind: synthetic, options: {num_images: 4}}", "{kind: ade20k, root: '${DATA:-/d}/ade'}")
    monkeypatch.delenv("DATA", raising=False)
    assert load_suite(write(tmp_path, text)).datasets["syn"].root == "/d/ade"
    monkeypatch.setenv("DATA", "/mnt")
    assert load_suite(write(tmp_path, text)).datasets["syn"].root == "/mnt/ade"
    with pytest.raises(SuiteError, match=r"datasets.syn.root: environment variable NOPE is not set"):
        load_suite(write(tmp_path, text.replace("${DATA:-/d}", "${NOPE}")))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match=r"suite.yaml:\d+: not valid YAML"):
        load_suite(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "absent.yaml")


def test_cli_reports_a_bad_suite_in_one_line_without_traceback(tmp_path):
    path = write(tmp_path, VALID.replace("iters: 2", "iters: -x-"))
    out = subprocess.run([sys.executable, "-m", "segbench", "run", str(path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "models.a.train.iters: expected an integer" in lines[0]
