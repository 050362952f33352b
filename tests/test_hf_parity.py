"""Parity with the reference implementations: a randomly initialised HuggingFace
SegformerForSemanticSegmentation, saved in its file formats, converted with
``convert_hf_state_dict`` and loaded into segbench's SegFormer gives the same logits; so
does the NVlabs/mmseg checkpoint layout written from the same weights."""
from functools import lru_cache

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from checkpoint_writers import mmseg_state_dict  # noqa: E402
from segbench.bench import randomize_statistics  # noqa: E402
from segbench.models import create_model  # noqa: E402
from segbench.models.segformer import convert_hf_state_dict, is_hf_state_dict, segformer_from_hf_config  # noqa: E402

NUM_CLASSES = 19
CONFIGS = {  # HF config fields; B0 is SegformerConfig's default
    "segformer_b0": {},
    "segformer_b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


@lru_cache(maxsize=None)
def randomized_hf(name: str):
    """The HF model with every weight and statistic random, and logits of order 1, so that
    a 1e-4 agreement means something."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=NUM_CLASSES, **CONFIGS[name])
    model = randomize_statistics(transformers.SegformerForSemanticSegmentation(config))
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def our_logits(model, state_dict, x):
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_safetensors(name, image, tmp_path):
    hf = randomized_hf(name)
    hf.save_pretrained(tmp_path)  # transformers 5 writes the 4.x key names to model.safetensors
    state_dict = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("segformer.encoder.block.") for k in state_dict) and is_hf_state_dict(state_dict)
    reference = hf_logits(hf, image)
    assert reference.std() > 0.5
    ours = segformer_from_hf_config(tmp_path / "config.json")
    assert ours.info.name == name
    assert (our_logits(ours, convert_hf_state_dict(state_dict), image) - reference).abs().max() < 1e-4
    # The registry variant (official LayerNorm eps 1e-6 where transformers uses 1e-5) loads the same file.
    registry = create_model(name, num_classes=NUM_CLASSES)
    assert (our_logits(registry, convert_hf_state_dict(state_dict), image) - reference).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_5x_names(name, image, tmp_path):
    hf = randomized_hf(name)
    hf.save_pretrained(tmp_path, save_original_format=False)  # transformers 5 module names
    state_dict = load_file(str(tmp_path / "model.safetensors"))
    assert any(".attention.k_proj." in k for k in state_dict) and is_hf_state_dict(state_dict)
    ours = segformer_from_hf_config(tmp_path / "config.json")
    assert (our_logits(ours, convert_hf_state_dict(state_dict), image) - hf_logits(hf, image)).abs().max() < 1e-4


def test_hf_bin(image, tmp_path):
    name, hf = "segformer_b0", randomized_hf("segformer_b0")
    hf.save_pretrained(tmp_path)
    # pytorch_model.bin: what transformers 4.x's save_pretrained(safe_serialization=False) wrote.
    torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    reloaded = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path).eval()  # a real HF file
    reference = hf_logits(reloaded, image)
    assert torch.equal(reference, hf_logits(hf, image))
    state_dict = torch.load(tmp_path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    ours = segformer_from_hf_config(tmp_path / "config.json")
    assert (our_logits(ours, convert_hf_state_dict(state_dict), image) - reference).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_key_value_order_matters(name, image):
    # A negative control: the parity check notices a conversion that stacks values before keys.
    hf = randomized_hf(name)
    converted = convert_hf_state_dict(hf.state_dict())
    swapped = {k: torch.cat(v.chunk(2)[::-1]) if ".attn.kv." in k else v for k, v in converted.items()}
    model = create_model(name, num_classes=NUM_CLASSES)
    assert (our_logits(model, swapped, image) - hf_logits(hf, image)).abs().max() > 1e-2


def mmseg_to_segbench(state_dict: dict) -> dict:
    """The rename an NVlabs/mmseg SegFormer checkpoint needs: backbone. -> encoder.,
    decode_head. -> decoder.; the unused decode_head.conv_seg is dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("decode_head.conv_seg."):
            continue
        out[key.replace("backbone.", "encoder.", 1).replace("decode_head.", "decoder.", 1)] = value
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mmseg_layout(name, image, tmp_path):
    hf = randomized_hf(name)
    ours = convert_hf_state_dict(hf.state_dict())
    model = create_model(name, num_classes=NUM_CLASSES)
    model.load_state_dict(ours)
    official = mmseg_state_dict(model)
    assert "backbone.block1.0.attn.kv.weight" in official and "decode_head.linear_fuse.bn.running_mean" in official
    torch.save({"meta": {"CLASSES": [str(i) for i in range(NUM_CLASSES)]}, "state_dict": official}, tmp_path / "m.pth")
    loaded = torch.load(tmp_path / "m.pth", map_location="cpu", weights_only=True)["state_dict"]
    reference = our_logits(create_model(name, num_classes=NUM_CLASSES), ours, image)
    assert torch.equal(our_logits(create_model(name, num_classes=NUM_CLASSES), mmseg_to_segbench(loaded), image),
                       reference)
    assert (reference - hf_logits(hf, image)).abs().max() < 1e-4
