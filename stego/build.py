"""Turn a Config into the objects a run needs: backbone, datasets, KNN table, feature store, model."""
import logging
from pathlib import Path

from .backbones import build_backbone
from .config import Config
from .data.commands import fivecrop_command, synthetic_command
from .data.datasets import build_dataset, cropped_dir, image_folder_dir
from .data.features import INDEX, CachedItems, CachedViews, FeatureSpec, build_store
from .data.fivecrop import check_crops_current
from .data.knn import KnnTable, TableSpec, mine_knn
from .data.memory import InMemory
from .errors import MissingFileError, StegoError
from .model import Stego
from .runtime import worker_count

log = logging.getLogger(__name__)


def reader_name(cfg: Config) -> str:
    """The reader behind a config's dataset ('synthetic' scenes are an image folder)."""
    return "imagefolder" if cfg.data.dataset == "synthetic" else cfg.data.dataset


def reader_options(cfg: Config, n_classes: int | None = None) -> dict:
    """Image folders take their class count from data.n_classes, else from ROOT/classes.txt (crops need it too),
    else from `n_classes` (the probes' at evaluation, so labels outside them are refused at their file)."""
    if reader_name(cfg) != "imagefolder":
        return {}
    if cfg.data.n_classes:
        return {"n_classes": cfg.data.n_classes}
    classes = Path(cfg.data.root) / "classes.txt"
    if classes.is_file():
        return {"n_classes": sum(1 for line in classes.read_text().splitlines() if line.strip())}
    return {"n_classes": n_classes} if n_classes else {}


def class_names(cfg: Config, n: int) -> list[str]:
    """The names of a config's n classes: its reader's, ROOT/classes.txt for image folders, else numbers."""
    from .data.datasets import DATASETS

    names = getattr(DATASETS.get(reader_name(cfg)), "class_names", None)
    classes = Path(cfg.data.root) / "classes.txt"
    if not names and reader_name(cfg) == "imagefolder" and classes.is_file():
        names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    return list(names) if names and len(names) == n else [f"class {k}" for k in range(n)]


def _require_synthetic(cfg: Config, split: str) -> None:
    """data.dataset=synthetic without its scenes: say how to generate them (before anything asks for crops)."""
    if cfg.data.dataset == "synthetic" and not (image_folder_dir(cfg.data.root) / split).is_dir():
        raise MissingFileError(f"{cfg.data.root}: no synthetic scenes of split {split!r}; generate them with "
                               f"`{synthetic_command(cfg.data.root)}`")


def backbone_for(cfg: Config, state_dict=None):
    """The config's backbone (a random init is train.seed's: the same after a resume and at evaluation)."""
    weights = state_dict if state_dict is not None else cfg.model.weights
    return build_backbone(cfg.model.backbone, weights=weights, seed=cfg.train.seed)


def train_dataset(cfg: Config, split: str = "train", labels: bool = True):
    """The training split: its five-crops (refused when their source images changed since) or whole images;
    labels=False never opens a label file (every pixel comes back ignored)."""
    _require_synthetic(cfg, split)
    name, options, five = reader_name(cfg), reader_options(cfg), cfg.data.crop == "five"
    if five:
        rebuild = fivecrop_command(name, cfg.data.root, split, cfg.data.crop_ratio, force=True,
                                   n_classes=cfg.data.n_classes if name == "imagefolder" else None)
        check_crops_current(cropped_dir(cfg.data.root, name, cfg.data.crop_ratio), split, rebuild)
    return _kept(cfg, build_dataset(name, cfg.data.root, split, res=cfg.data.res, crop=five,
                                    crop_ratio=cfg.data.crop_ratio, labels=labels, **options))


def val_dataset(cfg: Config, split: str = "val", n_classes: int | None = None):
    """The split scored at eval.res; `n_classes` (the probes') for an image folder that declares none."""
    _require_synthetic(cfg, split)
    return _kept(cfg, build_dataset(reader_name(cfg), cfg.data.root, split, res=cfg.eval.res,
                                    **reader_options(cfg, n_classes)))


