"""`stego tune-shifts`: the paper's A.11 balance rule as a command, with no label anywhere.

A shift b of a loss term decides which of its pairs attract (feature correlation above b) and which repel, so a
larger b lowers that term's mean code correlation in training. Each round trains a short run (labels never
opened: `train(labels=False)`) with the current shifts and reads the mean code correlations of its last quarter
from train_log.csv; each tuned shift then takes a regula-falsi step toward its target: between the nearest
measured shifts on either side of the target once they exist (kept inside the bracket, else bisected), a secant
or fixed step along the falling direction before that. Rounds stop when every tuned correlation is within the
tolerance of its target; the round closest to the targets is written as a preset with the measured
correlations and the whole search trace (docs/protocol.md §5, "Calibrating the shifts").
"""
import csv
import dataclasses
import logging
import math
from pathlib import Path

from . import records
from .config import Config, load_config, save_config, with_overrides
from .errors import StegoError
from .io import atomic_write, writable_folder
from .runs import RunDir
from .train import train

log = logging.getLogger(__name__)

TERMS = ("self", "knn", "rand")
WINDOW = 0.25
"""The share of a short run's log rows, from its end, that its mean correlations are read from."""
FIRST_STEP = 0.2
MAX_STEP = 0.5
RECORD = "tuning.json"


@dataclasses.dataclass
class Targets:
    """Mean code correlations to reach; a term whose target is None keeps its shift."""

    self: float | None = None
    knn: float | None = 0.3
    rand: float | None = 0.0
    tolerance: float = 0.05

    def tuned(self) -> list[str]:
        return [t for t in TERMS if getattr(self, t) is not None]

    def miss(self, corr: dict) -> float:
        """The largest |measured − target| over the tuned terms."""
        return max(abs(corr[t] - getattr(self, t)) for t in self.tuned())

    def met(self, corr: dict) -> bool:
        return self.miss(corr) <= self.tolerance + 1e-12


def shifts_of(cfg: Config) -> dict:
    return {t: float(getattr(cfg.loss, f"b_{t}")) for t in TERMS}


def mean_correlations(log_path: Path, window: float = WINDOW) -> dict:
    """Mean corr_self / corr_knn / corr_rand of the last `window` share of a training log's rows."""
    with open(log_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("corr_knn")]
    if not rows:
        raise StegoError(f"{log_path}: no correlation rows; the run did not distil (projection 'none', lr 0 or every "
                         "λ 0?) — tune-shifts needs a STEGO head and train.log_every below the run's length")
    last = rows[min(len(rows) - 1, math.floor(len(rows) * (1 - window))):]
    return {t: sum(float(r[f"corr_{t}"]) for r in last) / len(last) for t in TERMS}


def next_shift(history: list, target: float) -> float:
    """The next shift of one term from its (shift, correlation) history, correlation falling with the shift."""
    b, c = history[-1]
    above = [(x, y) for x, y in history if y > target]
    below = [(x, y) for x, y in history if y < target]
    if above and below:
        (lo, c_lo), (hi, c_hi) = max(above), min(below)
        if lo < hi and c_lo > c_hi:
            guess = lo + (target - c_lo) * (hi - lo) / (c_hi - c_lo)
            margin = 0.1 * (hi - lo)
            return min(max(guess, lo + margin), hi - margin)
        return (history[-1][0] + history[-2][0]) / 2  # not monotone here (noise): bisect the last two
    direction = 1.0 if c > target else -1.0
    step = FIRST_STEP
    if len(history) >= 2:
        (b0, c0), (b1, c1) = history[-2], history[-1]
        if b1 != b0 and (c1 - c0) / (b1 - b0) < 0:
            step = abs((target - c1) * (b1 - b0) / (c1 - c0))
        else:
            step = 2 * abs(b1 - b0)  # flat or rising: widen the search
    return b + direction * min(max(step, 0.05), MAX_STEP)


def short_run(cfg: Config, shifts: dict, iterations: int) -> Config:
    """`cfg` with `shifts` as a short label-free probe run: no validation, no histograms, one checkpoint."""
    over = [f"loss.b_{t}={shifts[t]!r}" for t in TERMS]
    over += [f"train.iterations={iterations}", f"train.checkpoint_every={iterations}", "train.val_every=0",
             "train.select_on_val=false", "train.hist_every=0",
             f"train.log_every={max(1, min(cfg.train.log_every, iterations // 20))}"]
    return with_overrides(cfg, over)


