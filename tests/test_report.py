"""The report: paper-shaped tables (ours beside the paper's, Δ), generic tables, plots,
Markdown / CSV / LaTeX outputs, prediction previews; all from records only."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import report_records as rr
from segbench import report
from segbench.data.datasets import build_dataset
from segbench.report import papers, tables
from segbench.report.document import Section, latex_document
from segbench.report.tables import DIFF, Table, latex_escape, to_latex
from segbench.runner import plan, run_suite
from segbench.suite import SuiteError, load_suite


def by_name(found: list[Table]) -> dict[str, Table]:
    return {t.name: t for t in found}


def row_of(table: Table, model: str) -> pd.Series:
    frame = table.frame
    return frame[frame[("model", "")] == model].iloc[0]


def test_paper_tables_put_ours_beside_the_papers_number_and_the_difference():
    found = by_name(papers.paper_tables(rr.paper_records()))
    assert set(found) == {"segmenter_table3", "segmenter_table4", "segmenter_table6", "setr_table2", "setr_table4",
                          "setr_table6", "segformer_table1a", "segformer_table2"}  # Table 6: the Cityscapes SS record
    t3 = row_of(found["segmenter_table3"], "seg_b16")
    assert t3[("mIoU (SS)", "ours")] == 47.5 and t3[("mIoU (SS)", "paper")] == 48.06
    assert t3[("mIoU (SS)", DIFF)] == pytest.approx(47.5 - 48.06)
    assert t3[("Im/sec", "ours")] == pytest.approx(1000 / 12) and t3[("Im/sec", "paper")] == 92  # profile at 512x512
    assert t3[("ImNet acc.", "paper")] == 86.0  # paper-only context column
    t4 = row_of(found["segmenter_table4"], "seg_b16")
    assert (t4[("Small", "ours")], t4[("Small", "paper")]) == (37.5, 39.57)  # size.small.mIoU of the SS record
    assert ("mIoU (MS)", "ours") not in found["setr_table4"].frame.columns  # no MS record of setr_l16_mla
    setr = row_of(found["setr_table2"], "setr")
    assert setr[("mIoU 80k", "ours")] == 79.0 and setr[("mIoU 40k", "paper")] == 78.39
    # SETR and SegFormer both have a "Table 2": each table reads its own paper's numbers
    sf2 = row_of(found["segformer_table2"], "sf_b0")
    assert sf2[("Params (M)", "paper")] == 3.8 and sf2[("ADE20K Flops (G)", "ours")] == pytest.approx(8.1)
    assert sf2[("ADE20K FPS", "paper")] == 50.5
    assert any("does not say single- or multi-scale" in note for note in found["segformer_table2"].notes)
    sf1 = found["segformer_table1a"]
    assert row_of(sf1, "sf_b0")[("Encoder (M)", "paper")] == 3.4
    # costs per dataset come only for datasets the model was evaluated on
    assert not any(group.startswith(("Cityscapes", "COCO")) for group, _ in sf1.frame.columns)


def test_paper_table_costs_come_from_the_profile_at_the_papers_input_size():
    records = rr.paper_records() + [rr.profile_record("p-seg-1024", "seg_b16", "segmenter_b16_linear", (1024, 1024),
                                                      latency=50.0)]
    t3 = row_of(by_name(papers.paper_tables(records))["segmenter_table3"], "seg_b16")
    assert t3[("Im/sec", "ours")] == pytest.approx(1000 / 12)  # the 512x512 record, not the later 1024 one
    without = [r for r in records if r["job_id"] != "p-seg"]
    t3 = by_name(papers.paper_tables(without))["segmenter_table3"]
    assert ("Im/sec", "ours") not in t3.frame.columns  # never another size's number: no measured Im/sec at all
    assert ("mIoU (SS)", "ours") in t3.frame.columns


def test_micro_models_get_no_paper_tables_but_the_generic_ones():
    records = [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0),
               rr.profile_record("p1", "m1", "segmenter_micro_p8_linear")]
    assert papers.paper_tables(records) == []
    row = tables.accuracy_table(records).iloc[0]
    assert (row["mIoU"], row["CI low"], row["CI high"], row["worst 10 %"], row["eval images/s"]) == (
        40.0, 38.5, 41.4, 20.0, 90.0)
    cost = tables.accuracy_cost_table(records).iloc[0]
    assert (cost["mIoU"], cost["profiled at"], cost["params (M)"], cost["GMACs"], cost["latency (ms)"]) == (
        40.0, "128×128", 3.8, 2.5, 10.0)
    assert tables.accuracy_cost_table(records[:1]).empty  # no profile record: no cost table


def test_generic_tables_from_eval_profile_and_train_records():
    records = [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0),
               rr.eval_record("e2", "m1", "segmenter_micro_p8_linear", 42.0, protocol="multi_scale"),
               rr.profile_record("p1", "m1", "segmenter_micro_p8_linear", latency=10.0, spread=1.5),
               rr.train_record("t1", "m1", "segmenter_micro_p8_linear"), rr.error_record("x", "m2")]
    per_class = tables.per_class_tables(records)["synthetic/val"]
    assert list(per_class["class"]) == list(rr.TRICKY_CLASSES)
    assert list(per_class.columns[1:]) == ["m1 (single_scale)", "m1 (multi_scale)"]
    sizes = tables.size_table(records)
    assert list(sizes.iloc[0][["small mIoU", "medium mIoU", "large mIoU"]]) == [30.0, 38.0, 44.0]
    profile = tables.profile_table(records).iloc[0]
    assert (profile["latency (ms)"], profile["p10 (ms)"], profile["p90 (ms)"]) == (10.0, 8.5, 11.5)
    assert profile["device"] == "cpu" and profile["GMACs (fvcore)"] == pytest.approx(2.425)
    assert tables.training_table(records).iloc[0]["final loss"] == 0.9


def test_render_writes_every_format_from_the_records(tmp_path):
    results = tmp_path / "results"
    records = [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0),
               rr.eval_record("e2", "m2", "segformer_micro", 50.0),
               rr.profile_record("p1", "m1", "segmenter_micro_p8_linear"),
               rr.profile_record("p2", "m2", "segformer_micro", latency=4.0, macs=3e8),
               rr.error_record("x1", "m3"), *rr.paper_records()]
    rr.with_previews(results, records[0])
    rr.with_previews(results, records[1])
    rr.write(results, records)
    written = {p.name for p in report.render(results, tmp_path / "out")}
    assert {"report.md", "report.tex", "index.html", "accuracy.csv", "accuracy.tex", "accuracy_cost.csv", "efficiency.csv",
            "sizes.csv", "per_class_synthetic_val.csv", "segmenter_table3.tex", "segformer_table2.csv",
            "miou.png", "miou_vs_macs_synthetic_val.png", "miou_vs_fps_synthetic_val.png", "sizes.png",
            "predictions.png"} <= written
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- m1 at 128×128: fvcore skipped aten::softmax (2); peak memory = process peak rss" in md
    assert "| seg_b16 | segmenter_b16_linear | 83.33 | 92.00 | -8.67 |" in md  # ours, paper, Δ
    assert "## Failed jobs" in md and "out of memory" in md
    csv = pd.read_csv(tmp_path / "out" / "segmenter_table3.csv")
    assert list(csv.columns)[:5] == ["model", "arch", "Im/sec ours", "Im/sec paper", "Im/sec Δ"]
    assert csv["Im/sec ours"][0] == pytest.approx(1000 / 12)  # full precision, not the 2 decimals shown
    with Image.open(tmp_path / "out" / "predictions.png") as grid:
        assert grid.size[0] > grid.size[1]  # 2 rows x 4 columns (image, ground truth, two models)


def test_latex_is_escaped_balanced_and_ascii():
    frame = pd.DataFrame({"class": list(rr.TRICKY_CLASSES) + ["a^b~c\\d$"], "IoU": [1.0] * 7})
    table = Table("per_class", "Per-class IoU, x_y", frame, "IoU (%) — 95 % CI ≥ 0", ["note & more"])
    tex = to_latex(table)
    for escaped in (r"person\_rider", r"\#", r"100\%", r"car \& truck", r"\{brace\}", r"a\textasciicircum{}b",
                    r"\textasciitilde{}c\textbackslash{}d\$", r"x\_y", r"$\geq$", "---", r"note \& more"):
        assert escaped in tex, escaped
    assert_balanced(tex)
    assert tex.isascii()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{tabular}{lr}" in tex
    assert latex_escape("Δ mIoU") == r"$\Delta$ mIoU" and latex_escape("é") == "e"


def test_latex_groups_paper_columns_and_long_tables_become_longtables():
    paper = by_name(papers.paper_tables(rr.paper_records()))["segmenter_table4"]
    tex = to_latex(paper)
    assert r"\multicolumn{3}{c}{Small}" in tex and r"\cmidrule(lr){3-5}" in tex and r"$\Delta$" in tex
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" in tex  # shrunk when too wide
    long = Table("long", "Long", pd.DataFrame({"class": [f"c_{i}" for i in range(60)], "IoU": np.arange(60.0)}))
    tex = to_latex(long)
    assert r"\begin{longtable}{lr}" in tex and r"\endhead" in tex
    assert_balanced(tex)
    document = latex_document("t", "i", [Section("s", "x_%", [paper, long])])
    assert document.count(r"\begin{document}") == 1 and document.rstrip().endswith(r"\end{document}")
    assert_balanced(document)


def assert_balanced(tex: str) -> None:
    """Environments open and close in order; braces (other than escaped ones) match."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, name
    assert not stack
    depth = 0
    for char in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine (apt-get install texlive-latex-base "
                                                              "texlive-latex-recommended)")
