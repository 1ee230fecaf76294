"""DINOv2 backbones against an independent float64 reference of the authors' code (facebookresearch/dinov2,
dinov2/models/vision_transformer.py and dinov2/layers), on random weights saved in the authors' own key names; plus
one test that builds every registered backbone name.

The reference follows the authors' forward: conv patch embedding; class token; position embeddings resized by
`interpolate_pos_encoding` (see `ref_pos_embed`); registers inserted after the class token, without position
embedding; pre-norm blocks x + ls1 * attn(norm1(x)), x + ls2 * ffn(norm2(x)) (LayerNorm eps 1e-6, layer scale a
per-channel gamma, FFN fc1-GELU-fc2 or the giant's SwiGLU w12 -> silu(gate) * value -> w3); final norm; prefix
tokens dropped.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from stego.backbones import (
    BACKBONES,
    WEIGHTS_ENV,
    MissingWeightsError,
    build_backbone,
    dino_resize_pos_embed,
    resolve_weight_file,
)
from stego.errors import StegoError

ARCH = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
"""dim, depth, heads of the authors' vit_small / vit_base / vit_large / vit_giant2."""
GRID = 37


def _images(b, h, w, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _max_rel(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


# ---------- the authors' file format, random weights ----------

def swiglu_hidden(dim):
    """The authors' SwiGLUFFNFused width: 2/3 of 4 * dim, rounded up to a multiple of 8 (4096 for g/14)."""
    return (int(4 * dim * 2 / 3) + 7) // 8 * 8


def authors_state_dict(size, registers, seed=0, device=None, blocks=None):
    """A state dict with exactly the keys and shapes the authors' DinoVisionTransformer saves (block_chunks=0 as in
    their hub): cls_token, pos_embed (1 + 37*37 entries), register_tokens, mask_token, patch_embed.proj,
    blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 or mlp.w12/w3, ls2.gamma}, norm.
    Values are random, scaled so that every part (layer scale, position embedding) visibly matters."""
    dim, depth, _ = ARCH[size]
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=gen) * std + mean

    def linear(name, n_out, n_in):
        return {f"{name}.weight": rnd(n_out, n_in, std=n_in ** -0.5), f"{name}.bias": rnd(n_out, std=0.1)}

    def norm(name):
        return {f"{name}.weight": rnd(dim, std=0.2, mean=1.0), f"{name}.bias": rnd(dim, std=0.1)}

    sd = {"cls_token": rnd(1, 1, dim), "pos_embed": rnd(1, 1 + GRID * GRID, dim), "mask_token": rnd(1, dim),
          "patch_embed.proj.weight": rnd(dim, 3, 14, 14, std=(3 * 14 * 14) ** -0.5),
          "patch_embed.proj.bias": rnd(dim, std=0.1), **norm("norm")}
    if registers:
        sd["register_tokens"] = rnd(1, 4, dim)
    for i in range(depth) if blocks is None else blocks:
        b = f"blocks.{i}."
        sd.update({**norm(b + "norm1"), **linear(b + "attn.qkv", 3 * dim, dim), **linear(b + "attn.proj", dim, dim),
                   b + "ls1.gamma": rnd(dim, std=0.2, mean=0.5), **norm(b + "norm2"),
                   b + "ls2.gamma": rnd(dim, std=0.2, mean=0.5)})
        if size == "g":
            sd.update({**linear(b + "mlp.w12", 2 * swiglu_hidden(dim), dim),
                       **linear(b + "mlp.w3", dim, swiglu_hidden(dim))})
        else:
            sd.update({**linear(b + "mlp.fc1", 4 * dim, dim), **linear(b + "mlp.fc2", dim, 4 * dim)})
    return sd


# ---------- independent reference of the authors' forward ----------

def ref_pos_embed(pos_embed, h0, w0, same_hw, registers):
    """The authors' interpolate_pos_encoding: unchanged when the token count is the stored one and H == W; else the
    patch grid bicubic-resized in float32, without registers called with scale_factor (h0+0.1)/37, (w0+0.1)/37 and
    no antialias, with registers to the size (h0, w0) with antialias; the class entry kept."""
    n = pos_embed.shape[1] - 1
    if h0 * w0 == n and same_hw:
        return pos_embed
    m = math.isqrt(n)
    grid = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if registers:
        grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=True)
    else:
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


