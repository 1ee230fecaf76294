"""The paper-scale rehearsal at a tiny size: the synthetic files in the real layout, the data stages as the real
commands with their costs recorded, a re-run that runs nothing again; the train and eval command lines it would run
parse; the sizes and the growth fit; a command's orphans counted, other children of the measuring process left
alone. ~25 s on the 2 shared cores at load 5 (three stego processes start torch)."""
import subprocess
import sys
import time

import pytest

from stego.cli import build_parser, parse
from stego.io import atomic_save_json

from . import rehearsal, rehearsal_data
from .measure import REAP_TIMEOUT, become_subreaper, run_measured, tree_files

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
"""A process that spends 0.5 s of CPU."""


def test_split_sizes_scale_every_split_and_full_is_the_paper():
    assert rehearsal_data.split_sizes("cocostuff27", 49_629) == {"train": 49_629, "val": 2_175}
    assert rehearsal_data.split_sizes("cityscapes27", 49_629) == {"train": 2_975, "val": 500}
    assert rehearsal_data.split_sizes("cocostuff27", 5_000) == {"train": 5_000, "val": 219}
    assert rehearsal_data.split_sizes("cityscapes27", 2) == {"train": 2, "val": 1}
    assert rehearsal.parse_sizes("full,1000,1000") == [1000, 49_629]
    with pytest.raises(SystemExit):
        rehearsal.parse_sizes("60000")


def test_growth_exponent_is_the_log_log_slope():
    assert rehearsal.growth_exponent([1e3, 5e3, 25e3], [2.0, 10.0, 50.0]) == pytest.approx(1.0)
    assert rehearsal.growth_exponent([1e3, 5e3], [1.0, 25.0]) == pytest.approx(2.0)
    assert rehearsal.growth_exponent([1e3], [1.0]) is None


def test_tiny_rehearsal_runs_the_data_stages_once(tmp_path, capsys):
    stages = ("write", "check", "fivecrop")  # knn, train and eval take minutes: their command lines are parsed below
    results = rehearsal.rehearse(tmp_path, [3], datasets=("cocostuff27",), only=stages, workers=1)
    run = results["runs"]["cocostuff27"]["3"]
    assert set(run) == set(stages)
    assert all(run[s]["returncode"] == 0 and run[s]["wall_s"] > 0 and run[s]["cpu_s"] > 0 for s in stages)
    assert run["check"]["cpu_s"] > 1  # a stego process (torch imported) was measured, not only the launcher
    assert run["write"]["items"] == 3 + 1 and run["fivecrop"]["items"] == 15
    assert run["fivecrop"]["files"] == 2 * 15 + 1  # a JPEG and a PNG label per five-crop, and the manifest
    root = tmp_path / "cocostuff27" / "n3" / "data"
    assert len(list((root / "cocostuff" / "images" / "train2017").glob("*.jpg"))) == 3
    assert tree_files([root / "cocostuff" / "annotations" / "val2017"])[0] == 1
    finished = {s: run[s]["finished"] for s in stages}
    again = rehearsal.rehearse(tmp_path, [3], datasets=("cocostuff27",), only=stages, workers=1)
    assert {s: again["runs"]["cocostuff27"]["3"][s]["finished"] for s in stages} == finished
    table = rehearsal.tables(again)
    assert "| cocostuff27 | fivecrop | 3 | 15 |" in table and table.startswith("Machine: ")


def test_train_and_eval_command_lines_parse(tmp_path):
    for dataset in rehearsal.DATASETS:
        for stage in rehearsal.stages(dataset, 1000, tmp_path, iterations=5, batch_size=4, workers=1):
            if stage.argv[1:3] == ["-m", "stego.cli"]:
                args = parse(build_parser(), [str(a) for a in stage.argv[3:]])
                assert args.command in ("data", "train", "eval"), stage.name


def test_a_commands_orphans_are_counted_and_other_children_left_alone(tmp_path):
    assert become_subreaper()
    other = subprocess.Popen([sys.executable, "-c", "import time; x = b'.' * 300_000_000; time.sleep(60)"])  # a fixture
    try:
        orphaning = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {BURN!r}])"  # outlives it
        began = time.perf_counter()
        usage = run_measured([sys.executable, "-c", orphaning], tmp_path / "log")
        assert usage.returncode == 0 and usage.leftover == 0
        assert usage.cpu_s >= 0.5  # the orphan's CPU time was reaped and counted
        assert time.perf_counter() - began < REAP_TIMEOUT / 2  # no wait for the unrelated child
        assert other.poll() is None  # neither reaped nor waited for
        assert usage.tree_rss_mb < 200  # the unrelated child holds 300 MB: not the command's
    finally:
        other.kill()
        other.wait()


LATE_GROWER = ("import os, subprocess, sys\n"
               "script = 'import os, time; print(os.getpid(), flush=True); time.sleep(1.5); "
               "x = bytearray(300_000_000); time.sleep(1.0)'\n"
               "subprocess.run([sys.executable, '-c', script], check=True)\n")
"""A command whose child allocates 300 MB only 1.5 s in: the peak must name that child and that moment."""


def test_the_peak_names_its_process_and_moment(tmp_path):
    usage = run_measured([sys.executable, "-c", LATE_GROWER], tmp_path / "log", sample_s=0.1)
    child = (tmp_path / "log").read_text().split()[0]
    assert usage.returncode == 0
    assert f"({child}) at " in usage.biggest and usage.biggest.endswith(" MB")
    assert 280 <= float(usage.biggest.split(": ")[-1][:-3]) <= 400
    assert 1.4 <= usage.peak_at_s <= 3.5  # not the start, when both processes are small
    assert usage.tree_rss_mb >= 280


def _results(cpu, runs):
    return {"machine": {"cpu": cpu, "cores": 2, "memory_gib": 23.5, "python": "3.11"}, "runs": runs}


def _entry(items, cpu_s):
    return dict(items=items, wall_s=cpu_s, cpu_s=cpu_s, max_rss_mb=100.0, tree_rss_mb=150.0, files=1, mb=0.0,
                load_start=[1.0], load_end=[1.0])


def test_tables_merge_roots_of_one_machine_and_refuse_two(tmp_path, capsys):
    first = _results("cpu A", {"cocostuff27": {"1000": {"knn": _entry(5000, 100.0), "train": _entry(5000, 9.0)}}})
    second = _results("cpu A", {"cocostuff27": {"1000": {"knn": _entry(5000, 120.0)},
                                                "5000": {"knn": _entry(25000, 900.0)}}})
    merged = rehearsal.merge_results([first, second])
    assert merged["runs"]["cocostuff27"]["1000"]["knn"]["cpu_s"] == 120.0  # the later root's row
    assert merged["runs"]["cocostuff27"]["1000"]["train"]["cpu_s"] == 9.0  # the earlier root's other stage kept
    for name, part in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        atomic_save_json(part, tmp_path / name / "results.json")
    assert rehearsal.main(["--table", "--root", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    assert "| cocostuff27 | knn | 5,000 | 25,000 |" in table
    assert "| cocostuff27 | knn | 1,000 | 5,000 | 120.0 |" in table
    assert "| cocostuff27 | knn | 1.25 | 1.25 |" in table  # log(900 / 120) / log(5): the merged points
    with pytest.raises(SystemExit, match="different machines"):
        rehearsal.merge_results([first, _results("cpu B", {})])
    with pytest.raises(SystemExit, match="not found"):
        rehearsal.main(["--table", "--root", str(tmp_path / "a"), str(tmp_path / "missing")])