def test_latex_report_compiles(tmp_path):
    results = tmp_path / "results"
    records = [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0),
               rr.profile_record("p1", "m1", "segmenter_micro_p8_linear"), *rr.paper_records()]
    rr.with_previews(results, records[0])
    rr.write(results, records)
    out = tmp_path / "out"
    report.render(results, out)
    for tex in ("report.tex",):
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex], cwd=out,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]
        assert (out / "report.pdf").stat().st_size > 10_000


SUITE = """\
name: previews
device: cpu
results: {results}
datasets:
  syn: {{kind: synthetic, options: {{num_images: 3, image_size: 64}}}}
models:
  p32: {{arch: segmenter_micro_p32_linear, weights: random}}
evaluate:
  - {{dataset: syn, protocol: single_scale, previews: {previews}, bootstrap: 0, size_breakdown: false}}
"""


def make_suite(tmp_path, previews: int):
    path = tmp_path / f"suite{previews}.yaml"
    path.write_text(SUITE.format(results=tmp_path / "results", previews=previews))
    return load_suite(path)


def test_previews_are_opt_in_and_leave_other_job_ids_alone(tmp_path):
    off, on = plan(make_suite(tmp_path, 0))[0], plan(make_suite(tmp_path, 2))[0]
    assert "previews" not in off.identity  # ids of suites without previews are unchanged
    assert on.config["eval"]["previews"] == 2 and on.id != off.id
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.format(results=tmp_path, previews=-1))
    with pytest.raises(SuiteError, match=r"evaluate\[0\]\.previews"):
        load_suite(bad)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SUITE.format(results=tmp_path, previews=0).replace("evaluate:", "corruption:").replace(
        "previews: 0", "previews: 2, corruptions: [fog], severities: [1]"))
    with pytest.raises(SuiteError, match=r"corruption\[0\]\.previews"):
        load_suite(sweep)


