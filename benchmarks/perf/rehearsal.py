"""Paper scale without the paper's data: the real commands on synthetic datasets of the real layouts and sizes.

    python -m benchmarks.perf.rehearsal --root /tmp/rehearsal --sizes 1000,5000,25000,full

For each dataset (COCO-Stuff-27, Cityscapes-27) and size N (COCO train images; every other split takes the same
fraction of its full size, so `full` is 49,629 + 2,175 COCO and 2,975 + 500 Cityscapes images) it writes the
synthetic files (benchmarks/perf/rehearsal_data.py), then runs, each as its own process: `stego data check`,
`stego data fivecrop`, `stego data knn` (the CPU-cheap `filterbank` backbone), a short `stego train` (the release
preset on that backbone, real loader with workers) and `stego eval` over the validation split at 320 with DenseCRF.
Each stage's wall time, CPU time and peak memory (its whole process tree, benchmarks/perf/measure.py) and the files
it wrote go to ROOT/results.json; a stage recorded there is not run again, so an interrupted rehearsal continues
with the same command. The tables (stage × N, then each stage's growth exponent: the least-squares slope of log cost
against log items) are printed at the end (`--table` prints them from the results alone, merging the roots
given, which must come from one machine). A size's data root is deleted once all its stages are done, and a
dataset's pool once all its sizes are (`--keep` keeps both).
Not part of the default test run; benchmarks/perf/test_rehearsal.py runs it at a tiny size.
"""
import argparse
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stego.io import atomic_save_json, read_json

from . import rehearsal_data as data
from .measure import become_subreaper, run_measured, tree_files

REPO = Path(__file__).resolve().parents[2]
DATASETS = ("cocostuff27", "cityscapes27")
PRESETS = {"cocostuff27": "cocostuff27_release", "cityscapes27": "cityscapes27_release"}
STAGES = ("write", "check", "fivecrop", "knn", "train", "eval")
BACKBONE = ("model.backbone=filterbank", "model.weights=random")
"""The training and KNN backbone: weightless and a few ms per image on a CPU (the KNN table names it)."""


def parse_sizes(text: str) -> list[int]:
    """'1000,5000,full' → [1000, 5000, 49629], ascending and without repeats."""
    sizes = set()
    for part in text.split(","):
        part = part.strip()
        if part == "full":
            sizes.add(data.COCO_TRAIN)
        elif part.isdigit() and 0 < int(part) <= data.COCO_TRAIN:
            sizes.add(int(part))
        else:
            raise SystemExit(f"--sizes: {part!r} is no size; give COCO train counts 1..{data.COCO_TRAIN} or 'full'")
    return sorted(sizes)


@dataclass
class Stage:
    name: str
    argv: list
    outputs: list
    """Files and folders the stage writes (counted after it)."""
    items: int
    """What the stage's cost should grow with: the images (or five-crops) it reads."""


def stages(dataset: str, n: int, top: Path, iterations: int, batch_size: int | None, workers: int) -> list[Stage]:
    """The stages of one dataset at size n, as command lines (every stego command as its own process)."""
    base, counts = top / dataset / f"n{n}", data.split_sizes(dataset, n)
    root, run, crops = base / "data", base / "run", 5 * counts["train"]
    stego = [sys.executable, "-m", "stego.cli"]
    common = ["--dataset", dataset, "--root", str(root)]
    train = [*stego, "train", PRESETS[dataset], f"data.root={root}", *BACKBONE, f"train.iterations={iterations}",
             f"train.checkpoint_every={iterations}", "train.val_every=0", "--out", str(run)]
    if batch_size:
        train.insert(-2, f"train.batch_size={batch_size}")
    return [
        Stage("write", [sys.executable, "-m", "benchmarks.perf.rehearsal_data", "--dataset", dataset, "--pool",
                        str(top / "pool" / dataset), "--n", str(n), "--workers", str(workers)],
              [top / "pool" / dataset], counts["train"] + counts["val"]),
        Stage("check", [*stego, "data", "check", *common, "--report", str(base / "check.json")],
              [base / "check.json"], counts["train"] + counts["val"]),
        Stage("fivecrop", [*stego, "data", "fivecrop", *common, "--split", "train"], [root / "cropped"], crops),
        Stage("knn", [*stego, "data", "knn", *common, "--split", "train", "--backbone", "filterbank", "--weights",
                      "random", "--crop", "five", "--k", str(min(30, crops))], [root / "nns"], crops),
        Stage("train", train, [run], crops),
        Stage("eval", [*stego, "eval", "--checkpoint", str(run / "checkpoint.pt"), "--record",
                       str(base / "eval" / "record.json")], [base / "eval"], counts["val"]),
    ]


