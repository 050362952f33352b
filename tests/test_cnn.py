"""CNN baselines (FCN, DeepLabv3+ on dilated ResNet / MobileNetV2): shapes, mmseg's
dilation pattern and module names, mmseg checkpoint conversion, parity with mmseg's own
modules (where mmsegmentation is installed), and parameter counts against SegFormer Table 2."""
import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest
import torch
import torch.nn as nn

from checkpoint_writers import MMSEG_CNN_LAYOUTS
from segbench.models import create_model, describe_models
from segbench.models.checkpoints import MMSEG_FORMAT, load_model
from segbench.models.cnn import FCNHead, convert_mmseg_state_dict
from segbench.reference import lookup

PAPER_MODELS = ["fcn_r50_d8", "fcn_r101_d8", "fcn_mobilenetv2_d8",
                "deeplabv3plus_r50_d8", "deeplabv3plus_r101_d8", "deeplabv3plus_mobilenetv2_d8"]


@pytest.mark.parametrize("name", ["fcn_micro", "deeplabv3plus_micro", "fcn_mobilenetv2_d8",
                                  "deeplabv3plus_mobilenetv2_d8"])
def test_forward_shape_stride_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    # timm zero-initialises the last BN of each residual block (as mmseg's zero_init_residual),
    # which stops gradients to the block's other layers at init; unit scales show they take part.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    stride = model.info.output_stride
    assert stride == (8 if name.startswith("fcn") else 4)
    logits = model(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 5, 64 // stride, 96 // stride)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def conv_dilations(stage) -> list[int]:
    return [block.conv2.dilation[0] if hasattr(block, "conv2") else block.conv_dw.dilation[0] for block in stage]


def test_resnet_dilation_is_mmseg_contract_dilation():
    # mmseg ResNetV1c d8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation=True
    # (the first block of a dilated stage uses half the rate).
    with torch.device("meta"):
        encoder = create_model("fcn_r50_d8", num_classes=19).encoder
    assert conv_dilations(encoder.layer3) == [1] + [2] * 5
    assert conv_dilations(encoder.layer4) == [2, 4, 4]
    assert [m.out_channels for m in encoder.conv1 if isinstance(m, torch.nn.Conv2d)] == [32, 32, 64]  # V1c stem


def test_mobilenetv2_dilation_is_mmseg_first_block_only():
    # mmseg MobileNetV2 d8: dilations (1, 1, 1, 2, 2, 4, 4), given to each stage's first block only.
    with torch.device("meta"):
        encoder = create_model("fcn_mobilenetv2_d8", num_classes=19).encoder
    assert [conv_dilations(stage) for stage in encoder.blocks] == [
        [1], [1, 1], [1, 1, 1], [2, 1, 1, 1], [2, 1, 1], [4, 1, 1], [4]]
    assert [s.conv_dw.stride[0] for s in (encoder.blocks[1][0], encoder.blocks[2][0], encoder.blocks[3][0])] == [2, 2, 1]


def test_head_names_mirror_mmseg():
    with torch.device("meta"):
        fcn = set(create_model("fcn_r50_d8", num_classes=19).state_dict())
        dlv3 = set(create_model("deeplabv3plus_r50_d8", num_classes=19).state_dict())
    for key in ["decoder.convs.0.conv.weight", "decoder.convs.1.bn.running_var", "decoder.conv_cat.conv.weight",
                "decoder.conv_seg.bias"]:
        assert key in fcn, key
    for key in ["decoder.image_pool.1.conv.weight", "decoder.aspp_modules.0.conv.weight",
                "decoder.aspp_modules.3.depthwise_conv.conv.weight", "decoder.aspp_modules.3.pointwise_conv.bn.bias",
                "decoder.bottleneck.conv.weight", "decoder.c1_bottleneck.conv.weight",
                "decoder.sep_bottleneck.1.depthwise_conv.bn.weight", "decoder.conv_seg.weight"]:
        assert key in dlv3, key
    assert not any(k.endswith("conv.bias") for k in fcn | dlv3 if k.startswith("decoder.") and "conv_seg" not in k)


def aux_head_params(stage3_channels: int) -> int:
    """mmseg's auxiliary FCN head of these configs (stage 3, 256 channels, one conv, no concat)."""
    with torch.device("meta"):
        head = FCNHead(stage3_channels, 256, num_classes=150, num_convs=1, concat_input=False)
    return sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize("name,stage3_channels", [("fcn_mobilenetv2_d8", 96), ("deeplabv3plus_mobilenetv2_d8", 96),
                                                  ("fcn_r101_d8", 1024), ("deeplabv3plus_r101_d8", 1024)])
def test_params_match_segformer_table_2(name, stage3_channels):
    # SegFormer Table 2 (and SETR Table 2: FCN R-101 68.59 M) print mmseg's counts, which
    # include the auxiliary head used in training; segbench builds the main head only.
    params = describe_models(name)[0]["params"]
    paper = lookup(name, "params_m", table="2") * 1e6
    with_aux = params + aux_head_params(stage3_channels)
    assert abs(with_aux - paper) <= 0.01 * paper
    assert abs(params - paper) > 0.01 * paper  # without the auxiliary head the count is off


def test_registry_rows():
    rows = {r["name"]: r for pattern in ("fcn*", "deeplabv3plus*") for r in describe_models(pattern)}
    assert set(PAPER_MODELS) <= set(rows)
    assert all(r["crop_size"] == 512 and r["test_mode"] == "whole" for n, r in rows.items() if n in PAPER_MODELS)


@pytest.mark.parametrize("name", ["fcn_r50_d8", "fcn_r101_d8", "deeplabv3plus_r101_d8",
                                  "deeplabv3plus_mobilenetv2_d8"])
def test_mmseg_checkpoint_names_convert_exactly(name):
    # Names and shapes of mmsegmentation 1.2.2's modules for these configs (ResNetV1c depth 101:
    # the R-50 config with depth=101), recorded from mmseg; test_same_logits_as_mmseg below
    # checks the numbers where mmseg is installed.
    shapes = json.loads(MMSEG_CNN_LAYOUTS.read_text())["models"][name]
    converted = convert_mmseg_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in create_model(name, num_classes=19).state_dict().items()}
    main = {k: tuple(v.shape) for k, v in converted.items() if not k.startswith("auxiliary_head.")}
    assert main == ours
    assert len(converted) - len(main) == sum(k.startswith("auxiliary_head.") for k in shapes) > 0


