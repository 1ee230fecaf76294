"""`stego predict`: segment your own images (a folder or one file) with a checkpoint.

Per image: <name>_cluster.png and <name>_linear.png (class ids as palette PNGs: the pixel values are the ids, the
colours those of the overlays), <name>_cluster_overlay.png and <name>_linear_overlay.png, all at the image's own
size; legend.csv maps each id to its colour and name. Any file Pillow can read is an image; every file skipped
(not an image, unreadable) is reported and listed in skipped.txt. Distinct inputs always get distinct outputs.
"""
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from . import build
from .data.transforms import image_to_tensor, normalize
from .errors import MissingFileError, StegoError
from .checkpoint import load_for_eval
from .inference import crf_pool, crf_refine, predict_log_probs
from .figures import overlay, palette
from .io import atomic_write, save_png, writable_folder
from .runtime import pick_device, set_tf32

log = logging.getLogger(__name__)

PROBES = ("cluster", "linear")


@dataclass
class Prediction:
    """What `predict_images` did: outputs written per input, and the files it skipped with why."""

    out_dir: Path
    written: dict = field(default_factory=dict)
    """input path -> output base name (the outputs are <base>_cluster.png, ...)."""
    skipped: list = field(default_factory=list)
    """(path, reason) of every file that was not segmented."""


def network_size(width: int, height: int, res: int, patch: int) -> tuple[int, int]:
    """Size (W, H) fed to the network: shorter side `res`, both sides rounded to a multiple of the patch."""
    scale = res / min(width, height)
    return (max(patch, round(width * scale / patch) * patch), max(patch, round(height * scale / patch) * patch))


def input_files(images) -> list[Path]:
    """The files to segment: `images` itself, or every visible file of the folder, sorted."""
    images = Path(images)
    if images.is_file():
        return [images]
    if not images.is_dir():
        raise MissingFileError(f"{images}: no such file or folder; pass --images DIR (or one image file)")
    files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise StegoError(f"{images}: the folder holds no files to segment")
    return files


def output_bases(paths: list[Path]) -> dict:
    """A distinct output base per input: its stem, or its full name where stems collide (x.jpg and x.png), with
    a counter as the last resort."""
    stems = [p.stem for p in paths]
    bases, taken = {}, set()
    for path in paths:
        base = path.stem if stems.count(path.stem) == 1 else path.name
        candidate, k = base, 2
        while candidate in taken:
            candidate, k = f"{base}~{k}", k + 1
        taken.add(candidate)
        bases[path] = candidate
    return bases


def _read(path: Path):
    """(RGB image, None) or (None, why it is skipped)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB"), None
    except UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"cannot decode the image ({' '.join(str(err).split()) or type(err).__name__})"


def _save_ids(ids: np.ndarray, colours: np.ndarray, path: Path) -> None:
    """Class ids as a palette PNG: pixel value = id, shown in the overlay's colours (16-bit grey past 256 ids)."""
    if len(colours) > 256:
        save_png(ids.astype(np.uint16), path)
    else:
        save_png(ids.astype(np.uint8), path, palette=colours)


def write_legend(path: Path, names: dict) -> None:
    """legend.csv: probe, id, colour (#rrggbb) and name of every id a label PNG may hold."""
    with atomic_write(path, "w", durable=False) as f:
        writer = csv.writer(f)
        writer.writerow(["probe", "id", "color", "name"])
        for probe, labels in names.items():
            for k, (name, rgb) in enumerate(zip(labels, palette(len(labels)))):
                writer.writerow([probe, k, "#" + "".join(f"{c:02x}" for c in rgb), name])


def predict_images(checkpoint, images, out_dir, crf: bool = False, trusted: bool = False, cfg=None,
                   overrides=()) -> Prediction:
    """Segment `images` (a folder, or one file) into `out_dir`; see the module docstring for the outputs.

    Each image is resized (shorter side = the config's eval resolution, sides multiples of the patch),
    segmented, and its predictions are upsampled back to the image's own size, so outputs align with its pixels.
    """
    paths = input_files(images)
    out = writable_folder(out_dir, "--out")
    cfg, model, backbone = load_for_eval(checkpoint, cfg, trusted, overrides)
    device = pick_device(cfg.train.device)
    set_tf32(device, cfg.train.precision)
    model, backbone = model.to(device).eval(), backbone.to(device)
    n_clusters = model.cluster_probe.clusters.shape[0]
    names = {"cluster": [f"cluster {k}" for k in range(n_clusters)],
             "linear": build.class_names(cfg, model.n_classes)}
    colours = {probe: palette(len(labels)) for probe, labels in names.items()}
    result = Prediction(out)
    bases = output_bases(paths)
    pool = crf_pool(cfg) if crf else None
    try:
        for path in tqdm(paths, desc="predict", unit="img", dynamic_ncols=True):
            image, why = _read(path)
            if image is None:
                log.warning("skipping %s: %s", path, why)
                result.skipped.append((path, why))
                continue
            size = network_size(image.width, image.height, cfg.eval.res, backbone.patch)
            x = normalize(image_to_tensor(image.resize(size, Image.BILINEAR)))[None].to(device)
            log_probs = dict(zip(PROBES, predict_log_probs(model, backbone, x, x.shape[-2:],
                                                           cfg.train.precision)))
            if crf:
                log_probs = {probe: crf_refine(x, lp, pool).log() for probe, lp in log_probs.items()}
            rgb = np.asarray(image)
            for probe, lp in log_probs.items():
                ids = F.interpolate(lp.float(), (image.height, image.width), mode="bilinear", align_corners=False)
                ids = ids.argmax(1)[0].cpu().numpy()
                _save_ids(ids, colours[probe], out / f"{bases[path]}_{probe}.png")
                save_png(overlay(rgb, ids.astype(np.int64), len(names[probe])),
                         out / f"{bases[path]}_{probe}_overlay.png")
            result.written[path] = bases[path]
    finally:
        if pool is not None:
            pool.close()
    write_legend(out / "legend.csv", names)
    if result.skipped:
        with atomic_write(out / "skipped.txt", "w", durable=False) as f:
            f.writelines(f"{p}\t{why}\n" for p, why in result.skipped)
    else:
        (out / "skipped.txt").unlink(missing_ok=True)
    log.info("wrote predictions for %d images to %s (%d skipped)", len(result.written), out, len(result.skipped))
    return result
