"""DINOv3 backbones against an independent float64 reference of the authors' code (facebookresearch/dinov3,
dinov3/models/vision_transformer.py, convnext.py, dinov3/layers, dinov3/hub/backbones.py), on random weights saved
in the authors' own key names; the licence-gated weight files.

ViT reference: conv patch embedding; [class + 0 * mask_token, 4 storage tokens, patches]; RoPE (`ref_rope`) on q
and k of the patch tokens only; pre-norm blocks with LayerNorm eps 1e-5, qkv bias times its bias_mask (key third
zero), layer scale gammas, FFN fc1-GELU-fc2 (S, B, L) or SwiGLU w3(silu(w1 x) * w2 x) (S+); final norm; prefix
dropped. In eval mode only: the authors' coordinate augmentations act in training mode, and a Backbone never trains.
ConvNeXt reference: stem conv 4/4 + channels-first LayerNorm, 3 downsamplings (LayerNorm + conv 2/2), blocks
dwconv 7x7 -> LayerNorm -> pwconv1 -> GELU -> pwconv2 -> gamma, residual; final LayerNorm on every location.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from stego.backbones import BACKBONES, MissingWeightsError, adapt_dinov3_vit, build_backbone, resolve_weight_file
from stego.errors import StegoError

VIT = {"dinov3_vits16": (384, 12, 6, "mlp"), "dinov3_vits16plus": (384, 12, 6, "swiglu")}
"""dim, depth, heads, FFN of the authors' dinov3_vits16 / dinov3_vits16plus hub models."""
CONVNEXT_TINY = ((3, 3, 9, 3), (96, 192, 384, 768))
ACCESS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


