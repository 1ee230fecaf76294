"""Runs as reports see them: every benchmark, evaluation and Table 6 record under a results folder, read through
stego.records, and the rows they form (one config, one run per seed)."""
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from stego import records
from stego.config import MACHINE_KEYS
from stego.errors import MissingFileError, StegoError
from stego.runs import COUNTS_SUFFIX

log = logging.getLogger(__name__)

EVAL_TABLE = "Evaluation runs"
IGNORED_IN_GROUPS = (("train", "seed"), *MACHINE_KEYS)
"""What runs of one row may differ in: the seed, and settings that change no result."""


@dataclass
class Run:
    """One benchmark or evaluation record and where it was found."""

    path: Path
    record: object
    """A records.BenchmarkRecord or records.EvalRecord."""

    @property
    def benchmark(self) -> bool:
        return isinstance(self.record, records.BenchmarkRecord)

    @property
    def table(self) -> str:
        return self.record.table if self.benchmark else EVAL_TABLE

    @property
    def row(self) -> str:
        return self.record.row if self.benchmark else str(self.record.name or self.path.parent.name)

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def scale(self) -> str | None:
        return self.record.scale if self.benchmark else None

    @property
    def cited(self) -> bool:
        return self.benchmark and self.record.cited

    @property
    def order(self) -> float:
        order = self.record.row_order if self.benchmark else None
        return math.inf if order is None else float(order)

    @property
    def metrics(self) -> dict:
        return self.record.metrics or {}

    @property
    def config(self) -> dict:
        return self.record.config or {}

    def measured_probe(self, probe: str) -> str:
        """The metrics entry that gives probe 'cluster' or 'linear' its table number, as the record says (eval
        records: the CRF variant when their config had eval.crf on)."""
        if self.benchmark and self.record.measured:
            return self.record.measured[probe]
        crf = bool((self.config.get("eval") or {}).get("crf")) and f"{probe}_crf" in self.metrics
        return f"{probe}_crf" if crf else probe


@dataclass
class Row:
    """The runs of one table row at one scale with one config (one run per seed)."""

    name: str
    scale: str | None
    runs: list
    variant: str = ""
    """The config keys that set this row apart from others of its name, e.g. 'data.dataset=cityscapes27'."""

    @property
    def first(self) -> Run:
        return self.runs[0]

    def label(self, many_scales: bool) -> str:
        """The row's name in a table: its variant keys, † when cited, its scale when the page mixes scales."""
        text = self.name + (f" [{self.variant}]" if self.variant else "")
        text = text.replace("|", "\\|") + (" †" if self.first.cited else "")
        return f"{text} ({self.scale or '—'})" if many_scales else text


def _inside(path: Path, folders) -> bool:
    return any(path == d or d in path.parents for d in folders)


def _read(path: Path):
    """The record in a JSON file under the results folder; None for JSON that is not a record of ours."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        if "record" in path.name:
            raise StegoError(f"{path}: not a readable JSON record ({type(err).__name__}: {err}); delete it and "
                             "re-run that run") from None
        log.warning("skipping %s: not readable JSON", path)
        return None
    if not isinstance(data, dict) or data.get("kind") not in ("benchmark", "eval", "hyperparameters"):
        return None
    return records.from_dict(data, str(path))


def load_records(results_dir, exclude=None) -> tuple[list[Run], list]:
    """(benchmark and eval runs, hyperparameter records) under `results_dir`, searched recursively (`exclude`,
    the report folder, and analysis folders skipped). Eval records that a benchmark names (eval_record) or that
    lie in its folder or train_dir are that benchmark's raw form and are not listed again."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MissingFileError(f"{results_dir}: no such folder; pass the folder the runs wrote their records to")
    exclude = Path(exclude).resolve() if exclude is not None else None
    if exclude is not None and _inside(results_dir.resolve(), [exclude]):  # the records live inside the report
        exclude = None
    runs, tables = [], []
    for path in sorted(results_dir.rglob("*.json")):
        if exclude is not None and _inside(path.resolve(), [exclude]):
            continue
        if any(part.endswith("_analysis") for part in path.relative_to(results_dir).parts[:-1]):
            continue
        if path.name.endswith(COUNTS_SUFFIX):  # an eval record's per-image counts, read only where used
            continue
        record = _read(path)
        if isinstance(record, records.HyperparameterRecord):
            tables.append((path, record))
        elif record is not None:
            runs.append(Run(path, record))
    owned, used = set(), set()
    for run in (r for r in runs if r.benchmark):
        owned.add(run.path.parent.resolve())
        if run.record.train_dir:
            owned.add((run.path.parent / run.record.train_dir).resolve())
        if run.record.eval_record:
            used.add((run.path.parent / run.record.eval_record).resolve())
    runs = [r for r in runs if r.benchmark or (r.path.resolve() not in used
                                                and not _inside(r.path.parent.resolve(), owned))]
    return sorted(runs, key=lambda r: (r.table, r.order, r.row, r.scale or "", r.seed, str(r.path))), tables


def _flat_config(run: Run) -> dict:
    """The run's config as {'section.key': value}, without the seed and machine settings."""
    flat = {}
    for section, values in sorted(run.config.items()):
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items() if (section, k) not in IGNORED_IN_GROUPS})
        else:
            flat[section] = values
    return flat


def _variant_label(config: dict, differing: list) -> str:
    shown = [f"{k}={config.get(k)}" for k in differing[:3]]
    return ", ".join(shown) + (f", +{len(differing) - 3} more" if len(differing) > 3 else "")


def group_rows(runs) -> list[Row]:
    """Runs of one row and scale are averaged over seeds only when their configs agree apart from the seed (and
    machine settings); runs that share a name but not a config become rows of their own, labelled by the keys
    that differ."""
    named = {}
    for run in runs:
        named.setdefault((run.row, run.scale), []).append(run)
    rows = []
    for (name, scale), group in named.items():
        configs = {}
        for run in group:
            configs.setdefault(json.dumps(_flat_config(run), sort_keys=True, default=str), []).append(run)
        flats = [json.loads(key) for key in configs]
        differing = sorted({k for f in flats for k in set().union(*flats) if any(g.get(k) != f.get(k) for g in flats)})
        for key, members in configs.items():
            label = _variant_label(json.loads(key), differing) if len(configs) > 1 else ""
            rows.append(Row(name, scale, sorted(members, key=lambda r: (r.seed, str(r.path))), label))
    return sorted(rows, key=lambda r: (min(x.order for x in r.runs), r.name, r.scale or "", r.variant))