def test_eval_job_saves_its_first_predictions_for_the_overlays(tmp_path):
    suite = make_suite(tmp_path, 2)
    (record,) = run_suite(suite)
    assert record["status"] == "ok", record.get("error")
    previews = record["previews"]
    dataset = build_dataset("synthetic", "val", None, num_images=3, image_size=64)
    assert [p["name"] for p in previews] == [dataset[0].name, dataset[1].name]  # the first two images
    results = tmp_path / "results"
    with Image.open(results / previews[0]["prediction"]) as pred, Image.open(results / previews[0]["label"]) as label:
        assert pred.mode == "P" and pred.size == (64, 64) and label.mode == "P"
        assert np.asarray(pred).max() < 9  # class ids, coloured by the palette
    out = tmp_path / "report"
    report.render(results, out)
    assert (out / "predictions.png").is_file() and "Qualitative results" in (out / "report.md").read_text()


def test_report_cli_names_the_index_and_refuses_a_folder_without_records(tmp_path, capsys):
    from segbench.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no records in this folder" in capsys.readouterr().err
    rr.write(tmp_path / "results", [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0)])
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert f"report: {tmp_path / 'out' / 'index.html'}" in capsys.readouterr().err.replace("\n", "")


def test_report_lists_records_it_cannot_use_in_the_report_and_on_stderr(tmp_path, capsys):
    import json

    from segbench.cli import main

    results = rr.write(tmp_path / "results", [rr.eval_record("e1", "m1", "segmenter_micro_p8_linear", 40.0)])
    no_kind = rr.eval_record("e2", "m2", "fcn_micro", 30.0)
    del no_kind["kind"]
    no_metrics = rr.eval_record("e3", "m3", "fcn_micro", 30.0)
    del no_metrics["metrics"]
    (results / "e2.json").write_text(json.dumps(no_kind))
    (results / "e3.json").write_text(json.dumps(no_metrics))
    (results / "e4.json").write_text('{"schema": 1, "job_id": "e4", "ki')
    assert main(["report", str(results), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"segbench report: skipped {results / 'e2.json'}: not a complete record: no `kind`" in err
    assert f"skipped {results / 'e3.json'}: not a complete record: no `metrics`" in err
    assert f"skipped {results / 'e4.json'}: not valid JSON" in err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Skipped records" in text and "3 record files could not be used" in text
    assert all(f"{results / name}" in text for name in ("e2.json", "e3.json", "e4.json"))
    assert "m1" in text and "m2" not in text.split("Skipped records")[0]
