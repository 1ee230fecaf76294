"""Read the authors' released STEGO checkpoints (Lightning files) without Lightning (docs/protocol.md §9).

`load_released_checkpoint` maps the release's head and probe weights onto `SegmentationHead`, `ClusterProbe` and
`LinearProbe`, strips the backbone's `net.model.` prefix (DINO key names, which timm shares), and turns the stored
training config (`hyper_parameters.cfg`) into plain dicts and this package's config keys.

The files are pickles, read by `stego.pickled` (weights-only unpickler, omegaconf stand-ins, nothing run).
"""
import dataclasses
import logging
import re
from pathlib import Path

from torch import Tensor

from . import build
from .config import Config, from_dict, with_overrides
from .download.places import release_dir
from .download.sources import CHECKPOINTS, DEFAULT_CHECKPOINTS
from .errors import MissingFileError, StegoError
from .model import ClusterProbe, LinearProbe, SegmentationHead, Stego
from .pickled import few, inert_globals, read_checkpoint, to_plain

log = logging.getLogger(__name__)


BACKBONE_NAMES = {
    ("vit_small", 8): "dino_vits8",
    ("vit_small", 16): "dino_vits16",
    ("vit_base", 8): "dino_vitb8",
    ("vit_base", 16): "dino_vitb16",
}
FEATURE_DIMS = {"vit_small": 384, "vit_base": 768}
DATASET_NAMES = {"cocostuff27": "cocostuff27", "cityscapes": "cityscapes27", "potsdam": "potsdam3"}
"""Release dataset_name -> ours; other names pass through unchanged."""

BACKBONE_PREFIX = "net.model."
_BACKBONE_KEY = re.compile(
    r"cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
)
_BACKBONE_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                      "norm.bias")
_LINEAR_BRANCH = {"net.cluster1.0.weight": "linear.weight", "net.cluster1.0.bias": "linear.bias"}
_MLP_BRANCH = {
    "net.cluster2.0.weight": "mlp.0.weight", "net.cluster2.0.bias": "mlp.0.bias",
    "net.cluster2.2.weight": "mlp.2.weight", "net.cluster2.2.bias": "mlp.2.bias",
}
HEAD_KEYS = {"nonlinear": {**_LINEAR_BRANCH, **_MLP_BRANCH}, "linear": dict(_LINEAR_BRANCH), "none": {}}
"""Release state_dict key -> our SegmentationHead key, per projection type."""
CLUSTER_KEYS = {"cluster_probe.clusters": "clusters"}
LINEAR_KEYS = {"linear_probe.weight": "conv.weight", "linear_probe.bias": "conv.bias"}
UNUSED_KEYS = frozenset(
    {"train_cluster_probe.clusters", "decoder.weight", "decoder.bias"}
    | {f"{m}_metrics.stats" for m in ("cluster", "linear", "test_cluster", "test_linear")}
)
"""Modules of the release's LightningModule that evaluation never reads (the metric states only if persisted)."""

_UNSUPPORTED_TRAINING = ("rec_weight", "aug_alignment_weight", "crf_weight", "repulsion_weight", "use_salience",
                         "use_true_labels")


@dataclasses.dataclass
class ReleasedCheckpoint:
    """A released checkpoint mapped onto this package: state dicts in our key names plus the stored config."""

    path: Path
    hparams: dict
    """The stored hyper_parameters as plain dicts/lists: 'n_classes' and 'cfg' (the release's training config)."""
    backbone_name: str
    backbone_state: dict
    """The DINO ViT's state dict, `net.model.` stripped; `build_backbone(backbone_name, weights=...)` takes it."""
    head_state: dict
    cluster_state: dict
    linear_state: dict
    config_overrides: dict
    """Our config sections (data/model/loss/train, as in stego/presets) with the values the checkpoint used."""

    @property
    def n_classes(self) -> int:
        return self.linear_state["conv.weight"].shape[0]

    @property
    def in_dim(self) -> int:
        return self.backbone_state["norm.weight"].shape[0]

    def build_modules(self) -> tuple[SegmentationHead, ClusterProbe, LinearProbe]:
        """Our head and probes holding the release's weights (strict loads), in eval mode."""
        model = self.config_overrides["model"]
        head = SegmentationHead(self.in_dim, model["dim"], model["projection"])
        head.load_state_dict(self.head_state, strict=True)
        clusters = self.cluster_state["clusters"]
        cluster_probe = ClusterProbe(clusters.shape[1], clusters.shape[0])
        cluster_probe.load_state_dict(self.cluster_state, strict=True)
        linear_probe = LinearProbe(self.linear_state["conv.weight"].shape[1], self.n_classes)
        linear_probe.load_state_dict(self.linear_state, strict=True)
        return head.eval(), cluster_probe.eval(), linear_probe.eval()


