"""Typed run configuration: dataclasses, YAML presets under stego/presets/, and `key=value` overrides.

A preset is a YAML mapping of sections (data, model, loss, train, eval) to fields; anything not given keeps
the dataclass default. Overrides use dotted keys (`loss.b_rand=0.3`, `train.iterations=100`) and YAML values.
Every field carries its rule beside it (`checked(...)`); a config that breaks one is a one-line error naming the
key, where it came from (the preset file or the override) and, for a misspelling, the closest valid name.
"""
import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import MissingFileError, StegoError

PRESET_DIR = Path(__file__).parent / "presets"
PROJECTIONS = ("nonlinear", "linear", "none", "pca", "random")
POINTWISE = ("release", "paper", "off")
CROPS = ("five", "none")
FEATURES = ("images", "cached")
FEATURE_DTYPES = ("float16", "float32")


def _closest(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def checked(default, rule: str, check, choices=None, **kwargs):
    """A dataclass field with its rule: `check(value)` must hold, `rule` says so in words for the error."""
    return field(default=default, metadata={"rule": rule, "check": check, "choices": choices}, **kwargs)


def at_least(default, low):
    return checked(default, f"at least {low}", lambda v: v >= low)


def one_of(default, choices):
    return checked(default, f"one of {', '.join(map(str, choices))}", lambda v: v in choices, choices)


def check_fields(obj, section: str) -> None:
    """Raise a one-line StegoError for the first field of `obj` that breaks its rule (section "" for top-level keys)."""
    for f in dataclasses.fields(obj):
        if "check" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        try:
            ok = f.metadata["check"](value)
        except TypeError:
            ok = False
        if not ok:
            hint = _closest(value, f.metadata["choices"]) if f.metadata["choices"] else ""
            raise StegoError(f"{section + '.' if section else ''}{f.name} must be {f.metadata['rule']}, got "
                             f"{value!r}{hint}")


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """cocostuff27, cityscapes27, potsdam3, imagefolder or synthetic (generated image folder)."""
    root: str = "data"
    """Folder holding the dataset folders (cocostuff/, cityscapes/, potsdam/, …) and nns/ for KNN tables."""
    crop: str = one_of("none", CROPS)
    """'five' to train on five-crops (ratio crop_ratio), 'none' for whole images."""
    crop_ratio: float = checked(0.5, "in (0, 1]", lambda v: 0 < v <= 1)
    res: int = at_least(224, 1)
    num_neighbors: int = at_least(7, 1)
    """KNN partners are drawn from ranks 1..num_neighbors."""
    knn_k: int = at_least(30, 2)
    """Neighbours kept when a KNN table is mined (self included); any table with k > num_neighbors serves."""
    workers: int = at_least(-1, -1)
    """DataLoader worker processes; -1: one per CPU this process may use, less one, at most 16 (runtime.workers)."""
    in_memory: bool = False
    """Keep every decoded, resized item in RAM after its first read (per worker): for datasets that fit."""
    n_classes: int = at_least(0, 0)
    """Classes of an image-folder dataset (0: read from classes.txt); fixed by the reader for the benchmarks."""
    features: str = one_of("images", FEATURES)
    """'cached': train on the backbone features kept in a store under ROOT/features/ (built on first use; no
    backbone forward per step), 'images': run the backbone on every batch (docs/features.md)."""
    features_dtype: str = one_of("float16", FEATURE_DTYPES)
    """The cached features' value type: float16 (half the size; rounds the features) or float32."""

    def __post_init__(self):
        check_fields(self, "data")
        if self.knn_k <= self.num_neighbors:
            raise StegoError(f"data.knn_k={self.knn_k} must exceed data.num_neighbors={self.num_neighbors}: a table "
                             f"keeps ranks 0..k-1 and training draws ranks 1..num_neighbors")


@dataclass
class ModelConfig:
    backbone: str = "dino_vitb8"
    weights: str | None = None
    """Backbone weight file; None finds the official file ($STEGO_WEIGHTS_DIR, torch hub cache, download)."""
    dim: int = at_least(90, 1)
    projection: str = one_of("nonlinear", PROJECTIONS)
    dropout: float = checked(0.1, "in [0, 1)", lambda v: 0 <= v < 1)
    extra_clusters: int = at_least(0, 0)

    def __post_init__(self):
        check_fields(self, "model")


@dataclass
class LossConfig:
    """Weights λ and shifts b of the three terms, and the switches of the paper's ablations."""

    lambda_self: float = at_least(0.1, 0)
    lambda_knn: float = at_least(1.0, 0)
    lambda_rand: float = at_least(0.1538476246415498, 0)
    b_self: float = 0.12
    b_knn: float = 0.2
    b_rand: float = 1.0
    pointwise: str = one_of("release", POINTWISE)
    """Spatial centering: 'release' (global-mean add-back), 'paper' (eq. 3, no add-back) or 'off'."""
    zero_clamp: bool = True
    stabilize: bool = False
    """The release's off-by-default upper clamp of the code correlation at 0.8."""
    feature_samples: int = at_least(11, 1)
    neg_samples: int = at_least(5, 0)

    def __post_init__(self):
        check_fields(self, "loss")


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    batch_size: int = at_least(32, 1)
    """Per process; the effective batch is batch_size × world size (logged)."""
    iterations: int = at_least(7000, 1)
    """Counted as batches (the release's meaning of max_steps)."""
    lr: float = at_least(5e-4, 0)
    probe_lr: float = at_least(5e-3, 0)
    seed: int = at_least(0, 0)
    checkpoint_every: int = at_least(1000, 1)
    log_every: int = at_least(10, 1)
    hist_every: int = at_least(100, 0)
    """Iterations between code-correlation histograms (code_corr_hist.json; 0: never)."""
    val_every: int = at_least(0, 0)
    """0: no validation during training."""
    select_on_val: bool = False
    """Keep the checkpoint with the best validation cluster mIoU instead of the last (the authors' practice)."""
    device: str = checked("auto", "auto, cpu, cuda, cuda:N or mps",
                          lambda v: v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit()), DEVICES)
    precision: str = one_of("fp32", PRECISIONS)
    """The backbone's arithmetic in training, evaluation, analysis and KNN mining, on every device: 'fp32' (the
    release's; on CUDA with TF32 off) or 'bf16' autocast (faster on GPUs; TF32 allowed; docs/protocol.md §12)."""
    threads: int = at_least(0, 0)
    """CPU threads for torch (0: torch's default). Small CPU runs are faster on 1: extra threads only spin."""
    tensorboard: bool = False
    """Also write the training scalars and histograms as TensorBoard events (run folder's tensorboard/)."""
    wandb: str | None = None
    """A Weights & Biases project to log the training scalars to (pip install wandb; WANDB_MODE=offline works)."""

    def __post_init__(self):
        check_fields(self, "train")