def tune_shifts(cfg: Config, out_dir, targets: Targets, iterations: int, rounds: int = 8) -> records.TuningRecord:
    """Search the shifts of `cfg` (see the module docstring); rounds live in out_dir/round<k>/ and are reused
    when the same command runs again. Writes out_dir/tuning.json and out_dir/<name>_tuned.yaml."""
    if not targets.tuned():
        raise StegoError("tune-shifts: every target is off; give at least one of --target-self/-knn/-rand")
    if iterations < 4:
        raise StegoError(f"tune-shifts: --iterations {iterations} is too short to read a correlation from; give ≥ 4")
    out = writable_folder(out_dir, "--out")
    shifts, histories, trace = shifts_of(cfg), {t: [] for t in TERMS}, []
    for k in range(rounds):
        folder = out / f"round{k}"
        train(short_run(cfg, shifts, iterations), folder, resume=RunDir(folder).checkpoint.exists(), labels=False)
        corr = mean_correlations(RunDir(folder).log)
        trace.append({"round": k, "shifts": dict(shifts), "correlations": corr, "met": targets.met(corr)})
        log.info("tune-shifts round %d: b %s -> corr %s%s", k, _fmt(shifts), _fmt(corr),
                 " (within targets)" if trace[-1]["met"] else "")
        if trace[-1]["met"]:
            break
        for t in targets.tuned():
            histories[t].append((shifts[t], corr[t]))
            if abs(corr[t] - getattr(targets, t)) > targets.tolerance:
                shifts = {**shifts, t: round(next_shift(histories[t], getattr(targets, t)), 6)}
    best = min(trace, key=lambda r: targets.miss(r["correlations"]))
    tuned = with_overrides(cfg, [f"loss.b_{t}={best['shifts'][t]!r}" for t in TERMS] +
                           [f"name={cfg.name}_tuned", "follows=ours"])
    preset = out / f"{tuned.name}.yaml"
    record = records.TuningRecord(
        preset=cfg.name, config=cfg.to_dict(), targets=dataclasses.asdict(targets), iterations=iterations,
        window=WINDOW, converged=best["met"], best_round=best["round"], shifts=best["shifts"],
        correlations=best["correlations"], lambdas={t: float(getattr(cfg.loss, f"lambda_{t}")) for t in TERMS},
        trace=trace, tuned_preset=preset.name, **records.provenance())
    records.write(record, out / RECORD)
    write_preset(tuned, record, preset)
    return record


def _fmt(values: dict) -> str:
    return ", ".join(f"{t} {values[t]:.3f}" for t in TERMS)


def write_preset(cfg: Config, record: records.TuningRecord, path: Path) -> None:
    """The tuned preset: the config as YAML under a header saying how its shifts were found."""
    targets = record.targets
    goal = ", ".join(f"{t} {targets[t]}" for t in TERMS if targets[t] is not None)
    header = [f"# Shifts calibrated by `stego tune-shifts {record.preset}` without labels (paper A.11; "
              "docs/protocol.md §5), this suite's values, not the paper's.",
              f"# Targets (mean code correlation, ±{targets['tolerance']}): {goal}; "
              f"{'reached' if record.converged else 'NOT reached: closest round kept'} in round {record.best_round} "
              f"of {len(record.trace)} ({record.iterations}-iteration runs, last {int(100 * record.window)}% of "
              "each log).",
              f"# Measured: {_fmt(record.correlations)}. λ kept: {_fmt(record.lambdas)}. Trace: {RECORD}."]
    save_config(cfg, path)
    body = Path(path).read_text()
    with atomic_write(path, "w") as f:
        f.write("\n".join(header) + "\n" + body)


def _command(args) -> int:
    preset, overrides = args.preset, list(args.overrides)
    if not preset or "=" in preset:
        raise StegoError("tune-shifts: give a preset (see `stego presets`) or a YAML file")
    cfg = load_config(preset, overrides)
    targets = Targets(args.target_self, args.target_knn, args.target_rand, args.tolerance)
    iterations = args.iterations or max(50, cfg.train.iterations // 5)
    record = tune_shifts(cfg, args.out or Path("runs") / f"{cfg.name}-tune-shifts", targets, iterations, args.rounds)
    print(f"{'reached' if record.converged else 'not reached'}: shifts {_fmt(record.shifts)} give mean code "
          f"correlations {_fmt(record.correlations)}; preset {Path(args.out or '.') / record.tuned_preset}")
    return 0 if record.converged else 1


def _target(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def add_cli(sub) -> None:
    p = sub.add_parser("tune-shifts", help="calibrate the loss shifts without labels (paper A.11)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("preset", nargs="?", default=None, help="preset name (see `stego presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides, e.g. data.root=/data")
    p.add_argument("--out", help="folder for the rounds, tuning.json and the tuned preset "
                                 "(default runs/<preset>-tune-shifts)")
    p.add_argument("--target-knn", type=_target, default=0.3, help="mean KNN code correlation (default 0.3)")
    p.add_argument("--target-rand", type=_target, default=0.0, help="mean random code correlation (default 0)")
    p.add_argument("--target-self", type=_target, default=None,
                   help="mean self code correlation (default none: b_self is kept)")
    p.add_argument("--tolerance", type=float, default=0.05, help="how close counts as reached (default 0.05)")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations per round (default train.iterations / 5, at least 50)")
    p.add_argument("--rounds", type=int, default=8, help="most rounds (default 8)")
    p.set_defaults(func=_command)
