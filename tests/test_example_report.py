"""The committed example report (reports/example, rebuilt by `python -m reports.example`): every link and image in
its pages points to a file in the repository, and it shows the records committed beside it."""
import json
import re
from pathlib import Path
from urllib.parse import unquote

from reports.example import EXAMPLE

LINK = re.compile(r"\]\(([^)#\s]+)\)")


def _pages(folder: Path):
    return sorted(p for p in folder.rglob("*.md") if "records" not in p.relative_to(folder).parts)


def test_every_link_of_the_example_resolves_inside_the_repository():
    repo = EXAMPLE.parents[1].resolve()
    pages = _pages(EXAMPLE)
    assert len(pages) >= 6
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / unquote(target)).resolve()
            if not path.is_file() or repo not in path.parents:
                broken.append(f"{page.relative_to(EXAMPLE)} -> {target}")
    assert not broken, broken[:10]


def test_the_example_shows_every_committed_benchmark_record():
    """Built from the committed records (index says so), every row of theirs on its table's page, with its interval
    columns and, for the ablation tables, the forest plot (a full rebuild is byte-identical: tests/test_report.py)."""
    assert "`records`" in (EXAMPLE / "index.md").read_text()
    found = [json.loads(p.read_text()) for p in (EXAMPLE / "records").glob("*/*/seed*/record.json")]
    assert {r["table"] for r in found} >= {"table1", "table2", "table5", "beyond", "dimsweep"}
    pages = {t: (EXAMPLE / f"{t}.md").read_text() for t in {r["table"] for r in found}}
    missing = [(r["table"], r["row"]) for r in found if r["row"] not in pages[r["table"]]]
    assert not missing, missing[:5]
    for table in ("table2", "table5"):
        assert "forest" in pages[table] and "95%" in pages[table]
