"""Parameter counts against the papers' tables (segbench/reference/*.yaml).

What each paper counts, found by recounting (not assumed):

- SETR Table 2 (#Params) counts the ADE20K configuration of the official code: 150
  classes, crop 512 (position embeddings for a 32 x 32 grid), the auxiliary heads, and the
  ``conv_seg`` layer (512 -> classes, 1x1) that mmseg's BaseDecodeHead gives every head
  although SETR's heads never call it. segbench leaves that unused layer out, so the test
  adds it back; all nine rows then agree to the paper's two decimals.
- Segmenter Table 1 gives encoder sizes in whole millions. Ti/S/B/B-dagger match after
  rounding (encoder at crop 512, without the ImageNet classifier the official encoder
  carries). ViT-L's 307M is the ViT paper's figure for ViT-Large (Dosovitskiy et al.,
  Table 1); no count of ViT-L/16 gives it (304.1M here), and the test holds it to 1 %.
- The official README's whole-model sizes (whole millions) include that unused ImageNet
  classifier (``encoder.head``, and ``head_dist`` for DeiT): Seg-T-Mask/16, Seg-B/8,
  Seg-L-Mask/16 at 640 and the Cityscapes Seg-L-Mask/16 match after rounding. The other
  five follow from no count we could find (with or without that classifier, 150 or 60
  classes); they are marked as expected failures with the measured numbers (strict: a
  future match fails the mark).
"""
from __future__ import annotations

import pytest
import torch

from segbench.models import create_model, is_model
from segbench.reference import reference_frame

REF = reference_frame()


def _count(name: str, num_classes: int = 150, **kw) -> dict[str, int]:
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kw)
    count = lambda prefix: sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))
    dim = model.encoder.cls_token.shape[-1]
    distilled = getattr(model.encoder, "dist_token", None) is not None
    return {"total": count(""), "encoder": count("encoder."), "num_aux": len(getattr(model, "aux_heads", ())),
            "imagenet_head": (dim * 1000 + 1000) * (2 if distilled else 1)}


def _rows(paper: str, table: str, metric: str):
    rows = REF[(REF.paper.str.startswith(paper)) & (REF.table == table) & (REF.metric == metric)]
    assert len(rows), f"no reference rows for {paper} table {table} {metric}"
    return [(r.model, r.value) for r in rows.itertuples() if is_model(r.model)]  # not free labels ("FCN (R-101)")


@pytest.mark.parametrize("model,paper_m", _rows("SETR", "2", "params_m"))
def test_setr_table2_params(model, paper_m):
    counts = _count(model)
    unused_conv_seg = (1 + counts["num_aux"]) * (512 * 150 + 150)  # mmseg BaseDecodeHead.conv_seg per head
    ours_m = counts["total"] / 1e6
    assert abs(ours_m - paper_m) / paper_m < 0.01, (model, ours_m, paper_m)
    assert (counts["total"] + unused_conv_seg) / 1e6 == pytest.approx(paper_m, abs=0.005), (model, ours_m, paper_m)


@pytest.mark.parametrize("model,paper_m", _rows("Segmenter", "1", "encoder_params_m"))
def test_segmenter_table1_encoder_params(model, paper_m):
    ours_m = _count(model)["encoder"] / 1e6
    if model == "segmenter_l16_linear":  # the ViT paper's 307M: see the module docstring
        assert abs(ours_m - paper_m) / paper_m < 0.01, ours_m
    else:
        assert round(ours_m) == paper_m, ours_m


README_UNEXPLAINED = {  # measured with the ImageNet classifier (without it)
    ("segmenter_s16_mask", "ade20k"): "26.4M (26.0M) vs 27M",
    ("segmenter_b16_mask", "ade20k"): "103.3M (102.5M) vs 106M",
    ("segmenter_deit_b16_mask", "ade20k"): "104.0M (102.5M) vs 106M",
    ("segmenter_deit_b16_linear", "ade20k"): "88.1M (86.6M) vs 87M",
    ("segmenter_l16_mask", "pascal_context"): "333.4M (332.4M) at crop 480, 60 classes vs 334M",
}


@pytest.mark.parametrize("model,dataset,paper_m", [
    pytest.param(r.model, r.dataset, r.value, marks=[pytest.mark.xfail(
        reason=f"README size not reproduced: {README_UNEXPLAINED[r.model, r.dataset]}", strict=True)]
        if (r.model, r.dataset) in README_UNEXPLAINED else [])
    for r in REF[(REF.table == "README") & (REF.metric == "params_m")].itertuples()])
def test_segmenter_readme_params(model, dataset, paper_m):
    num_classes = {"ade20k": 150, "pascal_context": 60, "cityscapes": 19}[dataset]
    crop = {"pascal_context": 480}.get(dataset)
    counts = _count(model, num_classes, **({"crop_size": crop} if crop else {}))
    assert round((counts["total"] + counts["imagenet_head"]) / 1e6) == paper_m
