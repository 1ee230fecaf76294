"""The `stego data ...` command lines that error messages suggest, built in one place from the real options, so
every suggested command parses (tests/test_hints.py runs them through the parser)."""
import shlex


def _quote(value) -> str:
    return shlex.quote(str(value))


def synthetic_command(root) -> str:
    """Generate the synthetic scenes of data.dataset=synthetic under `root`."""
    return f"stego data synthetic --out {_quote(root)}"


def fivecrop_command(dataset: str, root, split: str, crop_ratio: float = 0.5, force: bool = False,
                     n_classes: int | None = None) -> str:
    """Five-crop one split (the reader name: 'imagefolder' for synthetic scenes); `force` redoes existing crops."""
    parts = ["stego data fivecrop --dataset", _quote(dataset), "--root", _quote(root), "--split", _quote(split)]
    if float(crop_ratio) != 0.5:
        parts += ["--crop-ratio", f"{float(crop_ratio):g}"]
    if n_classes:
        parts += ["--n-classes", str(n_classes)]
    return " ".join(parts + (["--force"] if force else []))


def download_hint(dataset: str, root, manual: str) -> str:
    """How to get a dataset: `stego data download` (docs/data.md), or by hand (`manual`)."""
    return f"download it with `stego data download {dataset} --root {_quote(root)}` (docs/data.md), or {manual}"


def check_command(dataset: str, root, split: str | None = None, crop_ratio: float | None = None) -> str:
    """Check a dataset's files (its five-crops when `crop_ratio` is given) and list every bad one."""
    parts = ["stego data check --dataset", _quote(dataset), "--root", _quote(root)]
    parts += ["--split", _quote(split)] if split else []
    if crop_ratio is not None:
        parts += ["--crop"] + (["--crop-ratio", f"{float(crop_ratio):g}"] if float(crop_ratio) != 0.5 else [])
    return " ".join(parts)


def knn_command(meta: dict, root, force: bool = True) -> str:
    """Mine (or, with `force`, re-mine) the KNN table that KNN metadata `meta` describes."""
    parts = [f"--{flag} {_quote(meta[key])}" for flag, key in
             (("dataset", "dataset"), ("split", "split"), ("backbone", "backbone"), ("crop", "crops"),
              ("crop-ratio", "crop_ratio"), ("res", "res"), ("k", "k")) if key in meta]
    weights = str(meta.get("weights", ""))
    if weights.startswith("random"):
        parts.append("--weights random" + (f" --seed {weights[len('random:seed'):]}" if ":seed" in weights else ""))
    return " ".join(["stego data knn --root", _quote(root), *parts] + (["--force"] if force else []))
