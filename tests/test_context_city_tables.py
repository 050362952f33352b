"""Segmenter Tables 7 (Pascal Context) and 8 (Cityscapes), SETR Tables 5 (Pascal Context)
and 6 (Cityscapes), rendered from records only: ours beside the paper's number and Δ."""
from __future__ import annotations

import pytest

import report_records as rr
from segbench import report
from segbench.report import papers
from segbench.report.tables import DIFF

CONTEXT = tuple(f"c{i}" for i in range(60))


def records() -> list[dict]:
    ms, ss = "multi_scale", "single_scale"
    return [
        rr.eval_record("a1", "seg_l16", "segmenter_l16_mask", 58.2, dataset="pascal_context", protocol=ss,
                       classes=CONTEXT),
        rr.eval_record("a2", "seg_l16", "segmenter_l16_mask", 59.5, dataset="pascal_context", protocol=ms,
                       classes=CONTEXT),
        rr.eval_record("b1", "setr_mla", "setr_l16_mla", 54.0, dataset="pascal_context", protocol=ss, classes=CONTEXT),
        rr.eval_record("b2", "setr_mla", "setr_l16_mla", 55.0, dataset="pascal_context", protocol=ms, classes=CONTEXT),
        rr.eval_record("c1", "seg_city", "segmenter_l16_mask1_768", 81.0, dataset="cityscapes", protocol=ms),
        rr.eval_record("d1", "setr_pup", "setr_l16_pup", 79.0, dataset="cityscapes", protocol=ss),
        rr.eval_record("d2", "setr_pup", "setr_l16_pup", 82.5, dataset="cityscapes", protocol=ms),
        # another dataset's record of the same model must not fill these tables
        rr.eval_record("e1", "seg_l16", "segmenter_l16_mask", 12.0, dataset="ade20k", protocol=ms),
    ]


def table(found, name):
    return next(t for t in found if t.name == name).frame


def row(frame, model):
    return frame[frame[("model", "")] == model].iloc[0]


def test_the_four_tables_render_from_records():
    found = papers.paper_tables(records())
    names = {t.name for t in found}
    assert {"segmenter_table7", "segmenter_table8", "setr_table5", "setr_table6"} <= names

    t7 = table(found, "segmenter_table7")
    seg, setr = row(t7, "seg_l16"), row(t7, "setr_mla")
    assert seg[("mIoU (MS)", "ours")] == 59.5 and seg[("mIoU (MS)", "paper")] == 59.0  # Table 7: Seg-L-Mask/16
    assert seg[("mIoU (MS)", DIFF)] == pytest.approx(0.5)
    assert setr[("mIoU (MS)", "paper")] == 55.8  # SETR-L MLA as Segmenter quotes it

    t8 = table(found, "segmenter_table8")
    assert row(t8, "seg_city")[("mIoU (MS)", "paper")] == 81.3
    assert row(t8, "setr_pup")[("mIoU (MS)", "paper")] == 82.2

    t5 = row(table(found, "setr_table5"), "setr_mla")
    assert (t5[("mIoU (SS)", "ours")], t5[("mIoU (SS)", "paper")]) == (54.0, 54.87)
    assert (t5[("mIoU (MS)", "ours")], t5[("mIoU (MS)", "paper")]) == (55.0, 55.83)
    assert "seg_l16" not in set(table(found, "setr_table5")[("model", "")])  # SETR's table lists SETR only

    t6 = row(table(found, "setr_table6"), "setr_pup")
    assert (t6[("mIoU 80k (SS)", "ours")], t6[("mIoU 80k (SS)", "paper")]) == (79.0, 79.34)
    assert t6[("mIoU 80k (MS)", DIFF)] == pytest.approx(82.5 - 82.15)
    assert t6[("mIoU 40k (SS)", "paper")] == 78.39 and ("mIoU 40k (SS)", "ours") not in t6.index  # paper only


def test_what_no_record_measures_is_left_out():
    only_ss = [r for r in records() if r["job_id"] in ("d1", "b2")]
    t6 = table(papers.paper_tables(only_ss), "setr_table6")
    assert ("mIoU 80k (MS)", "ours") not in t6.columns and ("mIoU 80k (SS)", "ours") in t6.columns
    assert all(t.name != "segmenter_table8" for t in papers.paper_tables(only_ss))  # no MS record: no Table 8
    t5 = table(papers.paper_tables(only_ss), "setr_table5")
    assert ("mIoU (SS)", "ours") not in t5.columns and row(t5, "setr_mla")[("mIoU (MS)", "ours")] == 55.0


def test_the_report_writes_them(tmp_path):
    rr.write(tmp_path / "results", records())
    written = {p.name for p in report.render(tmp_path / "results", tmp_path / "out")}
    assert {f"{name}.csv" for name in ("segmenter_table7", "segmenter_table8", "setr_table5", "setr_table6")} <= written
    assert "Segmenter Table 7" in (tmp_path / "out" / "report.md").read_text()
