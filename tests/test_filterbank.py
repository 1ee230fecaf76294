"""The hand-designed filter-bank backbone: shapes, no weights, determinism, hand-worked channels, class structure."""
import math

import numpy as np
import pytest
import torch

from stego.backbones import Backbone, build_backbone
from stego.data.synthetic import SceneSpec, render_scene_modes, scene_rng
from stego.data.transforms import normalize
from stego.errors import StegoError
from stego.backbones.filterbank import CONTRAST_REF, EPS, GREY, FilterBank, gabor_pair


def as_input(rgb):
    """uint8 or [0,1] float H×W×3 arrays → ImageNet-normalised [B,3,H,W] float32."""
    x = torch.as_tensor(np.asarray(rgb), dtype=torch.float32)
    if x.max() > 1.5:
        x = x / 255
    return normalize(x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2))


def test_shapes_and_dimensions():
    x = torch.randn(2, 3, 32, 48)
    assert FilterBank()(x).shape == (2, 19, 8, 12)
    assert FilterBank(patch=8, orientations=4, wavelengths=(4.0,))(x).shape == (2, 6 + 4 + 1, 4, 6)
    expanded = FilterBank(out_dim=64)(x)
    assert expanded.shape == (2, 64, 8, 12) and expanded.min() >= 0
    with pytest.raises(StegoError, match="multiple of 4"):
        FilterBank(patch=6)
    with pytest.raises(StegoError, match="not divisible"):
        FilterBank()(torch.randn(1, 3, 30, 32))


def test_it_is_a_weightless_deterministic_registered_backbone():
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    built = [build_backbone("filterbank", weights=w) for w in (None, "random", "/no/such/file.pth")]
    assert all(isinstance(b, FilterBank) and isinstance(b, Backbone) for b in built)
    assert list(built[0].parameters()) == [] and built[0].state_dict() == {}
    outs = [b(x) for b in built] + [built[0](x)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert not built[0].training and not outs[0].requires_grad
    a, b, c = FilterBank(out_dim=32, seed=1)(x), FilterBank(out_dim=32, seed=1)(x), FilterBank(out_dim=32, seed=2)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gabor_kernels_are_a_zero_mean_unit_norm_quadrature_pair():
    even, odd = gabor_pair(6.0, 0.7).double()
    assert abs(float(even.sum())) < 1e-6 and abs(float(odd.sum())) < 1e-6
    assert float(even.norm()) == pytest.approx(1, abs=1e-6) and float(odd.norm()) == pytest.approx(1, abs=1e-6)
    # quadrature: the energy of a matched sinusoid barely depends on its phase
    r = even.shape[-1] // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    energies = []
    for phase in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        patch = torch.from_numpy(np.sin(2 * np.pi / 6 * (xx * math.cos(0.7) + yy * math.sin(0.7)) + phase))
        energies.append(math.hypot(float((even * patch).sum()), float((odd * patch).sum())))
    assert max(energies) < 1.05 * min(energies)


@pytest.mark.parametrize("wavelength_index, wavelength", [(0, 4.0), (1, 6.0)])
def test_a_grating_peaks_in_its_own_orientation_and_wavelength_channel(wavelength_index, wavelength):
    bank = FilterBank()
    yy, xx = np.mgrid[0:48, 0:48].astype(float)
    for k in range(6):
        theta = math.pi * k / 6
        grey = 0.5 + 0.2 * np.sin(2 * np.pi / wavelength * (xx * math.cos(theta) + yy * math.sin(theta)))
        profile = bank(as_input(np.repeat(grey[..., None], 3, -1)))[0, 6:18, 4:8, 4:8].mean((1, 2))
        assert int(profile.argmax()) == 6 * wavelength_index + k


def test_flat_colour_gives_hand_computed_opponent_channels_and_no_texture():
    rgb = np.array([0.8, 0.3, 0.1])
    image = np.round(np.broadcast_to(rgb, (16, 16, 3)) * 255) / 255
    r, g, b = image[0, 0]
    feats = FilterBank()(as_input(image))[0].double()
    want = torch.tensor([(r + g + b) / 3 - GREY, r - g, (r + g) / 2 - b] * 2, dtype=torch.float64)
    torch.testing.assert_close(feats[:6], want.view(6, 1, 1).expand(6, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[6:18], torch.zeros(12, 4, 4, dtype=torch.float64), atol=1e-4, rtol=0)
    contrast = 0.25 * math.log(EPS / CONTRAST_REF)
    torch.testing.assert_close(feats[18], torch.full((4, 4), contrast, dtype=torch.float64), atol=1e-3, rtol=0)


def test_same_mode_features_are_closest_then_same_class_then_other_classes():
    """Mean cosine over pixel pairs from different scenes: the structure SYNTHETIC.md asks of a featurizer."""
    spec, bank, p = SceneSpec(size=64), FilterBank(), 4
    feats, labels, modes, images = [], [], [], []
    for i in range(30):
        image, label, mode = render_scene_modes(scene_rng(11, "train", i), spec)
        f = bank(as_input(image))[0]
        feats.append(f.permute(1, 2, 0).reshape(-1, f.shape[0]))
        labels.append(torch.from_numpy(label[p // 2::p, p // 2::p].astype(np.int64)).reshape(-1))
        modes.append(torch.from_numpy(mode[p // 2::p, p // 2::p]).reshape(-1))
        images.append(torch.full((f.shape[1] * f.shape[2],), i))
    f, lab, mode, img = (torch.cat(a) for a in (feats, labels, modes, images))
    pick = torch.randperm(len(f), generator=torch.Generator().manual_seed(0))[:3000]
    f = torch.nn.functional.normalize(f[pick].double(), dim=1)
    sim, lab, mode, img = f @ f.T, lab[pick], mode[pick], img[pick]
    other_image = img[:, None] != img[None]
    same_mode = (mode[:, None] == mode[None]) & other_image
    same_class = (lab[:, None] == lab[None]) & (mode[:, None] != mode[None]) & other_image
    other_class = (lab[:, None] != lab[None]) & other_image
    within, across, between = sim[same_mode].mean(), sim[same_class].mean(), sim[other_class].mean()
    assert within > across + 0.2, (within, across)
    assert across > between + 0.2, (across, between)
    assert abs(float(between)) < 0.15  # the channels are centred: unrelated regions are near orthogonal