@dataclass
class EvalConfig:
    res: int = at_least(320, 1)
    batch_size: int = at_least(8, 1)
    crf: bool = True
    crf_workers: int = at_least(-1, -1)
    """DenseCRF worker processes (0: serial in this process); -1: one per CPU this process may use."""
    crf_timeout: float = checked(120.0, "positive", lambda v: v > 0)
    max_images: int = at_least(0, 0)
    """0: the whole split."""
    bootstrap_resamples: int = checked(1000, "0 or at least 2", lambda v: v == 0 or v >= 2)
    """Percentile-bootstrap resamples over images behind every interval of an eval record (0: no intervals)."""
    bootstrap_seed: int = at_least(0, 0)
    cluster_restarts: int = at_least(5, 0)
    """Seeded refits of the cluster probe on the trained head's codes, scored beside it (stego.refits; 0: none)."""
    overclustering: bool = True
    """Also refit the cluster probe with K = 1…3 × classes and score it many-to-one (the over-clustering curve)."""

    def __post_init__(self):
        check_fields(self, "eval")


FOLLOWS = ("release", "paper", "ours")


@dataclass
class Config:
    name: str = "custom"
    follows: str = one_of("release", FOLLOWS)
    """Which source the values follow: 'release' (the authors' checkpoints), 'paper' (Table 6) or 'ours'."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check_fields(self, "")
        if self.loss.neg_samples and self.loss.lambda_rand and self.train.batch_size < 2:
            raise StegoError("train.batch_size must be at least 2 while the random term is on (loss.lambda_rand > 0, "
                             "loss.neg_samples > 0): an image needs another image of its batch to be paired with")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """`to_dict` without the machine settings (MACHINE_KEYS), which do not change any result, nor the feature
        cache's dtype when the run reads images: what a resumed or reused run must match."""
        values = self.to_dict()
        for section, key in MACHINE_KEYS:
            del values[section][key]
        if values["data"]["features"] == "images":  # the run it was before the cache existed (same folders)
            del values["data"]["features"], values["data"]["features_dtype"]
        return values


MACHINE_KEYS = (("data", "workers"), ("data", "in_memory"), ("eval", "crf_workers"), ("eval", "crf_timeout"),
                ("train", "tensorboard"), ("train", "wandb"))
"""Worker counts, item caching, timeouts and where scalars are logged: every random draw is seeded by item and
iteration and the transforms are deterministic, so they change speed and bookkeeping only."""


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "eval": EvalConfig}
TOP_KEYS = ("name", "follows")


