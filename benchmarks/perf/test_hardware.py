"""The hardware-bound helpers: ViT FLOPs counted from the shapes agree with torch's FlopCounterMode, ResNet-50's
count with torchvision's published figure, and the timing helpers count what they claim."""
import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stego.backbones import BACKBONES, ViTBackbone, build_backbone

from .hardware import backbone_flops, counted_flops, matmul_rate, rate, timed, vit_flops


@pytest.fixture(scope="module")
def vit_s8():
    torch.manual_seed(0)
    return build_backbone("dino_vits8", weights="random")


def test_vit_flops_by_hand():
    # ViT-S/8 on 32×48: 4×6 = 24 patches, T = 25 tokens, d = 384, MLP 1536, 12 blocks.
    # patch 2·192·384·24 = 3,538,944; per block qkv 2·25·384·1152 = 22,118,400, attention 2·2·25²·384 =
    # 960,000, proj 2·25·384² = 7,372,800, MLP 2·2·25·384·1536 = 58,982,400 → 89,433,600 × 12 + patch.
    parts = vit_flops(384, 12, 1536, 8, 32, 48)
    assert parts["matmul"] == 1_076_742_144
    assert parts["attention"] == 12 * 960_000 and parts["patch_embed"] == 3_538_944


def test_vit_flops_match_flop_counter_on_cpu(vit_s8):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        vit_s8(torch.randn(2, 3, 32, 48))
    assert counter.get_total_flops() == 2 * backbone_flops(vit_s8, 32, 48)


def shapes_only(name):
    """A ViT backbone with uninitialised weights: only its shapes matter for counting (and it builds fast)."""
    spec = BACKBONES[name]
    vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, weight_init="skip")
    return ViTBackbone(spec.name, spec.dim, spec.patch, vit)


@pytest.mark.parametrize("name, res", [("dino_vits8", (224, 224)), ("dino_vitb8", (320, 320)),
                                       ("dino_vitb8", (224, 160))])
def test_vit_flops_match_flop_counter_at_paper_sizes(name, res):
    """At the training and evaluation sizes, counted on a meta-device copy (no compute)."""
    backbone = shapes_only(name)
    assert backbone_flops(backbone, *res) == counted_flops(backbone, (1, 3, *res))


def test_vitb8_training_iteration_flops():
    """One training iteration of ViT-B/8 at batch 32: 64 images (anchors and partners) at 224 ≈ 10 TFLOP."""
    per_image = backbone_flops(shapes_only("dino_vitb8"), 224, 224)
    assert 155e9 < per_image < 157e9
    assert 9.9e12 < 64 * per_image < 10.1e12


def test_resnet50_flops_match_torchvision_figure():
    """torchvision lists ResNet-50 at 4.09 GFLOPS (multiply-adds) at 224; the stride-32 trunk has no fc."""
    backbone = build_backbone("r50_supervised", weights="random")
    assert backbone_flops(backbone, 224, 224) / 2 == pytest.approx(4.09e9, rel=0.01)


def test_rate_counts_calls_and_honours_minimums():
    calls = []
    per_s, timed_calls = rate(lambda: calls.append(1), warmup=2, min_iters=5, max_iters=7, min_seconds=0.0)
    assert timed_calls == 5 and len(calls) == 7 and per_s > 0
    _, timed_calls = rate(lambda: None, warmup=0, min_iters=1, max_iters=50, min_seconds=10.0)
    assert timed_calls == 50


def test_matmul_rate_matches_a_timed_matmul():
    n = 256
    measured = matmul_rate("cpu", size=n, min_seconds=0.2)
    a, b = torch.randn(n, n), torch.randn(n, n)
    one = min(timed(lambda: a @ b) for _ in range(20))
    assert measured > 1e8
    assert measured < 5 * 2 * n**3 / one  # no faster than a few times the best single call (timing noise)
