"""Typed run configuration: dataclasses, YAML presets under stego/presets/, and `key=value` overrides.

A preset is a YAML mapping of sections (data, model, loss, train, eval) to fields; anything not given keeps
the dataclass default. Overrides use dotted keys (`loss.b_rand=0.3`, `train.iterations=100`) and YAML values.
"""
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import MissingFileError, StegoError
from .loss import LossConfig

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """cocostuff27, cityscapes27, potsdam3, imagefolder or synthetic (generated image folder)."""
    root: str = "data"
    """Folder holding the dataset folders (cocostuff/, cityscapes/, potsdam/, …) and nns/ for KNN tables."""
    crop: str = "none"
    """'five' to train on five-crops (ratio crop_ratio), 'none' for whole images."""
    crop_ratio: float = 0.5
    res: int = 224
    num_neighbors: int = 7
    knn_k: int = 30
    workers: int = -1
    """DataLoader worker processes; -1: one per CPU this process may use, less one, at most 16 (runtime.workers)."""
    n_classes: int = 0
    """Classes of an image-folder dataset (0: read from classes.txt); fixed by the reader for the benchmarks."""


@dataclass
class ModelConfig:
    backbone: str = "dino_vitb8"
    weights: str | None = None
    """Backbone weight file; None finds the official file ($STEGO_WEIGHTS_DIR, torch hub cache, download)."""
    dim: int = 90
    projection: str = "nonlinear"
    dropout: float = 0.1
    extra_clusters: int = 0


@dataclass
class TrainConfig:
    batch_size: int = 32
    """Per process; the effective batch is batch_size × world size (logged)."""
    iterations: int = 7000
    """Counted as batches (the release's meaning of max_steps)."""
    lr: float = 5e-4
    probe_lr: float = 5e-3
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    hist_every: int = 100
    """Iterations between code-correlation histograms (code_corr_hist.json; 0: never)."""
    val_every: int = 0
    """0: no validation during training."""
    select_on_val: bool = False
    """Keep the checkpoint with the best validation cluster mIoU instead of the last (the authors' practice)."""
    device: str = "auto"
    threads: int = 0
    """CPU threads for torch (0: torch's default). Small CPU runs are faster on 1: extra threads only spin."""
    tensorboard: bool = False


@dataclass
class EvalConfig:
    res: int = 320
    batch_size: int = 8
    crf: bool = True
    crf_workers: int = -1
    """DenseCRF worker processes (0: serial in this process); -1: one per CPU this process may use."""
    crf_timeout: float = 120.0
    max_images: int = 0
    """0: the whole split."""


@dataclass
class Config:
    name: str = "custom"
    follows: str = "release"
    """Which source the values follow: 'release' (the authors' checkpoints), 'paper' (Table 6) or 'ours'."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """`to_dict` without the machine settings (MACHINE_KEYS), which do not change any result: what a resumed
        or reused run must match."""
        values = self.to_dict()
        for section, key in MACHINE_KEYS:
            del values[section][key]
        return values


MACHINE_KEYS = (("data", "workers"), ("eval", "crf_workers"), ("eval", "crf_timeout"))
"""Worker counts and timeouts: every random draw is seeded by item and iteration, so they change speed only."""


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "eval": EvalConfig}


def from_dict(values: dict, source: str = "config") -> Config:
    """Build a Config from a nested mapping, rejecting unknown sections and keys by name."""
    values = dict(values or {})
    top = {k: values.pop(k) for k in ("name", "follows") if k in values}
    sections = {}
    for name, cls in SECTIONS.items():
        given = values.pop(name, None) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise StegoError(f"{source}: unknown key(s) {', '.join(name + '.' + k for k in unknown)}; "
                             f"valid keys of '{name}': {', '.join(sorted(known))}")
        try:
            sections[name] = cls(**{k: _coerce(cls, name, k, v, source) for k, v in given.items()})
        except (TypeError, ValueError) as err:
            if isinstance(err, StegoError):
                raise
            raise StegoError(f"{source}: section '{name}': {err}") from None
    if values:
        raise StegoError(f"{source}: unknown section(s) {', '.join(sorted(values))}; "
                         f"valid: name, follows, {', '.join(SECTIONS)}")
    return Config(**top, **sections)


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
    elif kind in (int, float) and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            number = kind(value)  # YAML reads 1e-4 (no dot) as text
        except ValueError:
            raise StegoError(f"{source}: {section}.{key} must be a number, got {value!r}") from None
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
        raise MissingFileError(f"no preset {name_or_path!r}: choose one of {', '.join(list_presets())} "
                               f"or pass a YAML file path")
    return path


def parse_override(text: str) -> tuple[str, object]:
    """`section.key=value` → (key, value parsed as YAML; on/off/yes/no stay words, typed by their field later)."""
    if "=" not in text:
        raise StegoError(f"override {text!r} must look like section.key=value, e.g. loss.b_rand=0.3")
    key, raw = text.split("=", 1)
    if raw.strip().lower() in YAML_WORDS:
        return key.strip(), raw.strip()
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(values: dict, key: str, value) -> None:
    """Set `section.key` in a nested mapping."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StegoError(f"override {key!r}: {part} is not a section")
    node[parts[-1]] = value


def load_config(preset: str = "synthetic_demo", overrides: list[str] | None = None,
                ablation: str | None = None) -> Config:
    """A preset (name under stego/presets/ or a YAML path), then an optional named ablation, then overrides."""
    path = preset_path(preset)
    values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("name", path.stem)
    if ablation:
        for key, value in ablation_overrides(ablation).items():
            set_dotted(values, key, value)
        values["name"] = f"{values['name']}-{ablation}"
    for text in overrides or []:
        set_dotted(values, *parse_override(text))
    return from_dict(values, source=str(path))


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `section.key=value` overrides applied (checked like a preset's keys)."""
    values = cfg.to_dict()
    for text in overrides:
        set_dotted(values, *parse_override(text))
    return from_dict(values, source="overrides")


def ablation_overrides(name: str) -> dict:
    """The dotted-key settings of a named ablation switch (paper Tables 2 and 5), from presets/_ablations.yaml."""
    table = yaml.safe_load((PRESET_DIR / "_ablations.yaml").read_text())
    if name not in table:
        raise StegoError(f"unknown ablation {name!r}; choose one of {', '.join(sorted(table))}")
    return table[name]


def save_config(cfg: Config, path) -> None:
    from .io import atomic_write

    with atomic_write(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
