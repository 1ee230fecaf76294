"""`python -m benchmarks`: the paper's tables as data, run by name.

    python -m benchmarks ls [--table T]                      tables, rows, their paper numbers and tolerances
    python -m benchmarks run --table T [--row R] [--seeds N] [--scale toy|paper] [--results-dir DIR]
    python -m benchmarks sweep --table T [--seeds N] ...      the rows as jobs for `stego sweep submit`

`run` writes the same records the pytest harness writes (benchmarks/test_table*.py, which stays the checker) and
prints each row's measured numbers beside the paper's; `stego report DIR` turns them into pages.
"""
import argparse
import logging
import sys
from pathlib import Path

from stego.errors import StegoError
from stego.records import TABLE_METRICS
from stego.sweep import dump_jobs, parse_seeds

from . import jobs, registry, runner

log = logging.getLogger(__name__)


def _number(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def list_rows(tables) -> list[str]:
    """One line per row: table, kind, name, the paper's four numbers (tolerance in brackets where checked)."""
    lines = [f"{'table':8s} {'kind':8s} {'row':38s} " + " ".join(f"{m:>14s}" for m in TABLE_METRICS)]
    for table in tables:
        for r in registry.rows(table):
            cells = []
            for metric in TABLE_METRICS:
                tol = r.tolerance_for(metric)
                cells.append(f"{_number(r.paper[metric]) + ('' if tol is None else f' (±{tol:g})'):>14s}")
            lines.append(f"{table:8s} {r.kind:8s} {r.name[:38]:38s} " + " ".join(cells))
    return lines


def _run(args) -> int:
    only = set(args.row or [])
    selected = [r for t in args.table for r in registry.rows(t) if not only or r.slug in only or r.name in only]
    if only and not selected:
        raise StegoError(f"no row of {', '.join(args.table)} is named {', '.join(sorted(only))}; see "
                         f"`python -m benchmarks ls`")
    failed = 0
    for seed in parse_seeds(args.seeds):
        for r in selected:
            record = runner.run_row(r, args.scale, seed, args.results_dir, data_root=args.data_root,
                                    release_dir=args.release_dir, select_on_val=args.select_on_val,
                                    trusted=args.trust_checkpoints, overrides=args.set)
            values = record.measured_values or {}
            misses = runner.failures(record.comparison)
            failed += bool(misses)
            print(f"{r.table} / {r.name} seed {seed}: " + ", ".join(
                f"{m} {_number(values.get(m))} (paper {_number(r.paper[m])})" for m in TABLE_METRICS
                if r.paper[m] is not None) + (f" — beyond tolerance: {'; '.join(misses)}" if misses else ""))
    print(f"records under {Path(args.results_dir).resolve()}; pages: stego report {args.results_dir}")
    return 1 if failed else 0


def _sweep(args) -> int:
    found = jobs.row_jobs(args.table, parse_seeds(args.seeds), args.scale, args.results_dir, args.data_root,
                          args.release_dir, args.select_on_val, args.trust_checkpoints, args.row, not args.no_check,
                          args.set)
    text = dump_jobs(found)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    log.info("%d job(s) for %s", len(found), ", ".join(args.table))
    return 0


def _rows_args(p, default_results: str) -> None:
    p.add_argument("--table", action="append", required=True, choices=registry.TABLES, help="table (repeatable)")
    p.add_argument("--row", action="append", help="only these rows (name or slug; repeatable)")
    p.add_argument("--seeds", default="1", help="a count (3 = seeds 0,1,2) or a list (0,4,7)")
    p.add_argument("--scale", choices=runner.SCALES, default="paper",
                   help="paper: the paper's settings on real data; toy: the synthetic stand-in (CPU, minutes)")
    p.add_argument("--results-dir", default=default_results, help=f"where the records go (default {default_results})")
    p.add_argument("--data-root", help="datasets root (default: each preset's data.root)")
    p.add_argument("--release-dir", help="folder of the released .ckpt files (default $STEGO_RELEASE_DIR)")
    p.add_argument("--select-on-val", action="store_true", help="keep the best-validation checkpoint")
    p.add_argument("--trust-checkpoints", action="store_true", help="see `stego eval --help`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every row at either scale (repeatable): a machine setting such as "
                        "eval.crf_workers=12, or data.features=cached to train and evaluate from stored backbone "
                        "features (use its own --results-dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="The paper's tables, run by name.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="tables, rows, paper numbers and tolerances")
    p.add_argument("--table", action="append", choices=registry.TABLES, help="only this table (repeatable)")
    p.set_defaults(func=lambda args: print("\n".join(list_rows(args.table or registry.TABLES))) or 0)
    p = sub.add_parser("run", help="run rows (or reuse their records) and print them beside the paper's numbers")
    _rows_args(p, "results")
    p.set_defaults(func=_run)
    p = sub.add_parser("sweep", help="write the rows as jobs for `stego sweep submit` (SLURM job arrays)")
    _rows_args(p, "results")
    p.add_argument("--no-check", action="store_true", help="do not check now that the inputs exist")
    p.add_argument("--out", help="write the jobs here instead of to stdout")
    p.set_defaults(func=_sweep)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except StegoError as err:
        print(f"python -m benchmarks: error: {err}", file=sys.stderr)
        return 2
