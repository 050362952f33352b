"""The inference fast paths compute what the plain paths and the reference libraries
compute: SegFormer's fused decoder against its reference path (and, through
tests/test_hf_parity.py, against HF transformers), our ViT encoders against timm's
VisionTransformer with the same weights, fused attention everywhere, channels-last token
maps without copies, windows batched across scales, and data-loading workers."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from segbench.bench import randomize_statistics
from segbench.data.datasets import Synthetic
from segbench.engine.evaluate import evaluate, standard_evaluators
from segbench.engine.inference import Protocol, inference_model, predict
from segbench.engine.protocols import paper_protocol
from segbench.models import create_model, reference_paths
from segbench.models.segformer import AllMLPDecoder
from segbench.models.segmenter import map_to_tokens, tokens_to_map
from segbench.profiling import count_macs

TOLERANCE = 1e-4  # max abs logit difference allowed between a fast path and its reference


def randomize(model: nn.Module) -> nn.Module:
    """Random norm statistics and biases (every term of the fused algebra matters) and a
    classifier scaled up to logits of order one; eval mode."""
    torch.manual_seed(0)
    randomize_statistics(model)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "linear_pred.weight" in name:
                tensor.mul_(10)
    return model


def fast_and_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        fast = model(x)
        with reference_paths(model):
            reference = model(x)
    return fast, reference


@pytest.mark.parametrize("name, size", [("segformer_micro", (70, 94)), ("segformer_micro", (64, 64)),
                                        ("segformer_b0", (96, 160))])
def test_fused_segformer_decoder_equals_the_reference_path(name, size):
    model = randomize(create_model(name, num_classes=19))
    fast, reference = fast_and_reference(model, torch.randn(2, 3, *size))
    assert reference.std() > 0.3  # logits of order one: a 1e-4 agreement means something
    assert (fast - reference).abs().max() < TOLERANCE


@pytest.mark.parametrize("sizes", [[(16, 16)] * 4, [(32, 48), (16, 24), (8, 12), (4, 6)]])
def test_fused_decoder_on_equal_maps_and_on_maps_with_fewer_pixels_than_channels(sizes):
    # equal sizes: nothing upsampled (SegFormer Table 3's ViT-L + MLP); 4 x 6 maps with 96
    # channels: the per-stage linears run in turn instead of composed
    channels = (16, 32, 64, 96)
    decoder = randomize(AllMLPDecoder(channels, num_classes=7, dim=48))
    features = [torch.randn(2, c, *hw) for c, hw in zip(channels, sizes)]
    fast, reference = fast_and_reference(decoder, features)
    assert reference.std() > 0.3 and (fast - reference).abs().max() < TOLERANCE


def test_fused_decoder_runs_in_eval_mode_only_and_reference_paths_restores_it():
    model = randomize(create_model("segformer_micro", num_classes=9))
    calls = []
    model.decoder.linear_fuse.register_forward_hook(lambda *_: calls.append(model.training))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()(x)
        assert calls == []  # the fused path never calls linear_fuse
        with reference_paths(model):
            model(x)
        assert calls == [False] and model.decoder.fast_path
        model.train()(x)  # training: the architecture as written (batch statistics, dropout)
    assert calls == [False, True]


def test_macs_count_the_architecture_while_the_fast_path_does_less_work():
    with torch.device("meta"):
        model = create_model("segformer_b2", num_classes=150)
    architecture = count_macs(model, 512, 512)[0]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.empty(1, 3, 512, 512, device="meta"))
    executed = counter.get_total_flops() // 2
    assert abs(architecture / 1e9 - 62.4) / 62.4 < 0.01  # SegFormer Table 1: 62.4 GFLOPs
    assert executed < 0.45 * architecture  # the fused decoder skips the 768 x 3072 product at 1/4
    assert model.decoder.fast_path


def test_token_maps_are_channels_last_views_and_convolutions_keep_them():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    for batch in (1, 2):
        tokens = torch.randn(batch, 6 * 10, 8)
        grid = tokens_to_map(tokens, (6, 10))
        assert grid.data_ptr() == tokens.data_ptr() and grid.is_contiguous(memory_format=torch.channels_last)
        out = conv(grid)
        assert out.is_contiguous(memory_format=torch.channels_last)
        back = map_to_tokens(out)
        assert back.is_contiguous() and back.data_ptr() == out.data_ptr()  # a view, no copy
        torch.testing.assert_close(out, conv(grid.contiguous()))


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name, attention_layers", [("segmenter_micro_p8_mask", 4 + 2), ("setr_micro_p16_pup", 4),
                                                    ("segformer_micro", 4)])
def test_attention_is_fused_everywhere(name, attention_layers):
    model = create_model(name, num_classes=9).eval()
    assert all(m.fused_attn for m in model.modules() if isinstance(m, timm.models.vision_transformer.Attention))
    with OpNames() as ops, torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    fused = [n for n in ops.names if "scaled_dot_product" in n]
    assert len(fused) == attention_layers  # encoder blocks (+ the mask transformer's)
    assert not any("softmax" in n for n in ops.names)  # no attention computed by hand


@pytest.mark.parametrize("name, eps, final_norm", [("segmenter_micro_p8_linear", 1e-5, True),
                                                   ("setr_micro_p16_naive", 1e-6, False)])
def test_vit_encoders_equal_timm_with_the_same_weights(name, eps, final_norm):
    model = randomize(create_model(name, num_classes=9))
    encoder = model.encoder
    dim, heads = encoder.blocks[0].attn.qkv.in_features, encoder.blocks[0].attn.num_heads
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=128, patch_size=encoder.patch_size, embed_dim=dim, depth=len(encoder.blocks), num_heads=heads,
        num_classes=0, global_pool="", norm_layer=partial(nn.LayerNorm, eps=eps), final_norm=final_norm).eval()
    reference.load_state_dict(encoder.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 128)  # timm's size (it would resample position embeddings bicubically)
    with torch.inference_mode():
        timm_tokens = reference.forward_features(x)
        ours = encoder(x) if final_norm else encoder.tokens(x)[0][-1]
    if not final_norm:
        timm_tokens = timm_tokens[:, 1:]  # SETR's maps drop the cls token
    assert (ours - timm_tokens).abs().max() < TOLERANCE


class TinyConvNet(nn.Module):
    """Stride-2 logits; a window's output depends on where it lies (zero padding)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.info = create_model("segmenter_micro_p8_linear", num_classes=5).info
        self.inference_modes = []

    def forward(self, x):
        self.inference_modes.append(torch.is_inference_mode_enabled())
        return self.conv(x)


