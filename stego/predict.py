"""`stego predict`: label PNGs and colour overlays for a folder of the user's own images."""
import logging
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .data.datasets import IMAGE_SUFFIXES
from .data.transforms import image_to_tensor, normalize
from .errors import MissingFileError, StegoError
from .evaluate import crf_pool, crf_refine, load_for_eval, predict_log_probs
from .figures import overlay
from .io import atomic_write
from .runtime import pick_device

log = logging.getLogger(__name__)


def network_size(width: int, height: int, res: int, patch: int) -> tuple[int, int]:
    """Size (W, H) fed to the network: shorter side `res`, both sides rounded to a multiple of the patch."""
    scale = res / min(width, height)
    return (max(patch, round(width * scale / patch) * patch), max(patch, round(height * scale / patch) * patch))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def predict_folder(checkpoint, images_dir, out_dir, crf: bool = False, trusted: bool = False, cfg=None,
                   overrides=()) -> int:
    """Write <stem>_cluster.png, <stem>_linear.png (class ids) and <stem>_overlay.png per image; returns count.

    Each image is resized (shorter side = the config's eval resolution), segmented, and its predictions are
    upsampled back to the image's own size, so outputs align with the input pixels.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise MissingFileError(f"{images_dir}: no such folder; pass --images DIR holding .jpg/.png images")
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise StegoError(f"{images_dir}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    cfg, model, backbone = load_for_eval(checkpoint, cfg, trusted, overrides)
    device = pick_device(cfg.train.device)
    model, backbone = model.to(device).eval(), backbone.to(device)
    n_clusters = model.cluster_probe.clusters.shape[0]
    pool = crf_pool(cfg) if crf else None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for path in tqdm(paths, desc="predict", dynamic_ncols=True):
            try:
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError) as err:
                raise StegoError(f"{path}: cannot read the image ({err}); fix or remove the file") from None
            size = network_size(image.width, image.height, cfg.eval.res, backbone.patch)
            x = normalize(image_to_tensor(image.resize(size, Image.BILINEAR)))[None].to(device)
            cluster_lp, linear_lp = predict_log_probs(model, backbone, x, x.shape[-2:])
            if crf:
                cluster_lp, linear_lp = crf_refine(x, cluster_lp, pool).log(), crf_refine(x, linear_lp, pool).log()
            full = (image.height, image.width)
            cluster = F.interpolate(cluster_lp.float(), full, mode="bilinear", align_corners=False).argmax(1)[0]
            linear = F.interpolate(linear_lp.float(), full, mode="bilinear", align_corners=False).argmax(1)[0]
            cluster, linear = cluster.cpu().numpy().astype(np.uint8), linear.cpu().numpy().astype(np.uint8)
            _save_png(cluster, out_dir / f"{path.stem}_cluster.png")
            _save_png(linear, out_dir / f"{path.stem}_linear.png")
            _save_png(overlay(np.asarray(image), cluster.astype(np.int64), n_clusters), out_dir / f"{path.stem}_overlay.png")
    finally:
        if pool is not None:
            pool.close()
    log.info("wrote predictions for %d images to %s", len(paths), out_dir)
    return len(paths)
