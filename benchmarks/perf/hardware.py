"""The hardware side of the speed tables: achieved matmul rate, backbone FLOPs, and timing that waits for the device.

A rate's "bound" is the work's matmul FLOPs divided by the rate a large `torch.matmul` achieves on the same device
and dtype: no stage built from those matmuls can run faster, so achieved/bound says how close a stage comes.
"""
import copy
import os
import platform
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stego.backbones import ViTBackbone

MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
"""Square matmul size per device type: large enough to reach the device's sustained rate."""


def synchronize(device) -> None:
    """Wait for queued work on `device` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device="cpu") -> float:
    """Seconds `fn()` takes, including the device work it queued."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rate(fn, device="cpu", warmup: int = 1, min_iters: int = 2, max_iters: int = 1000, min_seconds: float = 1.0):
    """(calls per second, calls timed) of `fn`: after `warmup` calls, call it until both `min_iters` calls and
    `min_seconds` have passed (at most `max_iters`), synchronising the device only at the start and the end."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    calls = 0
    while calls < min_iters or (calls < max_iters and time.perf_counter() - start < min_seconds):
        fn()
        calls += 1
    synchronize(device)
    return calls / (time.perf_counter() - start), calls


def matmul_rate(device="cpu", dtype=torch.float32, size: int | None = None, min_seconds: float = 1.0) -> float:
    """Achieved FLOP/s of a square `torch.matmul` of `size` (default MATMUL_SIZE per device type) in `dtype`.

    fp32 on CUDA is measured with the current `torch.backends.cuda.matmul.allow_tf32` setting, the one the
    benchmarked code runs with (PyTorch's default: TF32 off for matmuls).
    """
    device = torch.device(device)
    n = size or MATMUL_SIZE.get(device.type, 1024)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    calls_per_s, _ = rate(lambda: torch.matmul(a, b, out=out), device, warmup=2, min_iters=3,
                          min_seconds=min_seconds)
    return 2 * n**3 * calls_per_s


def vit_flops(dim: int, depth: int, mlp_hidden: int, patch: int, height: int, width: int) -> dict:
    """FLOPs of one image through a ViT (class token, no head), counted from the shapes; 1 multiply-add = 2.

    Matmul parts: patch embedding (a p×p stride-p convolution), and per block qkv, attention (QKᵀ and AV, all
    heads together), output projection and the two MLP layers. 'norm' (2 LayerNorms a block and the final
    one, ~5 operations an element) is listed apart: it is not matmul work and not part of 'matmul'.
    """
    patches = (height // patch) * (width // patch)
    t = patches + 1
    parts = {
        "patch_embed": 2 * 3 * patch * patch * dim * patches,
        "qkv": depth * 2 * t * dim * 3 * dim,
        "attention": depth * 2 * 2 * t * t * dim,
        "proj": depth * 2 * t * dim * dim,
        "mlp": depth * 2 * 2 * t * dim * mlp_hidden,
    }
    parts["matmul"] = sum(parts.values())
    parts["norm"] = (2 * depth + 1) * 5 * t * dim
    return parts


def counted_flops(module: torch.nn.Module, shape) -> int:
    """Matmul and convolution FLOPs of `module(torch.empty(shape))` counted by torch's FlopCounterMode on a
    meta-device copy (no compute, no memory); attention runs in its math form so its matmuls are counted."""
    meta = copy.deepcopy(module).to("meta")
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        meta(torch.empty(shape, device="meta"))
    return counter.get_total_flops()


def backbone_flops(backbone, height: int, width: int) -> int:
    """Matmul FLOPs of one image through `backbone`: counted from the shapes for our ViTs, else by
    FlopCounterMode."""
    if isinstance(backbone, ViTBackbone):
        vit = backbone.trunk
        return vit_flops(vit.embed_dim, len(vit.blocks), vit.blocks[0].mlp.fc1.out_features, backbone.patch,
                         height, width)["matmul"]
    return counted_flops(backbone, (1, 3, height, width))


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def load_average() -> list | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