def ref_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    """Multi-head self-attention written out: softmax(q k^T / sqrt(d)) v per head."""
    b, n, c = x.shape
    q, k, v = F.linear(x, qkv_w, qkv_b).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // heads), dim=-1)
    return F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), proj_w, proj_b)


def ref_block(sd, b, x, heads):
    """One of the authors' blocks (`b` = 'blocks.N.'), LayerNorm eps 1e-6, GELU MLP or SwiGLU FFN."""
    c = x.shape[-1]
    h = F.layer_norm(x, (c,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
    attn = ref_attention(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"], sd[b + "attn.proj.weight"],
                         sd[b + "attn.proj.bias"], heads)
    x = x + attn * sd[b + "ls1.gamma"]
    h = F.layer_norm(x, (c,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
    if b + "mlp.w12.weight" in sd:
        gate, value = F.linear(h, sd[b + "mlp.w12.weight"], sd[b + "mlp.w12.bias"]).chunk(2, dim=-1)
        h = F.linear(F.silu(gate) * value, sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
    else:
        h = F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        h = F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return x + h * sd[b + "ls2.gamma"]


def ref_dinov2(sd, images, size):
    """Patch tokens [B, C, H/14, W/14] of the authors' model (last block, final norm, prefix dropped), float64."""
    sd = {k: v.double() for k, v in sd.items()}
    _, depth, heads = ARCH[size]
    registers = "register_tokens" in sd
    x = F.conv2d(images.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    b, c, h0, w0 = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + ref_pos_embed(sd["pos_embed"], h0, w0, images.shape[-2] == images.shape[-1], registers)
    if registers:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)
    for i in range(depth):
        x = ref_block(sd, f"blocks.{i}.", x, heads)
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return x[:, 1 + 4 * registers:].transpose(1, 2).reshape(b, c, h0, w0)


# ---------- ours against the reference ----------

SIZES = [(224, 224), (322, 322), (224, 322)]
"""The training size 224, 322 (CAUSE's test size, 23x23 tokens) and a non-square size."""


@functools.cache
def small_state_dict(registers):
    """The authors' ViT-S/14 state dict (random), made once per module."""
    return authors_state_dict("s", registers)


@pytest.fixture(scope="module", params=["dinov2_vits14", "dinov2_vits14_reg"])
def loaded(request, tmp_path_factory):
    """(name, the authors' state dict, our backbone loaded from it saved as a file)."""
    name = request.param
    sd = small_state_dict(name.endswith("_reg"))
    path = tmp_path_factory.mktemp("dinov2") / BACKBONES[name].weight_file
    torch.save(sd, path)
    return name, sd, build_backbone(name, weights=path)


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_authors_reference(loaded, h, w):
    name, sd, model = loaded
    x = _images(1, h, w)
    ref = ref_dinov2(sd, x, "s")
    got = model(x)
    assert got.shape == (1, 384, h // 14, w // 14)
    assert _max_rel(got, ref) < 1e-5
    if not name.endswith("_reg"):
        # timm's own forward (size-based antialiased resize, no offset) is not the authors' rule without registers
        tokens = model.trunk.forward_features(x)[:, 1:].transpose(1, 2).reshape(got.shape)
        assert _max_rel(tokens, ref) > 1e-2


def test_loads_our_checkpoints(loaded):
    """Our trunk's own state dict (timm's names, in a STEGO container) passes the key mapping unchanged."""
    name, _, model = loaded
    x = _images(1, 224, 322)
    ours = {"state_dict": {"net.model." + k: v for k, v in model.trunk.state_dict().items()}}
    assert torch.equal(build_backbone(name, weights=ours)(x), model(x))


@pytest.mark.parametrize("h0,w0", [(37, 37), (16, 16), (23, 23), (16, 23), (40, 24), (36, 38)])
def test_pos_embed_rules_on_the_37_grid(h0, w0):
    """float32, bitwise: without registers DINO v1's rule is the authors' (the skip at 37x37 included); with
    registers timm's resample, called as timm's forward calls it, is the authors'. The two rules differ wherever
    a resize happens."""
    pe = torch.randn(1, 1 + GRID * GRID, 8, generator=torch.Generator().manual_seed(h0 * w0))
    plain, reg = ref_pos_embed(pe, h0, w0, h0 == w0, False), ref_pos_embed(pe, h0, w0, h0 == w0, True)
    assert torch.equal(dino_resize_pos_embed(pe, h0, w0), plain)
    timm_reg = resample_abs_pos_embed(pe[:, 1:], new_size=(h0, w0), old_size=(GRID, GRID), num_prefix_tokens=0)
    assert torch.equal(timm_reg, reg[:, 1:])
    if (h0, w0) == (GRID, GRID):
        assert dino_resize_pos_embed(pe, h0, w0) is pe and torch.equal(timm_reg, pe[:, 1:])
    else:
        assert (plain - reg).abs().max() > 1e-2


def test_giant_keys_and_swiglu_block():
    """g/14: the authors' full key set loads strictly (on the meta device: 1.1B parameters), and one block with the
    SwiGLU FFN, run for real, equals the reference block."""
    for name in ("dinov2_vitg14", "dinov2_vitg14_reg"):
        with torch.device("meta"):
            model = build_backbone(name, weights=authors_state_dict("g", name.endswith("_reg"), device="meta"))
        assert model.trunk.blocks[0].mlp.fc1.weight.shape == (2 * swiglu_hidden(1536), 1536)
    block = model.trunk.blocks[0].to_empty(device="cpu")
    sd = authors_state_dict("g", registers=False, blocks=[0])
    block.load_state_dict({k[len("blocks.0."):].replace(".w12.", ".fc1.").replace(".w3.", ".fc2."): v
                           for k, v in sd.items() if k.startswith("blocks.0.")})
    x = torch.randn(2, 20, 1536, generator=torch.Generator().manual_seed(3))
    ref = ref_block({k: v.double() for k, v in sd.items()}, "blocks.0.", x.double(), ARCH["g"][2])
    with torch.no_grad():
        assert _max_rel(block(x), ref) < 1e-5


def test_wrong_file_for_registers_is_one_line(tmp_path):
    torch.save(small_state_dict(False), tmp_path / "plain.pth")
    with pytest.raises(StegoError, match=r"plain.pth does not match dinov2_vits14_reg: missing 1 \(e.g. reg_token\); "
                                         r"wrong shape 1 \(e.g. pos_embed\); use the dinov2_vits14_reg4_pretrain.pth"
                       ) as err:
        build_backbone("dinov2_vits14_reg", weights=tmp_path / "plain.pth")
    assert "\n" not in str(err.value)


def test_patch14_size_error(loaded):
    _, _, model = loaded
    with pytest.raises(StegoError, match=r"230x224 .* patch/stride 14; use 224 or 238 \(height\) and 224 \(width\)"):
        model(_images(1, 230, 224))


def test_official_files_and_urls():
    base = "https://dl.fbaipublicfiles.com/dinov2"
    for size in "sblg":
        plain, reg = BACKBONES[f"dinov2_vit{size}14"], BACKBONES[f"dinov2_vit{size}14_reg"]
        assert plain.url == f"{base}/dinov2_vit{size}14/dinov2_vit{size}14_pretrain.pth"
        assert reg.url == f"{base}/dinov2_vit{size}14/dinov2_vit{size}14_reg4_pretrain.pth"
        assert (plain.dim, plain.patch, plain.weight_file) == (ARCH[size][0], 14, plain.url.rsplit("/", 1)[1])
        assert (reg.dim, reg.patch, reg.weight_file) == (ARCH[size][0], 14, reg.url.rsplit("/", 1)[1])


def test_missing_weights_offline_names_the_url(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tests must never download"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        resolve_weight_file("dinov2_vitg14_reg")
    assert f"from {BACKBONES['dinov2_vitg14_reg'].url}) in $STEGO_WEIGHTS_DIR" in str(err.value)


# ---------- every registered name ----------

SMALL = 30e6
"""Backbones up to this many parameters are built on the CPU and run; larger ones (DINOv2/v3 ViT-B/L/g, ConvNeXt-S/B/L,
DINO v1 B/8 and B/16: 49M to 1.1B parameters, seconds to a minute of random init each) on the meta device only:
module, spec and output shapes, no values."""


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_builds(name):
    spec = BACKBONES[name]
    with torch.device("meta"):
        model = build_backbone(name, weights="random")
    if sum(p.numel() for p in model.parameters()) <= SMALL:
        model = build_backbone(name, weights="random")
    assert (model.name, spec.dim or model.dim, spec.patch or model.patch) == (name, model.dim, model.patch)
    device = next(model.parameters(), torch.empty(0)).device
    feats = model(torch.randn(2, 3, 2 * model.patch, 3 * model.patch, device=device))
    assert feats.shape == (2, model.dim, 2, 3)
    assert feats.device.type == "meta" or torch.isfinite(feats).all()