def released_path(path) -> Path:
    """`path`, or for a bare released file name not found here, that file in the release folder
    ($STEGO_RELEASE_DIR, default ./saved_models); a missing file says how to download it."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.name in CHECKPOINTS and (release_dir() / path.name).is_file():
        return release_dir() / path.name
    source = CHECKPOINTS.get(path.name)
    command = "stego weights download --release" + (f" {path.name}" if source else "")
    where = source.url if source else f"the release's files ({', '.join(DEFAULT_CHECKPOINTS)})"
    raise MissingFileError(f"released checkpoint {path} not found: fetch it with `{command}` (into {release_dir()}), "
                           f"or download {where} by hand and pass its path")


def load_released_checkpoint(path, trusted: bool = False) -> ReleasedCheckpoint:
    """Read a released STEGO Lightning checkpoint and map it onto our modules and config.

    trusted: accept pickled objects other than tensors, containers and omegaconf configs inside the state dict and
    hyper-parameters (read as inert placeholders). Elsewhere (e.g. the callback state of Lightning < 1.5, keyed by
    the ModelCheckpoint class) they are placeholders that evaluation never reads, so no trust is needed. Unknown or
    missing state_dict keys, and tensors that disagree with the stored config, are one-line StegoErrors naming the
    file.
    """
    path = released_path(path)
    raw = read_checkpoint(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise StegoError(f"{path} has no 'state_dict': it is not a Lightning checkpoint of the STEGO release")
    if "hyper_parameters" not in raw:
        raise StegoError(f"{path} has no 'hyper_parameters': it is not a Lightning checkpoint of the STEGO release")
    hparams = to_plain(raw["hyper_parameters"])
    needed = inert_globals(raw["state_dict"], hparams)
    if needed and not trusted:
        raise StegoError(f"{path}: its state dict or hyper-parameters pickle objects other than tensors and configs "
                         f"({few(needed)}); checkpoints are pickles: if you trust the file's source, pass "
                         f"--trust-checkpoint (trusted=True) to read them as inert placeholders (nothing runs)")
    ignored = inert_globals({k: v for k, v in raw.items() if k not in ("state_dict", "hyper_parameters")})
    if ignored:
        log.debug("%s: pickled objects outside what evaluation reads, kept as inert placeholders: %s", path,
                  few(ignored))
    cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
    if not isinstance(cfg, dict):
        raise StegoError(f"{path}: hyper_parameters holds no 'cfg' config mapping; is it a STEGO release checkpoint?")
    n_classes = hparams.get("n_classes")
    if type(n_classes) is not int or n_classes < 1:
        raise StegoError(f"{path}: hyper_parameters.n_classes is {n_classes!r}, not a positive integer")
    state = raw["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise StegoError(f"{path}: state_dict entries that are not named tensors: {few(bad)}")
    model = _model_section(cfg, n_classes, path)
    backbone_name = BACKBONE_NAMES[(cfg["model_type"], model["patch"])]
    _check_keys(state, model["projection"], path)
    _check_shapes(state, cfg, model, n_classes, path)
    backbone_state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    overrides = _overrides(cfg, path)
    overrides["model"] = {
        "backbone": backbone_name, "dim": model["dim"], "projection": model["projection"], "dropout": 0.1,
        "n_classes": n_classes, "n_clusters": state["cluster_probe.clusters"].shape[0],
    }
    log.info("read released checkpoint %s: %s, dim %d, %s head, %d classes", path, backbone_name, model["dim"],
             model["projection"], n_classes)
    return ReleasedCheckpoint(
        path=path,
        hparams=hparams,
        backbone_name=backbone_name,
        backbone_state=backbone_state,
        head_state={ours: state[theirs] for theirs, ours in HEAD_KEYS[model["projection"]].items()},
        cluster_state={ours: state[theirs] for theirs, ours in CLUSTER_KEYS.items()},
        linear_state={ours: state[theirs] for theirs, ours in LINEAR_KEYS.items()},
        config_overrides=overrides,
    )


# ---- checking and mapping ----------------------------------------------------------------------------------------


def _model_section(cfg: dict, n_classes: int, path: Path) -> dict:
    """Backbone patch, code dim and projection from the stored config, checked against what we can build."""
    for key in ("model_type", "dino_patch_size", "projection_type"):
        if key not in cfg:
            raise StegoError(f"{path}: the stored cfg has no {key!r}; is it a STEGO release checkpoint?")
    arch, feat_type = cfg.get("arch", "dino"), cfg.get("dino_feat_type", "feat")
    if arch != "dino" or feat_type != "feat":
        raise StegoError(f"{path}: cfg arch={arch!r}, dino_feat_type={feat_type!r}; only the release's DINO "
                         f"models (arch 'dino', dino_feat_type 'feat') can be loaded")
    key = (cfg["model_type"], cfg["dino_patch_size"])
    if key not in BACKBONE_NAMES:
        raise StegoError(f"{path}: cfg model_type={key[0]!r}, dino_patch_size={key[1]!r} is not a DINO backbone "
                         f"we know (vit_small/vit_base with patch 8/16)")
    projection = {"nonlinear": "nonlinear", "linear": "linear", None: "none"}.get(cfg["projection_type"])
    if projection is None:
        raise StegoError(f"{path}: cfg projection_type={cfg['projection_type']!r}; expected 'nonlinear', 'linear' "
                         f"or null")
    continuous = cfg.get("continuous", True)
    if continuous is not True and continuous is not False:
        raise StegoError(f"{path}: cfg continuous={continuous!r}; expected true or false")
    if continuous and "dim" not in cfg:
        raise StegoError(f"{path}: the stored cfg has no 'dim'; is it a STEGO release checkpoint?")
    dim = _int(cfg["dim"], path, "dim") if continuous else n_classes
    if projection == "none":
        dim = FEATURE_DIMS[cfg["model_type"]]
    return {"patch": cfg["dino_patch_size"], "dim": dim, "projection": projection}


def _check_keys(state: dict, projection: str, path: Path) -> None:
    head = HEAD_KEYS[projection]
    unknown = [
        k for k in state
        if not (k.startswith(BACKBONE_PREFIX) and _BACKBONE_KEY.fullmatch(k[len(BACKBONE_PREFIX):]))
        and k not in head and k not in CLUSTER_KEYS and k not in LINEAR_KEYS and k not in UNUSED_KEYS
    ]
    if unknown:
        raise StegoError(f"{path}: unknown state_dict key(s) {few(unknown)} for a release checkpoint with a "
                         f"{projection!r} head; is the file a STEGO DINO checkpoint with its own config?")
    required = [*(BACKBONE_PREFIX + k for k in _BACKBONE_REQUIRED), *head, *CLUSTER_KEYS, *LINEAR_KEYS]
    missing = [k for k in required if k not in state]
    if missing:
        raise StegoError(f"{path}: missing state_dict key(s) {few(missing)} for a {projection!r} head; the file "
                         f"is incomplete or not a STEGO release checkpoint")


def _check_shapes(state: dict, cfg: dict, model: dict, n_classes: int, path: Path) -> None:
    c, p, d = FEATURE_DIMS[cfg["model_type"]], model["patch"], model["dim"]
    n_clusters = n_classes + _int(cfg.get("extra_clusters", 0), path, "extra_clusters")
    expected = {
        "net.model.norm.weight": (c,), "net.model.patch_embed.proj.weight": (c, 3, p, p),
        "net.cluster1.0.weight": (d, c, 1, 1), "net.cluster1.0.bias": (d,),
        "net.cluster2.0.weight": (c, c, 1, 1), "net.cluster2.0.bias": (c,),
        "net.cluster2.2.weight": (d, c, 1, 1), "net.cluster2.2.bias": (d,),
        "cluster_probe.clusters": (n_clusters, d),
        "linear_probe.weight": (n_classes, d, 1, 1), "linear_probe.bias": (n_classes,),
    }
    wrong = [f"{k} {tuple(state[k].shape)} != {shape}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    if wrong:
        raise StegoError(
            f"{path}: tensors disagree with the stored config (model_type={cfg['model_type']}, "
            f"dino_patch_size={p}, dim={d}, n_classes={n_classes}, extra_clusters={n_clusters - n_classes}): "
            f"{'; '.join(wrong[:3])}; the file's weights and config do not belong together"
        )


def _overrides(cfg: dict, path: Path) -> dict:
    """Our data/loss/train config values from the release cfg keys that are present."""
    out = {"data": {}, "loss": {}, "train": {}}
    for theirs, section, ours, convert in _CFG_MAP:
        if theirs in cfg:
            out[section][ours] = convert(cfg[theirs], path, theirs)
    weight = _number(cfg.get("correspondence_weight", 1.0), path, "correspondence_weight")
    for key in ("lambda_self", "lambda_knn", "lambda_rand"):
        if key in out["loss"]:
            out["loss"][key] *= weight
    extras = [k for k in _UNSUPPORTED_TRAINING if cfg.get(k)]
    if cfg.get("dropout") is False:  # the release's switch for the teacher features' dropout only
        extras.append("dropout: false")
    if extras:
        log.warning("%s was trained with options this package does not implement (%s); its config_overrides "
                    "describe the correspondence loss only", path, ", ".join(extras))
    return out


def _int(value, path, key) -> int:
    if type(value) is not int:
        raise StegoError(f"{path}: cfg {key}={value!r}; expected an integer")
    return value


def _number(value, path, key) -> float:
    # PyYAML reads '5e-4' (no dot) as a string; accept numeric strings
    if type(value) is str:
        try:
            return float(value)
        except ValueError:
            pass
    if type(value) not in (int, float):
        raise StegoError(f"{path}: cfg {key}={value!r}; expected a number")
    return float(value)


def _bool(value, path, key) -> bool:
    if type(value) is not bool:
        raise StegoError(f"{path}: cfg {key}={value!r}; expected true or false")
    return value


def _pointwise(value, path, key) -> str:
    return "release" if _bool(value, path, key) else "off"


def _crop(value, path, key) -> str:
    if value is None or value == "None":
        return "none"
    if type(value) is not str:
        raise StegoError(f"{path}: cfg {key}={value!r}; expected a crop type name")
    return value


def _dataset(value, path, key) -> str:
    if type(value) is not str:
        raise StegoError(f"{path}: cfg {key}={value!r}; expected a dataset name")
    return DATASET_NAMES.get(value, value)


_CFG_MAP = (
    ("dataset_name", "data", "dataset", _dataset),
    ("crop_type", "data", "crop", _crop),
    ("crop_ratio", "data", "crop_ratio", _number),
    ("res", "data", "res", _int),
    ("num_neighbors", "data", "num_neighbors", _int),
    ("pos_intra_weight", "loss", "lambda_self", _number),
    ("pos_inter_weight", "loss", "lambda_knn", _number),
    ("neg_inter_weight", "loss", "lambda_rand", _number),
    ("pos_intra_shift", "loss", "b_self", _number),
    ("pos_inter_shift", "loss", "b_knn", _number),
    ("neg_inter_shift", "loss", "b_rand", _number),
    ("pointwise", "loss", "pointwise", _pointwise),
    ("zero_clamp", "loss", "zero_clamp", _bool),
    ("stabalize", "loss", "stabilize", _bool),
    ("feature_samples", "loss", "feature_samples", _int),
    ("neg_samples", "loss", "neg_samples", _int),
    ("batch_size", "train", "batch_size", _int),
    ("max_steps", "train", "iterations", _int),
    ("lr", "train", "lr", _number),
)
"""(release cfg key, our section, our key, converter). The release's max_steps counts batches (docs/protocol.md §5)."""


def released_for_eval(path: Path, cfg: Config | None, trusted: bool, overrides=()):
    """(config, model, backbone) from an authors' released Lightning checkpoint; its stored config decides the
    model, a given config (preset) only supplies data location and evaluation settings."""
    released = load_released_checkpoint(path, trusted=trusted)
    sections = {section: dict(values) for section, values in released.config_overrides.items()}
    model_keys = {k: v for k, v in sections.pop("model").items() if k not in ("n_classes", "n_clusters")}
    stored = from_dict({**sections, "model": model_keys, "name": path.stem, "follows": "release"}, source=str(path))
    if cfg is not None:
        cfg.model, cfg.loss = stored.model, stored.loss
        cfg.name = cfg.name if cfg.name != "custom" else path.stem
    else:
        cfg = with_overrides(stored, list(overrides))
    head, cluster_probe, linear_probe = released.build_modules()
    model = Stego(released.in_dim, cfg.model.dim, released.n_classes, cfg.model.projection)
    model.head, model.cluster_probe, model.linear_probe = head, cluster_probe, linear_probe
    backbone = build.backbone_for(cfg, state_dict=released.backbone_state)
    return cfg, model, backbone
