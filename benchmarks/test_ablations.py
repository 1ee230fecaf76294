"""The toy scale exercises the method: every ablation row of Tables 2 and 5 differs from its reference row by more
than the paired bootstrap interval over images (or its `toy_note` says why its switch cannot matter there), and
where the paper's effect is large (no random loss, no 0-clamp, raw features against STEGO) the toy difference has
the paper's sign: on no number the opposite one, on at least one the paper's. Rows run through `bench` (records
reused when the table modules ran them first)."""
import pytest

from benchmarks import runner
from benchmarks.compare import difference
from benchmarks.registry import REFERENCE, row, rows
from stego.records import TABLE_METRICS

ABLATIONS = [r for table, reference in REFERENCE.items() for r in rows(table) if not r.cited and r.name != reference]
LARGE = [("table5", "full", "no random loss"), ("table5", "full", "no 0-clamp"), ("table1", "DINO", "STEGO")]
"""(table, reference, row): the paper's large effects; for raw features against STEGO the raw row is the reference."""


def _pair(bench, results_dir, table, reference, name, seed):
    pairs = []
    for r in (row(table, reference), row(table, name)):
        record = bench(r, seed)
        pairs.append((runner.record_path(results_dir, r, seed), record))
    return pairs


@pytest.fixture
def toy_only(scale):
    if scale != "toy":
        pytest.skip("the liveness of each switch is a property of the toy world; at paper scale see the report")


@pytest.mark.parametrize("r", ABLATIONS, ids=lambda r: f"{r.table}-{r.slug}")
def test_each_switch_moves_a_number_beyond_its_paired_interval(r, seed, bench, results_dir, toy_only):
    reference, row_pair = _pair(bench, results_dir, r.table, REFERENCE[r.table], r.name, seed)
    found = [difference(reference, row_pair, metric) for metric in TABLE_METRICS]
    live = [d for d in found if d.lower > 0 or d.upper < 0]
    shown = "; ".join(f"{d.metric} {d.point:+.1f} [{d.lower:+.1f}, {d.upper:+.1f}]" for d in found)
    if r.toy_note:  # the note's claim, checked: the row trains what the reference trains, or nothing moved
        same = (reference[0].parent / reference[1].train_dir).resolve() == \
            (row_pair[0].parent / row_pair[1].train_dir).resolve()
        assert same or not live, f"{r.table}/{r.name} has a toy_note ({r.toy_note}) but moved: {shown}"
        return
    assert live, f"{r.table}/{r.name}: no number moved beyond its paired 95% interval: {shown}"


@pytest.mark.parametrize("table, reference, name", LARGE, ids=[f"{t}-{n}" for t, _, n in LARGE])
def test_large_effects_have_the_papers_sign(table, reference, name, seed, bench, results_dir, toy_only):
    """No number's interval lies on the other side of 0 from the paper's difference, and at least one lies on its
    side (the cluster numbers also carry the probe's init, which the interval over images does not see)."""
    pairs = _pair(bench, results_dir, table, reference, name, seed)
    found = [difference(*pairs, metric) for metric in TABLE_METRICS]
    shown = "; ".join(f"{d.metric} {d.point:+.1f} [{d.lower:+.1f}, {d.upper:+.1f}] (paper {d.paper:+.1f})"
                      for d in found)
    assert not [d for d in found if d.agreement == "opposite"], f"{table}/{name} − {reference}, opposite: {shown}"
    assert any(d.agreement == "agrees" for d in found), f"{table}/{name} − {reference}, no sign read: {shown}"