def machine() -> dict:
    """What the numbers were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def _record(results: dict, dataset: str, n: int, stage: Stage, usage, files: tuple) -> dict:
    """The stage's entry; 'write' also carries its totals over the pool so far (sizes grow one from the next)."""
    entry = dict(usage.to_dict(), items=stage.items, files=files[0], mb=round(files[1] / 1e6, 1),
                 argv=[str(a) for a in stage.argv], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    if stage.name == "write":
        before = [int(m) for m, st in results["runs"].get(dataset, {}).items() if int(m) < n and "write" in st]
        prev = results["runs"][dataset][str(max(before))]["write"] if before else {}
        entry["increment_wall_s"], entry["increment_cpu_s"] = entry["wall_s"], entry["cpu_s"]
        entry["wall_s"] += prev.get("wall_s", 0.0)
        entry["cpu_s"] += prev.get("cpu_s", 0.0)
    return entry


def rehearse(top: Path, sizes, datasets=DATASETS, only=STAGES, iterations=100, batch_size=None, workers=2,
             keep=False) -> dict:
    """Run every stage not yet in top/results.json, saving it after each; returns the results."""
    top.mkdir(parents=True, exist_ok=True)
    path = top / "results.json"
    results = read_json(path) if path.exists() else {"machine": machine(), "runs": {}}
    if not become_subreaper():
        print("warning: cannot become a subreaper; CPU time of orphaned pool workers may be missing", file=sys.stderr)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for dataset in datasets:
        done_all = True
        for n in sizes:
            recorded = results["runs"].setdefault(dataset, {}).setdefault(str(n), {})
            todo = [s for s in stages(dataset, n, top, iterations, batch_size, workers)
                    if s.name in only and s.name not in recorded]
            base = top / dataset / f"n{n}"
            (base / "logs").mkdir(parents=True, exist_ok=True)
            linked = False
            for stage in todo:
                if stage.name != "write" and not linked:  # links what is missing (all of it on a first run)
                    data.make_root(dataset, top / "pool" / dataset, base / "data", n)
                    linked = True
                if stage.name == "train":
                    shutil.rmtree(base / "run", ignore_errors=True)  # a half-finished run starts over
                print(f"[{time.strftime('%H:%M:%S')}] {dataset} n={n} {stage.name} ...", flush=True)
                usage = run_measured(stage.argv, base / "logs" / f"{stage.name}.log", env=env, cwd=REPO)
                if usage.returncode != 0:
                    raise SystemExit(f"{dataset} n={n} {stage.name} failed (exit {usage.returncode}); see "
                                     f"{base / 'logs' / (stage.name + '.log')}; fix it and re-run to continue")
                recorded[stage.name] = _record(results, dataset, n, stage, usage, tree_files(stage.outputs))
                atomic_save_json(results, path)
                print(f"    {stage.name}: {usage.wall_s:.1f} s wall, {usage.cpu_s:.1f} s CPU, "
                      f"{usage.max_rss_mb:.0f} MB peak RSS (tree {usage.tree_rss_mb:.0f} MB at "
                      f"{usage.peak_at_s:.0f} s; largest: {usage.biggest}), load "
                      f"{usage.load_start[0]:.1f}→{usage.load_end[0]:.1f}", flush=True)
            complete = all(s in recorded for s in STAGES)
            done_all &= complete
            if complete and not keep:
                shutil.rmtree(base / "data", ignore_errors=True)
        if done_all and not keep:
            shutil.rmtree(top / "pool" / dataset, ignore_errors=True)
    return results


def growth_exponent(xs, ys) -> float | None:
    """Least-squares slope of log y against log x (cost ∝ x^slope); None without two distinct positive x."""
    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def merge_results(parts: list[dict]) -> dict:
    """One results dict from several roots' (a later root's stage at the same dataset and N replaces an earlier's);
    roots measured on different machines are an error, since their costs do not belong on one curve."""
    machines = {p["machine"]["cpu"] + f", {p['machine']['cores']} cores" for p in parts}
    if len(machines) > 1:
        raise SystemExit(f"results measured on different machines ({'; '.join(sorted(machines))}); print their "
                         "tables apart (--table with the roots of one machine)")
    merged = {"machine": parts[0]["machine"], "runs": {}}
    for part in parts:
        for dataset, by_size in part["runs"].items():
            for n, recorded in by_size.items():
                merged["runs"].setdefault(dataset, {}).setdefault(n, {}).update(recorded)
    return merged


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def tables(results: dict) -> str:
    """Markdown: one row per dataset, stage and size; then each stage's growth exponents (all sizes, and between
    the two largest) of wall time, CPU time and peak RSS."""
    rows = ["| dataset | stage | N | items | wall s | CPU s | cores busy | peak RSS MB | tree RSS MB | files | MB | "
            "load 1 min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    growth = ["| dataset | stage | wall exp. | CPU exp. | RSS exp. | wall exp., two largest N | CPU exp., two "
              "largest N |", "|---|---|---:|---:|---:|---:|---:|"]
    for dataset, by_size in results["runs"].items():
        for stage in STAGES:
            points = sorted((int(n), st[stage]) for n, st in by_size.items() if stage in st)
            for n, e in points:
                rows.append(f"| {dataset} | {stage} | {n:,} | {e['items']:,} | {e['wall_s']:.1f} | {e['cpu_s']:.1f} | "
                            f"{e['cpu_s'] / max(e['wall_s'], 1e-9):.2f} | {e['max_rss_mb']:.0f} | "
                            f"{e['tree_rss_mb']:.0f} | {e['files']:,} | {e['mb']:,.0f} | "
                            f"{e['load_start'][0]:.1f}–{e['load_end'][0]:.1f} |")
            if len(points) > 1:
                items = [e["items"] for _, e in points]
                exps = [growth_exponent(items, [e[k] for _, e in points]) for k in ("wall_s", "cpu_s", "max_rss_mb")]
                top2 = [growth_exponent(items[-2:], [e[k] for _, e in points[-2:]]) for k in ("wall_s", "cpu_s")]
                growth.append(f"| {dataset} | {stage} | " + " | ".join(_fmt(v) for v in exps + top2) + " |")
    m = results["machine"]
    head = f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}."
    return "\n".join([head, "", *rows, "", *growth]) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, nargs="+",
                   help="where the data, logs and results.json go (with --table: one or more roots, merged)")
    p.add_argument("--sizes", default="1000,5000,25000,full", help="COCO train images per size, or 'full'")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--stages", default=",".join(STAGES), help="run only these (the others must be recorded)")
    p.add_argument("--iterations", type=int, default=100, help="training iterations of the train stage")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's, 32)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes writing the synthetic files")
    p.add_argument("--keep", action="store_true", help="keep the data roots and pools after their stages")
    p.add_argument("--table", action="store_true", help="only print the tables of ROOT/results.json (merged)")
    args = p.parse_args(argv)
    if args.table:
        missing = [str(r / "results.json") for r in args.root if not (r / "results.json").is_file()]
        if missing:
            raise SystemExit(f"{', '.join(missing)} not found; pass rehearsal roots (folders with results.json)")
        print(tables(merge_results([read_json(r / "results.json") for r in args.root])), end="")
        return 0
    if len(args.root) > 1:
        raise SystemExit("a rehearsal runs in one --root; several roots are for --table")
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(datasets) - set(DATASETS)) + sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown dataset or stage {', '.join(unknown)}; choose from {DATASETS} and {STAGES}")
    results = rehearse(args.root[0], parse_sizes(args.sizes), datasets, args.stages.split(","), args.iterations,
                       args.batch_size, args.workers, args.keep)
    print(tables(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