def test_windows_batched_across_scales_and_flips_equal_one_window_at_a_time():
    model = TinyConvNet()
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    # ratio 0.5 gives a 25 x 35 view, smaller than the window: crops of another size
    protocol = Protocol(mode="slide", window=32, stride=20, scales=(0.5, 1.0, 1.5), flip=True)
    one = predict(model, img, replace(protocol, batch_size=1), 5)
    calls_one = len(model.inference_modes)
    many = predict(model, img, replace(protocol, batch_size=16), 5)
    assert len(model.inference_modes) - calls_one < calls_one / 3  # far fewer forward passes
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
    assert all(model.inference_modes)  # predict runs under torch.inference_mode


class LayoutConvNet(TinyConvNet):
    """TinyConvNet's logits in a chosen memory layout."""

    def __init__(self, layout):
        super().__init__()
        self.layout = layout

    def forward(self, x):
        return super().forward(x).contiguous(memory_format=self.layout)


@pytest.mark.parametrize("protocol", [Protocol(scales=(0.5, 1.0, 1.5), flip=True), Protocol(test_scale=(60, 40)),
                                      Protocol(mode="slide", window=32, stride=20, scales=(0.75, 1.25), flip=True)],
                         ids=["whole multi-scale flip", "whole resized", "slide multi-scale flip"])
def test_scores_do_not_depend_on_the_logits_memory_layout(protocol):
    # predict takes channels-last logits through their own fast paths (slices that keep the
    # layout, softmax over the innermost dimension): the numbers must not change with them
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    plain, last = (predict(LayoutConvNet(layout), img, protocol, 5)
                   for layout in (torch.contiguous_format, torch.channels_last))
    assert plain.shape == last.shape == (5, 50, 70)
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-6)
    if protocol.is_multiview:
        torch.testing.assert_close(last.sum(0), torch.ones(50, 70))  # a mean of probabilities


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_softmax_is_the_softmax_over_the_classes(layout):
    from segbench.engine.inference import channel_softmax

    scores = (torch.randn(1, 6, 5, 7) * 10).contiguous(memory_format=layout)[0]
    torch.testing.assert_close(channel_softmax(scores), scores.softmax(0), rtol=0, atol=1e-7)


def test_workers_give_the_same_results_as_the_loop():
    dataset = Synthetic("val", num_images=4)
    model = create_model("segformer_micro", num_classes=dataset.num_classes)
    protocol = paper_protocol(model.info, dataset, multi_scale=True)
    results = []
    for workers in (0, 2):
        evaluators = standard_evaluators(dataset, bootstrap=0)
        timing = evaluate(model, dataset, protocol, evaluators, workers=workers)
        assert timing.as_dict()["workers"] == workers and timing.as_dict()["dtype"] == "float32"
        results.append((evaluators[0].confusion.matrix.copy(), evaluators[0].per_image.rows,
                        evaluators[1].breakdown.matrices.copy()))
    (a, rows_a, size_a), (b, rows_b, size_b) = results
    assert a.sum() > 0 and (a == b).all() and (size_a == size_b).all()
    assert all((ra == rb).all() for ra, rb in zip(rows_a, rows_b))


def test_autocast_returns_float32_logits_and_is_stated():
    model = create_model("segformer_micro", num_classes=9)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        plain = inference_model(model)(x)
        bf16 = inference_model(model, amp="bf16")(x)
    assert bf16.dtype == torch.float32 and bf16.shape == plain.shape
    assert (bf16 - plain).abs().max() < 0.1 * plain.abs().max()  # close, not equal: reduced precision
    timing = evaluate(model, Synthetic("val", num_images=1), Protocol(), standard_evaluators(
        Synthetic("val", num_images=1), bootstrap=0), amp="bf16")
    assert timing.as_dict()["dtype"] == "bfloat16 autocast"
    with pytest.raises(ValueError, match="amp"):
        inference_model(model, amp="fp8")


@pytest.mark.slow  # torch.compile builds C++ kernels on a CPU: about 40 s
def test_compiled_model_computes_the_same_logits():
    model = randomize(create_model("segformer_micro", num_classes=9))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert (inference_model(model, compile=True)(x) - model(x)).abs().max() < TOLERANCE


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_all_finite_finds_every_non_finite_value_in_either_layout(bad, layout):
    from segbench.engine.evaluate import all_finite

    logits = torch.randn(1, 5, 7, 9).contiguous(memory_format=layout)
    if bad is not None:
        logits[0, 3, 6, 8] = bad  # the last pixel of a middle class: the end of neither layout
    scores = logits[0]
    assert all_finite(scores) == bool(torch.isfinite(scores).all()) == (bad is None)