def mmseg_builders():
    """mmsegmentation's MODELS registry, if mmseg is importable (not a project dependency:
    ``pip install --target DIR --no-deps mmcv-lite==2.1.0 mmengine==0.10.7 mmsegmentation==1.2.2
    addict yapf termcolor prettytable ftfy regex platformdirs wcwidth``, then PYTHONPATH=DIR).
    mmcv-lite lacks the compiled ``mmcv._ext``; these models never call it, so a stand-in is
    registered."""
    if importlib.util.find_spec("mmseg") is None:
        pytest.skip("mmsegmentation is not installed")
    if "mmcv._ext" not in sys.modules:
        stand_in = types.ModuleType("mmcv._ext")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)

        def unavailable_op(op):
            if op.startswith("__"):
                raise AttributeError(op)
            return lambda *args, **kwargs: None

        stand_in.__getattr__ = unavailable_op
        sys.modules["mmcv._ext"] = stand_in
    import mmseg.models  # noqa: F401  (registers the modules)
    from mmseg.registry import MODELS

    return MODELS


@pytest.mark.filterwarnings("ignore::UserWarning")  # mmseg's deprecation notes
def test_same_logits_as_mmseg(tmp_path):
    MODELS = mmseg_builders()
    bn = dict(type="BN", requires_grad=True)
    resnet50 = dict(type="ResNetV1c", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                    strides=(1, 2, 1, 1), norm_cfg=bn, contract_dilation=True)
    mobilenetv2 = dict(type="MobileNetV2", strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4),
                       out_indices=(1, 2, 4, 6), norm_cfg=bn)
    head = dict(in_index=3, channels=512, dropout_ratio=0.1, num_classes=19, norm_cfg=bn, align_corners=False)
    aux = dict(type="FCNHead", in_index=2, channels=256, num_convs=1, concat_input=False, dropout_ratio=0.1,
               num_classes=19, norm_cfg=bn, align_corners=False)
    configs = {  # both backbones, both heads (the heads do not depend on the backbone)
        "fcn_r50_d8": (resnet50, dict(type="FCNHead", in_channels=2048, num_convs=2, concat_input=True, **head), 1024),
        "fcn_mobilenetv2_d8": (mobilenetv2, dict(type="FCNHead", in_channels=320, num_convs=2, concat_input=True,
                                                 **head), 96),
        "deeplabv3plus_mobilenetv2_d8": (mobilenetv2, dict(type="DepthwiseSeparableASPPHead", in_channels=320,
                                                           dilations=(1, 12, 24, 36), c1_in_channels=24, c1_channels=48,
                                                           **head), 96),
    }
    recorded = json.loads(MMSEG_CNN_LAYOUTS.read_text())["models"]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 128)
    for name, (backbone, decode_head, aux_channels) in configs.items():
        reference = nn.ModuleDict({"backbone": MODELS.build(backbone), "decode_head": MODELS.build(decode_head),
                                   "auxiliary_head": MODELS.build(dict(aux, in_channels=aux_channels))})
        with torch.no_grad():  # random statistics and scales, so that every BN matters
            for key, tensor in reference.state_dict().items():
                if "running_var" in key:
                    tensor.uniform_(0.5, 2.0)
                elif "running_mean" in key or key.endswith("bias"):
                    tensor.normal_(0.0, 0.1)
                elif tensor.ndim == 1:
                    tensor.uniform_(0.5, 1.5)
        reference.eval()
        state_dict = reference.state_dict()
        if name in recorded:
            assert {k: list(v.shape) for k, v in state_dict.items()} == recorded[name]
        converted = {k: v for k, v in convert_mmseg_state_dict(state_dict).items()
                     if not k.startswith("auxiliary_head.")}
        model = create_model(name, num_classes=19).eval()
        model.load_state_dict(converted, strict=True)
        with torch.no_grad():
            expected = reference.decode_head(reference.backbone(x))
            assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-4), name
        if "mobilenetv2" in name:  # the same weights end to end as an mmseg checkpoint file
            path = tmp_path / f"{name}.pth"
            torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": state_dict}, path)
            loaded, report = load_model(name, path, num_classes=19)
            assert report.format == MMSEG_FORMAT and not report.unexpected
            assert any(key.startswith("auxiliary_head.") for key in report.ignored)
            with torch.no_grad():
                assert torch.allclose(loaded(x), expected, atol=1e-5, rtol=1e-4), name
