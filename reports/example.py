"""Rebuild the committed example report from a toy benchmark results folder:

    python -m reports.example RESULTS_DIR     # e.g. after pytest benchmarks --results-dir RESULTS_DIR

Copies the records and the small files the report links to (JSON, CSV, YAML, PNG) into reports/example/records/,
leaving out checkpoints, KNN tables, locks and the toy data, then builds the report into reports/example/ from that
copy, so every link in it points to a file in the repository.
"""
import argparse
import shutil
import sys
from pathlib import Path

from .pages import build_reports

EXAMPLE = Path(__file__).resolve().parent / "example"
KEPT = (".json", ".csv", ".yaml", ".png")
"""The files a report reads or links to; everything else in a results folder is left out."""
SKIPPED_DIRS = ("toy-data", "nns", "report")


def copy_records(results_dir: Path, records_dir: Path) -> int:
    """Copy the kept files of `results_dir` into `records_dir` (emptied first); returns how many."""
    if records_dir.exists():
        shutil.rmtree(records_dir)
    n = 0
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if not path.is_file() or path.suffix not in KEPT or relative.parts[0] in SKIPPED_DIRS:
            continue
        target = records_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        n += 1
    return n


def rebuild(results_dir, example_dir=EXAMPLE) -> list[Path]:
    """The example report rebuilt from `results_dir`'s records (copied under example_dir/records/)."""
    example_dir = Path(example_dir)
    for page in example_dir.glob("*.md"):
        page.unlink()
    for folder in example_dir.iterdir() if example_dir.is_dir() else ():
        if folder.is_dir() and folder.name != "records":
            shutil.rmtree(folder)
    copy_records(Path(results_dir), example_dir / "records")
    return build_reports(example_dir / "records", example_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.example", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="toy benchmark results folder (pytest benchmarks --results-dir ...)")
    args = parser.parse_args(argv)
    pages = rebuild(args.results)
    print(f"rebuilt {len(pages)} pages under {EXAMPLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
