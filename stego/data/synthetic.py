"""Seeded synthetic scenes in the image-folder layout: a small world in which STEGO has something to learn.

Each class is a family of appearance modes (its own colours and speckle textures) that share one weaker
signature, an oriented grating of class-specific orientation and frequency. A fixed colour/texture
featurizer therefore sees mostly mode variance (clustering it fragments classes) plus a weak cross-mode
class signal that correspondences across images can pick up (paper §3.1). Per-image nuisance (gain,
offset, colour cast, noise) keeps images of the same content apart.
"""
import colorsys
import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from stego.errors import StegoError
from stego.io import atomic_save_json, atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SceneSpec:
    """What the synthetic world looks like and how many images each split holds."""

    n_classes: int = 5
    modes_per_class: int = 3
    size: int = 64
    n_train: int = 200
    n_val: int = 50
    min_regions: int = 2
    max_regions: int = 4
    signature: float = 0.12
    """Amplitude of the class grating (intensity units in [0, 1]); the shared, weaker class signal."""
    gain: float = 0.25
    offset: float = 0.08
    cast: float = 0.10
    noise: float = 0.03
    """Per-image nuisance: gain in 1±gain, offset in ±offset, per-channel cast in 1±cast, noise std ≤ noise."""
    world_seed: int = 0
    """Seeds the class appearances (colours, textures, gratings); image draws use make_scenes' seed."""

    def __post_init__(self):
        if self.n_classes < 1 or self.n_classes > 255 or self.modes_per_class < 1:
            raise StegoError(f"SceneSpec: need 1..255 classes and ≥1 mode, got {self.n_classes}, "
                             f"{self.modes_per_class}")
        if not 1 <= self.min_regions <= self.max_regions <= self.n_classes:
            raise StegoError(f"SceneSpec: need 1 ≤ min_regions ≤ max_regions ≤ n_classes, got "
                             f"{self.min_regions}, {self.max_regions}, {self.n_classes}")
        if self.size < 8:
            raise StegoError(f"SceneSpec: size must be at least 8 pixels, got {self.size}")

    def count(self, split):
        """Number of images in `split`."""
        return {"train": self.n_train, "val": self.n_val}[split]


@dataclass(frozen=True)
class World:
    """Class appearances: colours[c, m] RGB in [0,1], speckle contrast/scale per mode, grating per class."""

    colours: np.ndarray
    speckle_contrast: np.ndarray
    speckle_scale: np.ndarray
    orientation: np.ndarray
    frequency: np.ndarray


@functools.lru_cache(maxsize=8)
def scene_world(spec):
    """The class appearance table of `spec` (drawn from spec.world_seed, so identical for every split)."""
    rng = np.random.default_rng([FORMAT_VERSION, spec.world_seed, spec.n_classes, spec.modes_per_class])
    c, m = spec.n_classes, spec.modes_per_class
    hues = (np.arange(c * m) + rng.uniform(-0.3, 0.3, c * m)) / (c * m)
    hues = rng.permutation(hues).reshape(c, m) % 1.0
    sats = rng.uniform(0.45, 0.9, (c, m))
    vals = rng.uniform(0.4, 0.85, (c, m))
    colours = np.array([[colorsys.hsv_to_rgb(hues[i, j], sats[i, j], vals[i, j]) for j in range(m)]
                        for i in range(c)])
    orientation = (np.arange(c) + rng.uniform(-0.1, 0.1, c)) * np.pi / c
    frequency = np.where(np.arange(c) % 2 == 0, 0.16, 0.24) * rng.uniform(0.95, 1.05, c)
    return World(
        colours=colours,
        speckle_contrast=rng.uniform(0.05, 0.35, (c, m)),
        speckle_scale=rng.choice([0.7, 1.2, 2.0], (c, m)),
        orientation=orientation,
        frequency=frequency,
    )


def _smooth_noise(rng, size, sigma):
    """A unit-std Gaussian random field on size×size pixels with correlation length ~sigma."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _warped_voronoi(rng, size, n_cells):
    """Blob-shaped cells: nearest of n_cells random seeds under a smoothly warped distance."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    seeds = rng.uniform(0, size, (n_cells, 2))
    dist = np.stack([np.hypot(yy - sy, xx - sx) + 0.15 * size * _smooth_noise(rng, size, size / 8)
                     for sy, sx in seeds])
    return dist.argmin(0)


