"""fp32 against bf16 at toy scale on the CPU: the demo world (`stego demo`: synthetic scenes, the filter-bank
backbone, KNN mining, training, evaluation) run once per precision and seed, scores side by side.

    python -m benchmarks.perf.precision_toy [--out DIR] [--seeds 0 1] [overrides ...]

Prints a markdown table (cluster and linear probe mIoU / accuracy of the trained model, without and with DenseCRF,
and the wall time) and the bf16 − fp32 difference per seed, beside the spread between seeds that measures how big
a difference means anything. Each run is a folder under --out (default .benchmarks/precision_toy); re-running
reuses finished runs.
"""
import argparse
import logging
import sys
from pathlib import Path

from stego import records
from stego.config import PRECISIONS
from stego.demo import run_demo

COLUMNS = (("cluster", "miou"), ("cluster", "accuracy"), ("cluster_crf", "miou"), ("linear", "miou"),
           ("linear", "accuracy"))


def measure(out: Path, seeds, overrides=()) -> dict:
    """{(precision, seed): the demo record} for every precision and seed."""
    runs = {}
    for seed in seeds:
        for precision in PRECISIONS:
            folder = out / f"{precision}-seed{seed}"
            run_demo(folder, overrides=[*overrides, f"train.precision={precision}"], seed=seed)
            runs[precision, seed] = records.read(folder / "demo_record.json", "demo")
    return runs


def table(runs: dict) -> str:
    """Scores (percent) of the trained model per run, then bf16 − fp32 per seed (to 0.01) and the largest seed
    spread."""
    columns = [(probe, stat) for probe, stat in COLUMNS if probe in next(iter(runs.values())).results["stego"]]
    header = " | ".join(f"{probe} {stat}" for probe, stat in columns)
    lines = [f"| precision | seed | {header} | seconds |", "|---|---:|" + "---:|" * (len(columns) + 1)]

    def scores(run):
        return [100 * run.results["stego"][probe][stat] for probe, stat in columns]

    for (precision, seed), run in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"| {precision} | {seed} | " + " | ".join(f"{v:.1f}" for v in scores(run)) +
                     f" | {run.seconds:.0f} |")
    seeds = sorted({seed for _, seed in runs})
    for seed in seeds:
        diff = [b - a for a, b in zip(scores(runs["fp32", seed]), scores(runs["bf16", seed]))]
        lines.append(f"| bf16 − fp32 | {seed} | " + " | ".join(f"{round(v, 2) or 0.0:+.2f}" for v in diff) + " | |")
    if len(seeds) > 1:
        fp32 = [scores(runs["fp32", seed]) for seed in seeds]
        spread = [max(col) - min(col) for col in zip(*fp32)]
        lines.append("| fp32 seed spread | all | " + " | ".join(f"{v:.1f}" for v in spread) + " | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.precision_toy", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/precision_toy"), help="runs folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    parser.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides of synthetic_demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(table(measure(args.out, args.seeds, args.overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