def _kept(cfg: Config, dataset):
    """`dataset`, its items kept in RAM after their first read when data.in_memory."""
    return InMemory(dataset) if cfg.data.in_memory else dataset


def knn_spec(cfg: Config, split: str = "train") -> TableSpec:
    """The split's KNN table: its metadata and where it lives (a random-init backbone's table names its seed)."""
    return TableSpec(cfg.data.root, cfg.model.backbone, cfg.model.weights, reader_name(cfg), split, cfg.data.crop,
                     cfg.data.res, cfg.data.crop_ratio, cfg.train.seed)


def knn_table(cfg: Config, backbone, dataset, split: str = "train") -> KnnTable:
    """The split's KNN table, mined now (and saved under data.root/nns/, k = data.knn_k or every item of a smaller
    split) if it does not exist yet; an existing table serves when it holds the ranks training draws
    (k > data.num_neighbors), whatever its k."""
    spec = knn_spec(cfg, split)
    path, meta = spec.path, spec.meta()
    need = cfg.data.num_neighbors + 1
    if len(dataset) < need:
        raise StegoError(f"{cfg.data.root}: split {split!r} has {len(dataset)} training items, too few to draw KNN "
                         f"partners of ranks 1..{cfg.data.num_neighbors}; lower data.num_neighbors below "
                         f"{len(dataset)} or add images")
    if not Path(path).exists():
        log.info("no KNN table at %s yet: mining it now (once)", path)
    return mine_knn(backbone, dataset, path, meta, k=min(cfg.data.knn_k, len(dataset)),
                    workers=worker_count(cfg.data.workers), precision=cfg.train.precision, min_k=need,
                    root=cfg.data.root)


def feature_spec(cfg: Config, split: str = "train") -> FeatureSpec:
    """The split's feature store: its KNN table's identity, data.features_dtype and train.precision."""
    return FeatureSpec(knn_spec(cfg, split), cfg.data.features_dtype, cfg.train.precision)


def cached_items(cfg: Config, backbone, dataset, device, labels: bool = True, split: str = "train") -> CachedItems:
    """`dataset`'s items as their stored backbone features (data.features=cached): the store is built now, once,
    if it does not exist yet (parallel jobs wait for the first one's); one made for something else is an error."""
    return CachedItems(_store(cfg, feature_spec(cfg, split), backbone, dataset, device, labels=labels), labels)


def val_feature_spec(cfg: Config, split: str = "val") -> FeatureSpec:
    """The flip store evaluation reads for `split` (data.features=cached): whole images at eval.res, each with its
    horizontal flip, in data.features_dtype and train.precision."""
    table = TableSpec(cfg.data.root, cfg.model.backbone, cfg.model.weights, reader_name(cfg), split, "none",
                      cfg.eval.res, cfg.data.crop_ratio, cfg.train.seed)
    return FeatureSpec(table, cfg.data.features_dtype, cfg.train.precision, flip=True)


def cached_views(cfg: Config, backbone, dataset, device, split: str = "val") -> CachedViews:
    """`dataset` (the split scored) as its stored views for evaluation (without images: `.with_images()` adds
    them); the flip store is built now, once, in eval.batch_size forwards, if it does not exist yet."""
    store = _store(cfg, val_feature_spec(cfg, split), backbone, dataset, device, batch_size=cfg.eval.batch_size)
    return CachedViews(store, dataset)


def _store(cfg: Config, spec: FeatureSpec, backbone, dataset, device, **options):
    """The store `spec` names over `dataset`, opened, or built now under its lock (build_store's `options`)."""
    if not (spec.folder / INDEX).exists():
        log.info("no feature store at %s yet: building it now (once)", spec.folder)
    return build_store(backbone, dataset, spec.folder, spec.meta(), root=cfg.data.root, device=device,
                       workers=worker_count(cfg.data.workers), **options)


def model_for(cfg: Config, in_dim: int, n_classes: int) -> Stego:
    m = cfg.model
    return Stego(in_dim, m.dim, n_classes, m.projection, m.dropout, m.extra_clusters)
