"""Multiply-accumulates counted by ``segbench.profiling`` (FlopCounterMode / 2, meta device)
against the SegFormer paper's GFLOPs (segbench/reference/segformer.yaml), within 1 %.

What the paper's numbers count, found by recounting (not assumed):

- The paper's tool is mmcv's module counter plus attention (NVlabs/SegFormer
  tools/get_flops.py: ``get_model_complexity_info`` + ``sra_flops`` per block). It counts
  multiply-adds of convolutions and linears like FlopCounterMode, plus element-wise work
  (norms, ReLU, conv biases) that FlopCounterMode leaves out: 0.1-0.5 % more on SegFormer.
- Input sizes: Table 1a's ADE20K column at 512 x 512 except B5 at 640 x 640 (183.3: the B5
  ADE20K model is trained and tested at 640; B5 at 512 is COCO-Stuff's 111.6); Cityscapes
  at 1024 x 2048 (whole image); Table 2's B0 "short side" rows at s x 2s.
- Class count: Table 1a's Cityscapes column was computed with the 150-class ADE20K head,
  not Cityscapes' 19 classes. With 19 classes our count is 1.1-3.6 % below every B0-B4
  entry (B0: 120.96 vs 125.5); the 131 extra output channels of ``linear_pred`` at 1/4
  resolution close the gap to 0.2 % for all six sizes, and mmcv's counter (+ attention)
  then gives the printed numbers to 0.1 % (``test_paper_counter_reproduces_cityscapes``).
  Table 2 copies B0's and B4's Cityscapes numbers from Table 1a but prints 1447.6 for B5
  (Table 1a: 1460.4): that one, and the B0 short-side rows, count 19 classes. The CNN
  Cityscapes rows of Table 2 (mmseg models) fit only with 150 classes for MobileNetV2
  (19 classes: 1.3 % / 2.0 % under); the ResNet-101 rows fit best with 19 (0.1 %; 150
  classes: within 0.3 %).
- Table 3's "decoder GFLOPs" are at 512 x 512 for B5 as well (42.1, the same as B2's;
  at 640 the decoder costs 65.8 G). Its 1.8 for ViT-L + MLA (SETR-MLA) is the four head
  streams alone (1.81 G at 1/16); the 3x3 classifier at 1/4 adds 11.3 G. Its MiT + MLA
  numbers (87.7 G, 4.2 M) are not reproduced by our MiT + MLA composite (expected failures,
  with the measured values, in tests/test_composites.py).
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from segbench.models import create_model
from segbench.profiling import count_macs, parse_size
from segbench.reference import reference_frame

REF = reference_frame()
SEGFORMER = REF[REF.paper.str.startswith("SegFormer")]
CLASSES = {"ade20k": 150, "coco_stuff": 171, "cityscapes": 19}
ADE_HEAD = 150

# Cityscapes rows counted with 19 classes; every other Cityscapes FLOPs row of Tables 1a / 2
# counts the ADE20K (150-class) head (module docstring).
CITYSCAPES_19 = {("2", "segformer_b5", "1024x2048"), ("2", "segformer_b0", "short side 768"),
                 ("2", "segformer_b0", "short side 640"), ("2", "segformer_b0", "short side 512"),
                 ("2", "fcn_r101_d8", "1024x2048"), ("2", "deeplabv3plus_r101_d8", "1024x2048")}


@lru_cache(maxsize=None)
def gmacs(name: str, height: int, width: int, num_classes: int, decoder_dim: int | None = None) -> tuple:
    """(total GMACs, {module: GMACs}) of the registered model, counted on the meta device."""
    kwargs = {"decoder_dim": decoder_dim} if decoder_dim else {}
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    total, rows, _ = count_macs(model, height, width)
    return total / 1e9, {row["name"]: row["macs"] / 1e9 for row in rows}


def off(measured: float, printed: float) -> float:
    return abs(measured - printed) / printed


def input_size(protocol: str | None, dataset: str) -> tuple[int, int]:
    if protocol and protocol.startswith("short side"):
        short = int(protocol.split()[-1])
        return short, 2 * short  # Cityscapes' 1:2 frames
    return parse_size(protocol) if protocol else {"ade20k": (512, 512), "cityscapes": (1024, 2048)}[dataset]


def paper_classes(table: str, model: str, dataset: str, protocol: str | None) -> int:
    if dataset == "cityscapes" and (table, model, protocol or "1024x2048") not in CITYSCAPES_19:
        return ADE_HEAD
    return CLASSES[dataset]


def _gflops_rows(table: str):
    rows = SEGFORMER[(SEGFORMER.table == table) & (SEGFORMER.metric == "gflops")]
    protocol = lambda r: r.protocol if isinstance(r.protocol, str) else None  # noqa: E731 (pandas: NaN if absent)
    return [pytest.param(r.model, r.dataset, protocol(r), r.value, id=f"{r.model}-{r.dataset}-{protocol(r)}")
            for r in rows.itertuples() if not r.model[0].isupper()]  # registry names only


@pytest.mark.parametrize("model,dataset,protocol,paper", _gflops_rows("1a"))
def test_segformer_table1a(model, dataset, protocol, paper):
    height, width = input_size(protocol, dataset)
    ours = gmacs(model, height, width, paper_classes("1a", model, dataset, protocol))[0]
    assert off(ours, paper) < 0.01, (ours, paper)


@pytest.mark.parametrize("model,dataset,protocol,paper", _gflops_rows("2"))
def test_segformer_table2(model, dataset, protocol, paper):
    height, width = input_size(protocol, dataset)
    ours = gmacs(model, height, width, paper_classes("2", model, dataset, protocol))[0]
    assert off(ours, paper) < 0.01, (ours, paper)


def test_table1a_cityscapes_column_counts_150_classes():
    ours_19 = gmacs("segformer_b0", 1024, 2048, 19)[0]
    ours_150 = gmacs("segformer_b0", 1024, 2048, ADE_HEAD)[0]
    assert off(ours_19, 125.5) > 0.03  # Cityscapes' own head falls 3.6 % short of Table 1a's B0
    # the whole difference is linear_pred's 131 extra outputs (C = 256) at 1/4 of 1024 x 2048
    assert round((ours_150 - ours_19) * 1e9) == 256 * (ADE_HEAD - 19) * 256 * 512
    for size in ("b1", "b2", "b3", "b4"):
        paper = SEGFORMER[(SEGFORMER.table == "1a") & (SEGFORMER.model == f"segformer_{size}")
                          & (SEGFORMER.dataset == "cityscapes") & (SEGFORMER.metric == "gflops")].value.item()
        assert off(gmacs(f"segformer_{size}", 1024, 2048, 19)[0], paper) > 0.01, size


def test_paper_counter_reproduces_cityscapes():
    """mmcv's module counter (the paper's get_flops) plus attention's two matrix products
    (its sra_flops) give Table 1a's Cityscapes numbers with 150 classes and Table 2's B5
    number with 19 classes to 0.1 %."""
    pytest.importorskip("mmcv")
    from mmcv.cnn.utils.flops_counter import get_model_complexity_info
    from torch.utils.flop_counter import FlopCounterMode

    def paper_counter(name: str, num_classes: int) -> float:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, 1024, 2048, device="meta"))
        attention = sum(flops for op, flops in counter.get_flop_counts()["Global"].items()
                        if "attention" in str(op) or "bmm" in str(op)) / 2  # SDPA (bmm after meta decomposition)
        modules, _ = get_model_complexity_info(model, (3, 1024, 2048), print_per_layer_stat=False, as_strings=False)
        return (modules + attention) / 1e9

    assert off(paper_counter("segformer_b0", ADE_HEAD), 125.5) < 0.001
    assert off(paper_counter("segformer_b5", ADE_HEAD), 1460.4) < 0.001
    assert off(paper_counter("segformer_b5", 19), 1447.6) < 0.001
    assert off(paper_counter("segformer_b0", 19), 125.5) > 0.03


@pytest.mark.parametrize("width", [256, 512, 768, 1024, 2048])
def test_segformer_table1b_decoder_width(width):
    paper = SEGFORMER[(SEGFORMER.table == "1b") & (SEGFORMER.model == f"segformer_b2 (C={width})")
                      & (SEGFORMER.metric == "gflops")].value.item()
    assert off(gmacs("segformer_b2", 512, 512, ADE_HEAD, width)[0], paper) < 0.01


@pytest.mark.parametrize("model,dataset,protocol,paper", _gflops_rows("1d"))
def test_segformer_table1d(model, dataset, protocol, paper):
    ours = gmacs(model, *input_size(protocol, dataset), CLASSES[dataset])[0]
    assert off(ours, paper) < 0.01, (ours, paper)


def _decoder_gflops(model: str) -> float:
    rows = SEGFORMER[(SEGFORMER.table == "3") & (SEGFORMER.model == model) & (SEGFORMER.metric == "decoder_gflops")]
    return rows.value.item()


@pytest.mark.parametrize("model", ["segformer_b2", "segformer_b5_640"])
def test_segformer_table3_mlp_decoder(model):
    decoder = gmacs(model, 512, 512, ADE_HEAD)[1]["decoder"]
    assert off(decoder, _decoder_gflops(model)) < 0.01
    if model == "segformer_b5_640":  # counted at 512 although this model runs at 640
        assert off(gmacs(model, 640, 640, ADE_HEAD)[1]["decoder"], _decoder_gflops(model)) > 0.5


def test_segformer_table3_vit_decoders():
    # ViT-L + MLP: 0.62 G at 1/16 (C = 128); the paper prints one decimal
    assert round(gmacs("vit_l16_mlp", 512, 512, ADE_HEAD)[1]["decoder"], 1) == _decoder_gflops("vit_l16_mlp")
    # ViT-L + MLA: the paper's 1.8 is the head's four streams; the classifier at 1/4 is left out
    modules = gmacs("setr_l16_mla", 512, 512, ADE_HEAD)[1]
    assert round(modules["decoder.mlahead"], 1) == _decoder_gflops("setr_l16_mla")
    assert modules["decoder.cls"] > 10 and off(modules["decoder"], _decoder_gflops("setr_l16_mla")) > 5