def from_dict(values: dict, source: str = "config", origins: dict | None = None) -> Config:
    """Build a Config from a nested mapping, checking every key and value; errors name the key and its origin.

    origins: {"section.key": where it was set, e.g. "override train.lr=-1"} for keys that did not come from `source`.
    """
    origins = origins or {}

    def where(key: str) -> str:
        return origins.get(key, source)

    values = dict(values or {})
    unknown = sorted(set(values) - set(SECTIONS) - set(TOP_KEYS))
    if unknown:
        key = unknown[0]
        raise StegoError(f"{where(key)}: unknown section {key!r}{_closest(key, [*SECTIONS, *TOP_KEYS])}; valid: "
                         f"{', '.join([*TOP_KEYS, *SECTIONS])}")
    top = {k: values.pop(k) for k in TOP_KEYS if k in values}
    sections = {}
    for name, cls in SECTIONS.items():
        given = values.pop(name, None) or {}
        if not isinstance(given, dict):
            raise StegoError(f"{where(name)}: section {name!r} must be a mapping of keys, got {given!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in sorted(set(given) - set(known)):
            raise StegoError(f"{where(f'{name}.{key}')}: unknown key {name}.{key}{_closest(key, known)}; valid keys "
                             f"of '{name}': {', '.join(sorted(known))}")
        coerced = {k: _coerce(cls, name, k, v, where(f"{name}.{k}")) for k, v in given.items()}
        try:
            sections[name] = cls(**coerced)
        except StegoError as err:
            raise StegoError(f"{where(_key_of(err))}: {err}") from None
    try:
        return Config(**top, **sections)
    except StegoError as err:
        raise StegoError(f"{where(_key_of(err))}: {err}") from None


def _key_of(err: StegoError) -> str:
    """The `section.key` a field-rule error starts with."""
    found = re.match(r"[a-z_]+(\.[a-z_]+)?", str(err))
    return found.group(0) if found else ""


YAML_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _coerce(cls, section: str, key: str, value, source: str):
    """Check one value against its field's type; YAML-1.1 words (on/off/yes/no) become booleans only for bools."""
    kind = typing.get_type_hints(cls)[key]
    if kind is bool:
        if isinstance(value, str) and value.lower() in YAML_WORDS:
            return YAML_WORDS[value.lower()]
        if not isinstance(value, bool):
            raise StegoError(f"{source}: {section}.{key} must be true or false, got {value!r}")
    elif kind is str and isinstance(value, bool):
        raise StegoError(f"{source}: {section}.{key} is text but YAML read a boolean (off/on/yes/no are booleans "
                         f"in YAML): quote it, e.g. {section}.{key}: \"off\"")
    elif kind is str and isinstance(value, (int, float)):
        return str(value)  # a folder named 2024
    elif kind is str and not isinstance(value, str):
        raise StegoError(f"{source}: {section}.{key} must be text, got {value!r}")
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise StegoError(f"{source}: {section}.{key} must be a number, got {value!r}")
        try:
            number = kind(value)  # YAML reads 1e-4 (no dot) as text
        except ValueError:
            raise StegoError(f"{source}: {section}.{key} must be a {'whole ' if kind is int else ''}number, "
                             f"got {value!r}") from None
        if kind is int and number != float(value):
            raise StegoError(f"{source}: {section}.{key} must be a whole number, got {value!r}")
        return number
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise MissingFileError(f"no preset {name_or_path!r}{_closest(name_or_path, list_presets())} choose one of "
                               f"{', '.join(list_presets())} (`stego presets`) or pass a YAML file path")
    return path


def parse_override(text: str) -> tuple[str, object]:
    """`section.key=value` → (key, value parsed as YAML; on/off/yes/no stay words, typed by their field later)."""
    if "=" not in text:
        raise StegoError(f"override {text!r} must look like section.key=value, e.g. loss.b_rand=0.3")
    key, raw = text.split("=", 1)
    if raw.strip().lower() in YAML_WORDS:
        return key.strip(), raw.strip()
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise StegoError(f"override {text!r}: the value is not valid YAML; quote it") from None


def set_dotted(values: dict, key: str, value) -> None:
    """Set `section.key` in a nested mapping."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StegoError(f"override {key!r}: {part} is not a section")
    node[parts[-1]] = value


def apply_overrides(values: dict, overrides, origins: dict) -> None:
    """Set each `section.key=value` in `values`, recording in `origins` that the key came from that override."""
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(values, key, value)
        origins[key] = origins[key.split(".")[0]] = f"override {text!r}"


def load_config(preset: str = "synthetic_demo", overrides: list[str] | None = None,
                ablation: str | None = None) -> Config:
    """A preset (name under stego/presets/ or a YAML path), then an optional named ablation, then overrides."""
    path = preset_path(preset)
    values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("name", path.stem)
    origins = {}
    if ablation:
        for key, value in ablation_overrides(ablation).items():
            set_dotted(values, key, value)
            origins[key] = f"ablation {ablation!r} (stego/presets/_ablations.yaml)"
        values["name"] = f"{values['name']}-{ablation}"
    apply_overrides(values, overrides, origins)
    return from_dict(values, source=str(path), origins=origins)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `section.key=value` overrides applied (checked like a preset's keys)."""
    values, origins = cfg.to_dict(), {}
    apply_overrides(values, overrides, origins)
    return from_dict(values, source=f"config {cfg.name!r}", origins=origins)


def ablation_overrides(name: str) -> dict:
    """The dotted-key settings of a named ablation switch (paper Tables 2 and 5), from presets/_ablations.yaml."""
    table = yaml.safe_load((PRESET_DIR / "_ablations.yaml").read_text())
    if name not in table:
        raise StegoError(f"unknown ablation {name!r}{_closest(name, table)}; choose one of {', '.join(sorted(table))}")
    return table[name]


def save_config(cfg: Config, path) -> None:
    from .io import atomic_write

    with atomic_write(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