def render_scene_modes(rng, spec):
    """Draw one scene: (uint8 H×W×3 image, uint8 H×W class label, int H×W mode id = class·M + mode)."""
    world = scene_world(spec)
    size, m_per = spec.size, spec.modes_per_class
    n_regions = int(rng.integers(spec.min_regions, spec.max_regions + 1))
    region_class = rng.choice(spec.n_classes, n_regions, replace=False)
    regions = _warped_voronoi(rng, size, n_regions)
    n_blocks = int(rng.integers(2, 5))
    blocks = _warped_voronoi(rng, size, n_blocks)
    block_mode = rng.integers(0, m_per, (n_regions, n_blocks))

    label = region_class[regions]
    mode = block_mode[regions, blocks]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.zeros((size, size, 3))
    for r in range(n_regions):
        c = region_class[r]
        theta = world.orientation[c] + rng.uniform(-0.05, 0.05)
        phase = rng.uniform(0, 2 * np.pi)
        grating = np.sin(2 * np.pi * world.frequency[c] * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        for j in range(m_per):
            mask = (regions == r) & (mode == j)
            if not mask.any():
                continue
            speckle = _smooth_noise(rng, size, world.speckle_scale[c, j])
            shade = 1 + world.speckle_contrast[c, j] * speckle[mask]
            image[mask] = world.colours[c, j] * shade[:, None] + spec.signature * grating[mask][:, None]

    gain = 1 + rng.uniform(-spec.gain, spec.gain)
    cast = 1 + rng.uniform(-spec.cast, spec.cast, 3)
    offset = rng.uniform(-spec.offset, spec.offset)
    noise_std = rng.uniform(0, spec.noise)
    image = image * gain * cast + offset + noise_std * rng.standard_normal(image.shape)
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return image, label.astype(np.uint8), (label * m_per + mode).astype(np.int64)


def render_scene(rng, spec):
    """Draw one scene as (uint8 H×W×3 image, uint8 H×W label) for in-memory use."""
    image, label, _ = render_scene_modes(rng, spec)
    return image, label


def scene_rng(seed, split, index):
    """The generator of image `index` of `split`: independent per image, so any subset can be redrawn."""
    return np.random.default_rng([FORMAT_VERSION, seed, SPLITS.index(split), index])


def _spec_record(spec, seed):
    return {"format_version": FORMAT_VERSION, "seed": seed, "spec": asdict(spec)}


def _check_folder(root, record):
    """Refuse to write into a folder that holds another dataset (another spec, or not synthetic at all)."""
    spec_file = root / "spec.json"
    if spec_file.exists():
        found = json.loads(spec_file.read_text())
        if found != json.loads(json.dumps(record)):
            raise StegoError(f"{spec_file}: holds a synthetic dataset with another spec or seed; "
                             f"choose another --out folder or delete this one")
        return
    if any((root / sub).exists() for sub in ("images", "labels", "classes.txt")):
        raise StegoError(f"{root}: holds files but no spec.json, so it is not a synthetic dataset folder; "
                         f"choose another --out folder or delete this one")


def _save_png(array, path):
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def make_scenes(root, spec=SceneSpec(), seed=0):
    """Write the dataset to ROOT/{images,labels}/<split>/<name>.png and ROOT/classes.txt; return ROOT.

    Deterministic (same spec and seed give byte-identical files) and idempotent: files already there are
    kept, so a complete dataset is not rewritten and an interrupted one is finished. spec.json records what
    the folder holds; a different spec or seed there is an error.
    """
    root = Path(root)
    record = _spec_record(spec, seed)
    _check_folder(root, record)
    if not (root / "spec.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        atomic_save_json(record, root / "spec.json")
    classes = "".join(f"class{c}\n" for c in range(spec.n_classes))
    if not (root / "classes.txt").exists():
        with atomic_write(root / "classes.txt", "w") as f:
            f.write(classes)
    written = 0
    for split in SPLITS:
        n = spec.count(split)
        for i in tqdm(range(n), desc=f"synthetic {split}", disable=n < 50, leave=False):
            name = f"{i:05d}.png"
            img_path, lbl_path = root / "images" / split / name, root / "labels" / split / name
            if img_path.exists() and lbl_path.exists():
                continue
            image, label = render_scene(scene_rng(seed, split, i), spec)
            _save_png(image, img_path)
            _save_png(label, lbl_path)
            written += 1
    log.info("synthetic scenes in %s: %d images written", root, written)
    return root


def add_cli(data_subparsers):
    """Register `synthetic --out DIR [--seed S] [--train N] [--val N] [--size PX]`."""
    p = data_subparsers.add_parser(
        "synthetic", help="write a seeded synthetic scene dataset (image-folder layout)",
        description="Seeded scenes whose classes are families of colour/texture appearances that share a weaker "
                    "grating signature: a small world in which STEGO has something to learn (the demo's). Written "
                    "as OUT/images/<split>/, OUT/labels/<split>/ and OUT/classes.txt; train on it with "
                    "data.dataset=synthetic data.root=OUT. Re-running keeps what is there.")
    p.add_argument("--out", required=True, type=Path, help="output folder (the data root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=SceneSpec.n_train, help="number of training images")
    p.add_argument("--val", type=int, default=SceneSpec.n_val, help="number of validation images")
    p.add_argument("--size", type=int, default=SceneSpec.size, help="image side in pixels")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args):
    spec = SceneSpec(n_train=args.train, n_val=args.val, size=args.size)
    print(make_scenes(args.out, spec, args.seed))
    return 0