def _images(b, h, w, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _max_rel(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


class _Random:
    """Random tensors for a fake release file, scaled so that every part (layer scale, biases) visibly matters."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=self.gen) * std + mean

    def linear(self, name, n_out, n_in):
        return {f"{name}.weight": self(n_out, n_in, std=n_in ** -0.5), f"{name}.bias": self(n_out, std=0.1)}

    def norm(self, name, dim):
        return {f"{name}.weight": self(dim, std=0.2, mean=1.0), f"{name}.bias": self(dim, std=0.1)}


# ---------- ViT: the authors' file format and forward ----------

def authors_vit_state_dict(name, seed=0):
    """The keys and shapes the authors' DinoVisionTransformer saves for `name` (mask_k_bias, 4 storage tokens):
    cls_token, storage_tokens, mask_token, patch_embed.proj, rope_embed.periods (stored rounded to bfloat16, as in
    the releases), blocks.N.{norm1, attn.qkv (+ bias_mask), attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 or
    mlp.w1/w2/w3, ls2.gamma}, norm."""
    dim, depth, heads, ffn = VIT[name]
    rnd = _Random(seed)
    head_dim = dim // heads
    periods = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    sd = {"cls_token": rnd(1, 1, dim), "storage_tokens": rnd(1, 4, dim), "mask_token": rnd(1, dim),
          "patch_embed.proj.weight": rnd(dim, 3, 16, 16, std=(3 * 16 * 16) ** -0.5),
          "patch_embed.proj.bias": rnd(dim, std=0.1), "rope_embed.periods": periods.bfloat16(), **rnd.norm("norm", dim)}
    mask = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    hidden = 4 * dim if ffn == "mlp" else int(6 * dim * 2 / 3) // 8 * 8  # SwiGLU: 2/3 of 6 * dim, multiple of 8
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({**rnd.norm(b + "norm1", dim), **rnd.linear(b + "attn.qkv", 3 * dim, dim),
                   b + "attn.qkv.bias_mask": mask, **rnd.linear(b + "attn.proj", dim, dim),
                   b + "ls1.gamma": rnd(dim, std=0.2, mean=0.5), **rnd.norm(b + "norm2", dim),
                   b + "ls2.gamma": rnd(dim, std=0.2, mean=0.5)})
        if ffn == "mlp":
            sd.update({**rnd.linear(b + "mlp.fc1", hidden, dim), **rnd.linear(b + "mlp.fc2", dim, hidden)})
        else:
            sd.update({**rnd.linear(b + "mlp.w1", hidden, dim), **rnd.linear(b + "mlp.w2", hidden, dim),
                       **rnd.linear(b + "mlp.w3", dim, hidden)})
    return sd


def ref_rope(periods, h0, w0):
    """The authors' RopePositionEmbedding in eval mode: sin, cos [h0*w0, head_dim]. Patch centres (i + 0.5)/h0 and
    (j + 0.5)/w0 (each axis by its own size, 'separate'), mapped to [-1, 1]; angles 2*pi*coordinate/period for
    the row then the column ([HW, 2, D/4] flattened), the whole repeated twice."""
    rows = (torch.arange(h0, dtype=torch.float64) + 0.5) / h0
    cols = (torch.arange(w0, dtype=torch.float64) + 0.5) / w0
    coords = 2 * torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2) - 1
    angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1).tile(2)
    return angles.sin(), angles.cos()


def rope_apply(x, sin, cos):
    """x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a] (the two halves of the head dimension)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def ref_vit_block(sd, b, x, heads, sin, cos):
    """One of the authors' SelfAttentionBlocks (`b` = 'blocks.N.'), RoPE on the last sin.shape[0] tokens only."""
    n_batch, n, c = x.shape
    h = F.layer_norm(x, (c,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-5)
    qkv_bias = sd[b + "attn.qkv.bias"] * sd[b + "attn.qkv.bias_mask"]
    q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], qkv_bias).reshape(n_batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    prefix = n - sin.shape[0]
    q = torch.cat([q[:, :, :prefix], rope_apply(q[:, :, prefix:], sin, cos)], dim=2)
    k = torch.cat([k[:, :, :prefix], rope_apply(k[:, :, prefix:], sin, cos)], dim=2)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // heads), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(n_batch, n, c)
    x = x + sd[b + "ls1.gamma"] * F.linear(out, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
    h = F.layer_norm(x, (c,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-5)
    if b + "mlp.w1.weight" in sd:
        gate = F.silu(F.linear(h, sd[b + "mlp.w1.weight"], sd[b + "mlp.w1.bias"]))
        h = F.linear(gate * F.linear(h, sd[b + "mlp.w2.weight"], sd[b + "mlp.w2.bias"]),
                     sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
    else:
        h = F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        h = F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return x + sd[b + "ls2.gamma"] * h


def ref_vit(sd, images, name):
    """Patch tokens [B, C, H/16, W/16] of the authors' ViT in eval mode (last block, final norm), float64."""
    sd = {k: v.double() for k, v in sd.items()}
    _, depth, heads, _ = VIT[name]
    x = F.conv2d(images.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    b, c, h0, w0 = x.shape
    cls = sd["cls_token"] + 0 * sd["mask_token"]
    x = torch.cat([cls.expand(b, -1, -1), sd["storage_tokens"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    sin, cos = ref_rope(sd["rope_embed.periods"], h0, w0)
    for i in range(depth):
        x = ref_vit_block(sd, f"blocks.{i}.", x, heads, sin, cos)
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)
    return x[:, 5:].transpose(1, 2).reshape(b, c, h0, w0)


# ---------- ConvNeXt: the authors' file format and forward ----------

def authors_convnext_state_dict(seed=0):
    """The keys the authors' ConvNeXt-T saves: downsample_layers.{0: stem conv + norm, 1-3: norm + conv},
    stages.I.J.{gamma, dwconv, norm, pwconv1, pwconv2}, norm, and norms.3 (the same final norm, listed twice)."""
    depths, dims = CONVNEXT_TINY
    rnd = _Random(seed)
    sd = {"downsample_layers.0.0.weight": rnd(dims[0], 3, 4, 4, std=48 ** -0.5),
          "downsample_layers.0.0.bias": rnd(dims[0], std=0.1), **rnd.norm("downsample_layers.0.1", dims[0])}
    for i in range(1, 4):
        sd.update({**rnd.norm(f"downsample_layers.{i}.0", dims[i - 1]),
                   f"downsample_layers.{i}.1.weight": rnd(dims[i], dims[i - 1], 2, 2, std=(4 * dims[i - 1]) ** -0.5),
                   f"downsample_layers.{i}.1.bias": rnd(dims[i], std=0.1)})
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        for j in range(depth):
            b = f"stages.{i}.{j}."
            sd.update({b + "gamma": rnd(dim, std=0.2, mean=0.5), b + "dwconv.weight": rnd(dim, 1, 7, 7, std=1 / 7),
                       b + "dwconv.bias": rnd(dim, std=0.1), **rnd.norm(b + "norm", dim),
                       **rnd.linear(b + "pwconv1", 4 * dim, dim), **rnd.linear(b + "pwconv2", dim, 4 * dim)})
    sd.update(rnd.norm("norm", dims[-1]))
    sd["norms.3.weight"], sd["norms.3.bias"] = sd["norm.weight"], sd["norm.bias"]
    return sd


def ref_channels_first_norm(x, weight, bias):
    """The authors' channels-first LayerNorm, written out: (x - mean) / sqrt(var + 1e-6) over channels."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + bias[:, None, None]


def ref_convnext(sd, images):
    """Patch tokens [B, C, H/32, W/32] of the authors' ConvNeXt (forward_features' x_norm_patchtokens), float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = images.double()
    for i, depth in enumerate(CONVNEXT_TINY[0]):
        d = f"downsample_layers.{i}."
        if i == 0:
            x = F.conv2d(x, sd[d + "0.weight"], sd[d + "0.bias"], stride=4)
            x = ref_channels_first_norm(x, sd[d + "1.weight"], sd[d + "1.bias"])
        else:
            x = ref_channels_first_norm(x, sd[d + "0.weight"], sd[d + "0.bias"])
            x = F.conv2d(x, sd[d + "1.weight"], sd[d + "1.bias"], stride=2)
        for j in range(depth):
            b = f"stages.{i}.{j}."
            y = F.conv2d(x, sd[b + "dwconv.weight"], sd[b + "dwconv.bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, (x.shape[1],), sd[b + "norm.weight"], sd[b + "norm.bias"], eps=1e-6)
            y = F.linear(F.gelu(F.linear(y, sd[b + "pwconv1.weight"], sd[b + "pwconv1.bias"])),
                         sd[b + "pwconv2.weight"], sd[b + "pwconv2.bias"])
            x = x + (sd[b + "gamma"] * y).permute(0, 3, 1, 2)
    b, c, h, w = x.shape
    tokens = torch.cat([x.mean([-2, -1])[:, None], x.flatten(2).transpose(1, 2)], dim=1)
    tokens = F.layer_norm(tokens, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)


# ---------- ours against the reference ----------

@functools.cache
def vit_state_dict(name):
    return authors_vit_state_dict(name)


@pytest.fixture(scope="module", params=sorted(VIT))
def loaded(request, tmp_path_factory):
    """(name, the authors' state dict, our backbone loaded from it saved under the official file name)."""
    name = request.param
    path = tmp_path_factory.mktemp("dinov3") / BACKBONES[name].weight_file
    torch.save(vit_state_dict(name), path)
    return name, vit_state_dict(name), build_backbone(name, weights=path)


@pytest.mark.parametrize("h,w", [(224, 224), (320, 320), (224, 320)])
def test_vit_matches_authors_reference(loaded, h, w):
    name, sd, model = loaded
    x = _images(1, h, w)
    got = model(x)
    assert got.shape == (1, 384, h // 16, w // 16)
    assert _max_rel(got, ref_vit(sd, x, name)) < 1e-5


def test_vit_uses_the_files_rope_periods(loaded):
    """The authors' model uses the periods stored in its file (a persistent buffer), not recomputed ones."""
    _, sd, model = loaded
    stored = sd["rope_embed.periods"].float()
    computed = 100.0 ** (2 * torch.arange(16, dtype=torch.float32) / 32)  # base 100, head dim 64
    assert torch.equal(model.trunk.rope.periods, stored) and model.trunk.rope.periods.dtype == torch.float32
    assert not torch.equal(computed, stored) and torch.allclose(computed, stored, rtol=1e-2)


def test_vit_loads_our_checkpoints(loaded):
    """Our trunk's own state dict (timm's names, in a STEGO container) passes the key mapping unchanged."""
    name, _, model = loaded
    x = _images(1, 224, 320)
    ours = {"state_dict": {"net.model." + k: v for k, v in model.trunk.state_dict().items()}}
    assert torch.equal(build_backbone(name, weights=ours)(x), model(x))


def test_vit_stays_in_eval(loaded):
    """RoPE's coordinate augmentation is a training-mode feature: the Backbone never leaves eval mode."""
    _, _, model = loaded
    model.train()
    assert not any(m.training for m in model.modules())
    x = _images(1, 224, 224)
    assert torch.equal(model(x), model(x))


def test_patch16_size_error(loaded):
    _, _, model = loaded
    with pytest.raises(StegoError, match=r"230x320 .* patch/stride 16; use 224 or 240 \(height\) and 320 \(width\)"):
        model(_images(1, 230, 320))


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    """(the authors' ConvNeXt-T state dict, our backbone finding it under its official name in weights_dir)."""
    sd, folder = authors_convnext_state_dict(), tmp_path_factory.mktemp("convnext")
    torch.save(sd, folder / BACKBONES["dinov3_convnext_tiny"].weight_file)
    return sd, build_backbone("dinov3_convnext_tiny", weights_dir=folder)


@pytest.mark.parametrize("h,w", [(224, 224), (224, 320)])
def test_convnext_matches_authors_reference(convnext, h, w):
    sd, model = convnext
    x = _images(1, h, w)
    got = model(x)
    assert got.shape == (1, 768, h // 32, w // 32)
    assert _max_rel(got, ref_convnext(sd, x)) < 1e-5


def test_unmasked_key_bias_is_one_line():
    sd = {"blocks.0.attn.qkv.bias": torch.ones(6)}
    assert set(adapt_dinov3_vit({**sd, "blocks.0.attn.qkv.bias_mask": torch.tensor([1.0, 1, 0, 0, 1, 1])})) == {
        "blocks.0.attn.q_bias", "blocks.0.attn.v_bias"}
    with pytest.raises(StegoError, match=r"blocks.0.attn.qkv.bias has a nonzero key bias") as err:
        adapt_dinov3_vit(sd)
    assert "\n" not in str(err.value)


# ---------- licence-gated weights ----------

FILES = {
    "dinov3_vits16": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "dinov3_vits16plus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "dinov3_vitb16": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    "dinov3_vitl16": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    "dinov3_convnext_tiny": "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth",
    "dinov3_convnext_small": "dinov3_convnext_small_pretrain_lvd1689m-296db49d.pth",
    "dinov3_convnext_base": "dinov3_convnext_base_pretrain_lvd1689m-801f2ba9.pth",
    "dinov3_convnext_large": "dinov3_convnext_large_pretrain_lvd1689m-61fa432d.pth",
}


def test_specs_name_the_gated_files():
    assert {n: s.weight_file for n, s in BACKBONES.items() if s.family == "dinov3"} == FILES
    for name in FILES:
        spec = BACKBONES[name]
        assert spec.url is None and spec.access == ACCESS
        assert spec.patch == (32 if "convnext" in name else 16)


@pytest.mark.parametrize("online", [False, True])
def test_gated_weights_error(no_network, monkeypatch, tmp_path, online):
    (tmp_path / "env_dir").mkdir()
    (tmp_path / "torch_home").mkdir()
    if online:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("STEGO_OFFLINE", raising=False)
    for name, file in FILES.items():
        with pytest.raises(MissingWeightsError) as err:
            resolve_weight_file(name)
        msg = str(err.value)
        assert file in msg and ACCESS in msg and "$STEGO_WEIGHTS_DIR" in msg and "model.weights=PATH" in msg
        assert "env_dir" in msg and "torch_home" in msg and "\n" not in msg
    with torch.device("meta"), pytest.raises(MissingWeightsError, match="dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd"):
        build_backbone("dinov3_vitl16")


def test_gated_file_found_in_weights_dir(no_network, tmp_path):
    sd = vit_state_dict("dinov3_vits16")
    (tmp_path / "env_dir").mkdir()
    torch.save(sd, tmp_path / "env_dir" / FILES["dinov3_vits16"])
    got = build_backbone("dinov3_vits16").trunk.state_dict()
    want = adapt_dinov3_vit(sd)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in got)
