"""Checkpoint formats: each one written here in its exact official layout (random weights),
loaded through ``load_model`` / ``init_encoder_from_imagenet``, giving the same logits;
refusals for partial loads, wrong architectures and pickled objects."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from checkpoint_writers import mmseg_state_dict, randomise, write_official_segmenter
from segbench.models import VIT_MEAN, create_model
from segbench.models.checkpoints import (HF_SEGFORMER_FORMAT, MMSEG_FORMAT, SEGMENTER_FORMAT, CheckpointError,
                                         detect_format, init_encoder_from_imagenet, load_model, save_checkpoint)


def _logits(model, size=(64, 64)):
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, *size))


def test_segbench_round_trip(tmp_path):
    model = randomise(create_model("segmenter_micro_p8_mask", 9))
    path = save_checkpoint(tmp_path / "final.pth", model, iteration=3)
    loaded, report = load_model("segmenter_micro_p8_mask", path, 9)
    assert report.complete and loaded.info == model.info
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds a segmenter_micro_p8_mask"):
        load_model("segmenter_micro_p8_linear", path, 9)


def test_official_segmenter_checkpoint(tmp_path):
    model = randomise(create_model("segmenter_t16_mask", 150, crop_size=64))
    path = write_official_segmenter(tmp_path, model)
    loaded, report = load_model("segmenter_t16_mask", path, 150)
    assert report.format == SEGMENTER_FORMAT and report.complete
    assert sorted(report.ignored) == ["encoder.head.bias", "encoder.head.weight"]  # the unused ImageNet classifier
    assert loaded.info.crop_size == 64 and loaded.info.mean == VIT_MEAN  # settings travel with the model
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="segmenter_t16_mask"):  # variant.yml describes another architecture
        load_model("segmenter_t16_linear", path, 150)
    with pytest.raises(CheckpointError, match="150 classes"):
        load_model("segmenter_t16_mask", path, 19)


def test_official_segmenter_deit_normalisation(tmp_path):
    model = create_model("segmenter_deit_b16_linear", 150, crop_size=32).eval()  # no BN: random as built
    path = write_official_segmenter(tmp_path, model)  # DeiT: normalization deit, distilled
    loaded, report = load_model("segmenter_deit_b16_linear", path, 150)
    # segm/data/base.py: np.round(255 * DeiT stats, 2), not mmseg's 123.675 ... 57.375
    assert loaded.info.mean == (123.68, 116.28, 103.53) and loaded.info.std == (58.4, 57.12, 57.38)
    assert loaded.info.crop_size == 32
    assert "encoder.head_dist.weight" in report.ignored
    torch.testing.assert_close(_logits(loaded, (32, 48)), _logits(model, (32, 48)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["setr_micro_p16_naive", "setr_micro_p16_pup", "setr_micro_p16_mla"])
def test_mmseg_setr_checkpoint(tmp_path, name):
    model = randomise(create_model(name, 9, crop_size=96))  # a crop other than the registry's 128
    torch.save({"meta": {"mmseg_version": "0.6.0", "CLASSES": [str(i) for i in range(9)]},
                "state_dict": mmseg_state_dict(model)}, tmp_path / "iter_40000.pth")
    loaded, report = load_model(name, tmp_path / "iter_40000.pth", 9)
    assert report.format == MMSEG_FORMAT and report.complete
    assert len(report.ignored) == 2 * (1 + len(model.aux_heads))  # conv_seg weight + bias per head
    assert loaded.info.crop_size == 96  # from the position embeddings
    torch.testing.assert_close(_logits(loaded, (96, 80)), _logits(model, (96, 80)), rtol=0, atol=0)
    torch.manual_seed(2)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(loaded.eval()(x, with_aux=True)[1], model(x, with_aux=True)[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_setr_names_mirror_the_official_checkpoints():
    """Key names and shapes of the official T-Large models (fudan-zvg/SETR, mmseg 0.x)."""
    with torch.device("meta"):
        pup, mla = create_model("setr_l16_pup", 19, crop_size=768), create_model("setr_l16_mla", 19, crop_size=768)
    pup_keys = {k: tuple(v.shape) for k, v in mmseg_state_dict(pup).items()}
    mla_keys = {k: tuple(v.shape) for k, v in mmseg_state_dict(mla).items()}
    assert pup_keys["backbone.pos_embed"] == (1, 48 * 48 + 1, 1024)
    assert pup_keys["backbone.blocks.23.attn.qkv.bias"] == (3072,)
    assert "backbone.norm.weight" not in pup_keys  # no final norm
    assert pup_keys["decode_head.conv_0.weight"] == (256, 1024, 3, 3)
    assert pup_keys["decode_head.syncbn_fc_3.running_var"] == (256,)
    assert pup_keys["decode_head.conv_4.weight"] == (19, 256, 1, 1)
    assert pup_keys["auxiliary_head.3.conv_0.weight"] == (256, 1024, 3, 3)  # conv3x3_conv1x1 default
    assert pup_keys["auxiliary_head.3.conv_1.weight"] == (19, 256, 1, 1)
    assert mla_keys["backbone.mla.mla_p2_1x1.0.weight"] == (256, 1024, 1, 1)
    assert mla_keys["backbone.mla.mla_p5.1.running_mean"] == (256,)
    assert mla_keys["backbone.norm_3.weight"] == (1024,)
    assert mla_keys["decode_head.mlahead.head5.4.weight"] == (128,)
    assert mla_keys["decode_head.cls.weight"] == (19, 512, 3, 3)
    assert mla_keys["auxiliary_head.0.aux.weight"] == (19, 256, 1, 1)


def test_partial_load_refused_unless_allowed(tmp_path):
    model = randomise(create_model("setr_micro_p16_naive", 9))
    state = mmseg_state_dict(model)
    del state["decode_head.conv_1.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing: decoder.conv_1.weight"):
        load_model("setr_micro_p16_naive", tmp_path / "partial.pth", 9)
    loaded, report = load_model("setr_micro_p16_naive", tmp_path / "partial.pth", 9, allow_partial=True)
    assert report.missing == ["decoder.conv_1.weight"] and not report.complete
    with pytest.raises(CheckpointError, match="shape mismatch"):  # another class count
        load_model("setr_micro_p16_naive", tmp_path / "partial.pth", 5)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": Evil()}, f)
    with pytest.raises(CheckpointError, match="never unpickles code"):
        load_model("setr_micro_p16_naive", path, 9)


def test_unknown_and_classifier_files_explain_themselves(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint format segbench recognises"):
        load_model("setr_micro_p16_naive", tmp_path / "odd.pth", 9)
    torch.save({"blocks.0.norm1.weight": torch.zeros(3), "head.weight": torch.zeros(1)}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="init_encoder_from_imagenet"):
        load_model("setr_micro_p16_naive", tmp_path / "vit.pth", 9)


def test_format_detection_for_segformer_layouts():
    t = torch.zeros(1)
    assert detect_format({"segformer.encoder.block.0.0.attention.self.query.weight": t}) == HF_SEGFORMER_FORMAT
    assert detect_format({"segformer.stages.0.layers.0.attention.q_proj.weight": t}) == HF_SEGFORMER_FORMAT
    assert detect_format({"decode_head.linear_c.0.proj.weight": t}) == HF_SEGFORMER_FORMAT
    assert detect_format({"state_dict": {"backbone.patch_embed1.proj.weight": t,
                                         "decode_head.linear_c1.proj.weight": t}}) == MMSEG_FORMAT


def test_hf_segformer_round_trip(tmp_path):
    """HuggingFace SegFormer weights go through segbench.models.segformer.convert_hf_state_dict."""
    segformer = pytest.importorskip("segbench.models.segformer")
    if not hasattr(segformer, "convert_hf_state_dict"):
        pytest.skip("SegFormer conversion not in this checkout")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    config = transformers.SegformerConfig(num_labels=150)  # B0
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded, report = load_model("segformer_b0", tmp_path / "model.safetensors", 150)
    assert report.format == HF_SEGFORMER_FORMAT
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


# --- ImageNet initialisation ----------------------------------------------------------------

def _timm_vit(name: str, **kw):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_init_segmenter_encoder_from_timm(tmp_path, suffix):
    from safetensors.torch import save_file

    from segbench.models.segmenter import resize_pos_embed

    vit = _timm_vit("vit_tiny_patch16_224")
    path = tmp_path / f"vit_tiny{suffix}"
    if suffix == ".pth":
        torch.save(vit.state_dict(), path)
    else:
        save_file(vit.state_dict(), str(path))
    model = create_model("segmenter_t16_linear", 150, crop_size=64)
    report = init_encoder_from_imagenet(model, path)
    assert report.complete and sorted(report.ignored) == ["head.bias", "head.weight"]
    ours, theirs = model.encoder.state_dict(), vit.state_dict()
    torch.testing.assert_close(ours["blocks.11.mlp.fc2.weight"], theirs["blocks.11.mlp.fc2.weight"])
    torch.testing.assert_close(ours["pos_embed"], resize_pos_embed(theirs["pos_embed"], (4, 4), 1))  # bilinear 14 -> 4

    # At the checkpoint's own grid the encoder computes what timm's ViT computes, once the
    # LayerNorm eps is aligned (1e-5 in the official Segmenter, 1e-6 in timm).
    same_grid = create_model("segmenter_t16_linear", 150, crop_size=224).eval()
    init_encoder_from_imagenet(same_grid, path)
    for module in same_grid.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(same_grid.encoder(x), vit.forward_features(x), atol=1e-5, rtol=1e-5)


def test_init_setr_from_deit_drops_the_distillation_token(tmp_path):
    from segbench.models.setr import _setr

    deit = _timm_vit("deit_tiny_distilled_patch16_224")
    torch.save({"model": deit.state_dict()}, tmp_path / "deit.pth")  # DeiT's releases wrap in "model"
    model = _setr(5, encoder="deit_t16", decoder="mla", dim=192, depth=12, heads=3, aux_taps=(), crop_size=224)
    report = init_encoder_from_imagenet(model, tmp_path / "deit.pth")
    assert report.complete and {"dist_token", "norm.weight", "head_dist.weight"} <= set(report.ignored)
    assert any("randomly initialised" in note for note in report.notes)  # the MLA neck and tap norms
    pos = deit.state_dict()["pos_embed"]
    torch.testing.assert_close(model.encoder.pos_embed, torch.cat([pos[:, :1], pos[:, 2:]], dim=1))


def _google_npz(vit, path):
    """Write a timm ViT in Google's vision_transformer .npz layout (the inverse of timm's reader)."""
    sd = {k: v.numpy() for k, v in vit.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    heads = vit.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(vit.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        for j, n in enumerate(("query", "key", "value")):
            w = sd[b + "attn.qkv.weight"][j * dim:(j + 1) * dim]
            out[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = sd[b + "attn.qkv.bias"][j * dim:(j + 1) * dim].reshape(
                heads, dim // heads)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].reshape(
            dim, heads, dim // heads).transpose(1, 2, 0)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **out)


def test_init_from_google_npz(tmp_path):
    vit = _timm_vit("vit_tiny_patch16_224", img_size=64)
    _google_npz(vit, tmp_path / "Ti_16.npz")
    model = create_model("segmenter_t16_linear", 150, crop_size=64)
    report = init_encoder_from_imagenet(model, tmp_path / "Ti_16.npz")
    assert report.complete
    for key, value in vit.state_dict().items():
        if not key.startswith("head"):
            torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_suite_allow_partial_reaches_the_loader(tmp_path):
    from segbench.runner import Runner, plan
    from segbench.suite import load_suite

    model = randomise(create_model("setr_micro_p16_naive", 9))
    state = mmseg_state_dict(model)
    del state["decode_head.conv_1.bias"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    text = ("name: t\ndatasets: {synthetic: {kind: synthetic}}\n"
            "models:\n  strict: {arch: setr_micro_p16_naive, checkpoint: %s}\n"
            "  lenient: {arch: setr_micro_p16_naive, checkpoint: %s, allow_partial: true}\n"
            "evaluate: [{dataset: synthetic}]\n") % (tmp_path / "partial.pth", tmp_path / "partial.pth")
    (tmp_path / "suite.yaml").write_text(text)
    suite = load_suite(tmp_path / "suite.yaml")
    strict, lenient = plan(suite)
    assert "allow_partial" not in strict.config and lenient.config["allow_partial"] is True
    runner = Runner(suite, "cpu", tmp_path / "results")
    with pytest.raises(CheckpointError, match="missing: decoder.conv_1.bias"):
        runner.load(strict)
    runner.load(lenient)
    assert runner.load_report()["complete"] is False and "decoder.conv_1.bias" in runner.load_report()["summary"]


@pytest.mark.parametrize("arch", ["segformer_micro", "setr_micro_p16_pup"])
def test_mmseg_1x_transformer_checkpoints_are_refused_with_the_reason(tmp_path, arch):
    # mmseg 1.x names: MixVisionTransformer / VisionTransformer layers, nn.MultiheadAttention
    state_dict = {"backbone.layers.0.0.projection.weight": torch.zeros(8, 3, 7, 7),
                  "backbone.layers.0.1.0.attn.attn.in_proj_weight": torch.zeros(24, 8),
                  "decode_head.conv_seg.weight": torch.zeros(9, 8, 1, 1)}
    torch.save({"state_dict": state_dict, "meta": {"mmseg_version": "1.2.2"}}, tmp_path / "mmseg1.pth")
    with pytest.raises(CheckpointError, match="mmsegmentation 1.x checkpoint .*official release"):
        load_model(arch, tmp_path / "mmseg1.pth", 9)


# --- damaged files: one line naming the file, corrupt (not "unsafe") ------------------------

def _damaged(tmp_path, kind: str):
    model = create_model("segformer_micro", num_classes=9)
    good = save_checkpoint(tmp_path / "good.pth", model)
    rng = np.random.default_rng(0)
    if kind == "empty":
        (tmp_path / "empty.pth").write_bytes(b"")
        return tmp_path / "empty.pth"
    if kind == "truncated":
        (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
        return tmp_path / "cut.pth"
    if kind == "random":
        (tmp_path / "noise.pth").write_bytes(b"\x13" + rng.bytes(4096))
        return tmp_path / "noise.pth"
    if kind == "truncated legacy pickle":
        torch.save({"state_dict": model.state_dict()}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
        (tmp_path / "old.pth").write_bytes((tmp_path / "old.pth").read_bytes()[:5000])
        return tmp_path / "old.pth"
    from safetensors.torch import save_file

    if kind == "random safetensors":
        (tmp_path / "noise.safetensors").write_bytes(rng.bytes(4096))
        return tmp_path / "noise.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:len(data) // 2])
    return tmp_path / "m.safetensors"


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file (0 bytes), not a checkpoint"),
    ("truncated", "corrupt checkpoint: its zip archive is truncated or damaged"),
    ("random", "corrupt or not a checkpoint: neither the zip archive torch.save writes nor a pickle"),
    ("truncated legacy pickle", "corrupt checkpoint"),
    ("random safetensors", "corrupt or not a safetensors file"),
    ("truncated safetensors", "corrupt or not a safetensors file"),
])
def test_damaged_checkpoints_are_called_corrupt_in_one_line(tmp_path, kind, message):
    path = _damaged(tmp_path, kind)
    with pytest.raises(CheckpointError) as error:
        load_model("segformer_micro", path, 9)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert "never unpickles code" not in text and "re-download or re-save" in text


@pytest.mark.parametrize("info, message", [
    ("bogus", "expected a mapping of ModelInfo fields, got str"), ({"name": "segformer_micro", "colour": 1},
                                                                   "unknown field 'colour'"),
])
def test_a_segbench_checkpoint_with_a_bogus_info_field_is_named(tmp_path, info, message):
    path = save_checkpoint(tmp_path / "m.pth", create_model("segformer_micro", num_classes=9))
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "info": info}, path)
    with pytest.raises(CheckpointError, match=f"{path}: a segbench checkpoint whose `info` cannot be used") as error:
        load_model("segformer_micro", path, 9)
    assert message in str(error.value)


def test_hf_weights_whose_shapes_do_not_fit_together_are_named(tmp_path):
    from safetensors.torch import save_file

    attention = "segformer.encoder.block.0.0.attention.self."
    state = {attention + "key.weight": torch.zeros(4, 5), attention + "value.weight": torch.zeros(4, 6)}
    save_file(state, str(tmp_path / "hf.safetensors"))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'hf.safetensors'}: HuggingFace SegFormer weights with "
                                              "inconsistent shapes"):
        load_model("segformer_micro", tmp_path / "hf.safetensors", 9)
