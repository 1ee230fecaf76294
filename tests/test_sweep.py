"""Sweeps without a cluster: job specs and grids, status from records + submissions + scheduler answers,
skip-done and re-run-failed submission, multi-task jobs. Kills, signals and requeues: tests/test_requeue.py."""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stego import build, slurm_queue, sweep
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import MissingFileError, StegoError
from stego.slurm_queue import QueueError, parse_time_limit, slurm_states
from stego.runs import COUNTS_SUFFIX
from stego.sweep import (DONE, FAILED, MISSING, RUNNING, UNKNOWN, Job, Resources, grid_jobs, load_jobs, parse_grid,
                         parse_seeds, save_jobs, submit, sweep_status)
from stego.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def tiny_values(root, iterations=2, checkpoint_every=1000) -> dict:
    """A preset that trains and evaluates in seconds on CPU: random ViT-S/16 at 32 px, four synthetic images."""
    return {
        "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32, "workers": 0, "knn_k": 4,
                 "num_neighbors": 3},
        "model": {"backbone": "dino_vits16", "weights": "random", "dim": 8},
        "loss": {"feature_samples": 4, "neg_samples": 2},
        "train": {"batch_size": 4, "iterations": iterations, "checkpoint_every": checkpoint_every, "log_every": 1,
                  "hist_every": 0, "device": "cpu"},
        "eval": {"res": 32, "crf": False, "batch_size": 2, "crf_workers": 0},
    }


def write_preset(path, root, **train) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump({"name": path.stem, **tiny_values(root, **train)}))
    return path


def make_tiny_scenes(root) -> Path:
    """Synthetic scenes with their KNN table mined once (jobs running at the same time then only read it)."""
    from stego.config import from_dict

    root = make_scenes(root, SceneSpec(n_classes=4, n_train=8, n_val=2, size=32), seed=0)
    cfg = from_dict(tiny_values(root))
    build.knn_table(cfg, build.backbone_for(cfg), build.train_dataset(cfg))
    return root


def child_env(monkeypatch):
    """Job processes (local executor) import stego (and benchmarks) from this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def log_iterations(run_dir) -> list[int]:
    with open(Path(run_dir) / "train_log.csv") as f:
        return [int(r["iteration"]) for r in csv.DictReader(f)]


def attempt_starts(run_dir) -> list[int]:
    """Iterations at which later attempts resumed, from the log's attempt_start column (0 is the first attempt)."""
    with open(Path(run_dir) / "train_log.csv") as f:
        return sorted({int(r["attempt_start"]) for r in csv.DictReader(f)} - {0})


def write_marker(path, text="ok"):
    """An entry-point job function: writes one record."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"text": text}))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory.mktemp("scenes"))


def entry_job(tmp_path, name) -> Job:
    record = tmp_path / "records" / f"{name}.json"
    return Job(name, [str(record)], entry=f"{__name__}:write_marker", args={"path": str(record)})


def test_grid_jobs_cover_the_product_with_checked_configs(tmp_path, scenes):
    preset = write_preset(tmp_path / "tiny.yaml", scenes)
    grid = parse_grid(["loss.b_rand=0.2, 0.3", "train.lr=0.0001"])
    assert grid == {"loss.b_rand": ["0.2", "0.3"], "train.lr": ["0.0001"]}
    jobs = grid_jobs(str(preset), tmp_path / "sw", grid, parse_seeds("2"), overrides=["loss.b_knn=0.1"])
    assert sorted(j.id for j in jobs) == sorted(f"tiny/loss.b_rand={b},train.lr=0.0001/seed{s}"
                                                for b in (0.2, 0.3) for s in (0, 1))
    seen = set()
    for job in jobs:
        cfg = job.config()
        seen.add((cfg.loss.b_rand, cfg.train.seed))
        assert (cfg.train.lr, cfg.loss.b_knn) == (1e-4, 0.1)
        assert cfg.name == job.id.rsplit("/seed", 1)[0]
        assert job.records == [str(Path(job.out) / "record.json")]
        assert Path(job.out).parent == (tmp_path / "sw" / "runs").resolve()
    assert seen == {(0.2, 0), (0.2, 1), (0.3, 0), (0.3, 1)}
    assert len({j.out for j in jobs}) == 4
    assert parse_seeds("0,4,7") == [0, 4, 7] and parse_seeds(3) == [0, 1, 2]
    with pytest.raises(StegoError, match="loss.nope"):
        grid_jobs(str(preset), tmp_path / "sw", parse_grid(["loss.nope=1,2"]))
    for bad in ("loss.b_rand", "=1,2", "loss.b_rand=", "loss.b_rand=0.2,"):
        with pytest.raises(StegoError, match="section.key=v1,v2"):
            parse_grid([bad])
    with pytest.raises(StegoError, match="count"):
        parse_seeds("two")


def test_jobs_file_round_trip_and_bad_files(tmp_path):
    jobs = [entry_job(tmp_path, "a"), Job("p/seed1", [str(tmp_path / "r.json")], preset="x",
                                          overrides=["loss.b_rand=1"], seed=1, out=str(tmp_path / "run"))]
    save_jobs(jobs, tmp_path / "jobs.yaml")
    assert load_jobs(tmp_path / "jobs.yaml") == jobs
    bad = tmp_path / "bad.yaml"
    cases = {
        "unknown key": ({"jobs": [{**jobs[0].to_dict(), "gpus": 2}]}, "unknown key.*gpus"),
        "duplicate": ({"jobs": [jobs[0].to_dict(), jobs[0].to_dict()]}, "share the id"),
        "neither": ({"jobs": [{"id": "x", "records": ["r"]}]}, "either a preset"),
        "both": ({"jobs": [{**jobs[1].to_dict(), "entry": "m:f"}]}, "either a preset"),
        "entry": ({"jobs": [{**jobs[0].to_dict(), "entry": "not an entry"}]}, "package.module:function"),
        "records": ({"jobs": [{**jobs[0].to_dict(), "records": []}]}, "at least one record"),
        "shape": ({"jobs": {"id": "x"}}, "list of jobs"),
    }
    for name, (data, message) in cases.items():
        bad.write_text(yaml.safe_dump(data))
        with pytest.raises(StegoError, match=message):
            load_jobs(bad)
    bad.write_text("jobs: [unclosed")
    with pytest.raises(StegoError, match="not valid YAML"):
        load_jobs(bad)
    with pytest.raises(MissingFileError, match="python -m benchmarks sweep"):
        load_jobs(tmp_path / "nowhere.yaml")


def test_parse_time_limit_reads_slurm_formats():
    assert parse_time_limit("90") == 90
    assert parse_time_limit("1:30") == 2  # 1 min 30 s rounds up
    assert parse_time_limit("12:00:00") == 720
    assert parse_time_limit("1-00:00:00") == 1440
    assert parse_time_limit("2-3") == 2 * 1440 + 180
    assert parse_time_limit("0-1:15") == 75
    assert parse_time_limit("0:0:30") == 1
    for bad in ("abc", "0", "1:2:3:4", "-5"):
        with pytest.raises(StegoError, match="time limit"):
            parse_time_limit(bad)


def _fake_commands(tmp_path, monkeypatch, squeue_out, sacct_out, squeue_rc=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, out, rc in (("squeue", squeue_out, squeue_rc), ("sacct", sacct_out, 0)):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/{name}.args\ncat <<'EOF'\n{out}\nEOF\nexit {rc}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_states_reads_squeue_then_sacct(tmp_path, monkeypatch):
    squeue = "12_0|RUNNING|None\n12_1|PENDING|BeginTime\n12_2|CANCELLED|None\n77|RUNNING|None"
    bin_dir = _fake_commands(tmp_path, monkeypatch, squeue, "9|CANCELLED by 0\n10|COMPLETED")
    states = slurm_states(["12_0", "12_1", "12_2", "9", "404"])
    assert states == {"12_0": "RUNNING", "12_1": "PENDING (BeginTime)", "12_2": "CANCELLED", "9": "CANCELLED"}
    assert "-t all" in (bin_dir / "squeue.args").read_text()
    assert "-j 404,9" in (bin_dir / "sacct.args").read_text()  # only the ids squeue did not know
    _fake_commands(tmp_path, monkeypatch, "slurm_load_jobs error: Unable to contact slurm controller", "", 1)
    with pytest.raises(QueueError, match="Unable to contact"):
        slurm_states(["1"])


def test_status_combines_records_submissions_state_files_and_the_queue(tmp_path, monkeypatch):
    names = ["never", "running", "pending", "cancelled", "vanished", "done", "local_alive", "local_dead"]
    jobs = {name: entry_job(tmp_path, name) for name in names}
    sw = tmp_path / "sw"
    sw.mkdir()
    save_jobs(list(jobs.values()), sw / "jobs.yaml")
    write_marker(jobs["done"].records[0])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    ids = {"running": "11_0", "pending": "11_1", "cancelled": "11_2", "vanished": "11_3", "done": "11_4"}
    submissions = {jobs[n].key: [{"executor": "slurm", "scheduler_id": i, "host": host, "submitted": "t"}]
                   for n, i in ids.items()}
    submissions[jobs["local_alive"].key] = [{"executor": "local", "scheduler_id": str(os.getpid()), "host": host}]
    submissions[jobs["local_dead"].key] = [{"executor": "local", "scheduler_id": str(dead.pid), "host": host}]
    (sw / "submissions.json").write_text(json.dumps(submissions))
    (sw / "state").mkdir()
    (sw / "state" / f"{jobs['vanished'].key}.json").write_text(json.dumps(
        {"job": "vanished", "state": FAILED, "error": "ValueError: boom", "attempts": [{"outcome": "failed"}]}))
    (sw / "state" / f"{jobs['cancelled'].key}.json").write_text(json.dumps(
        {"job": "cancelled", "state": RUNNING, "error": None, "attempts": [{"start_iteration": 30}]}))
    queue = {"11_0": "RUNNING", "11_1": "PENDING (BeginTime)", "11_2": "CANCELLED", "11_4": "COMPLETED"}
    monkeypatch.setattr(slurm_queue, "slurm_states", lambda ids: {i: s for i, s in queue.items() if i in set(ids)})
    got = {s.job.id: s for s in sweep_status(sw)}
    assert {n: got[n].status for n in names} == {
        "never": MISSING, "running": RUNNING, "pending": RUNNING, "cancelled": FAILED, "vanished": FAILED,
        "done": DONE, "local_alive": RUNNING, "local_dead": FAILED}
    assert got["pending"].detail.startswith("PENDING (BeginTime)")
    assert got["cancelled"].detail.startswith("CANCELLED: no record")
    assert got["local_dead"].detail.startswith("process ended: never started")
    assert "ValueError: boom" in got["vanished"].detail and "no longer in the queue" in got["vanished"].detail
    assert "11_3_0_log.err" in got["vanished"].detail
    assert got["vanished"].attempts == 1
    table = sweep.format_status(list(got.values()))
    assert table.splitlines()[-1] == "1 done, 3 running, 3 failed, 1 missing"

    def down(ids):
        raise QueueError("squeue failed: Unable to contact slurm controller")

    monkeypatch.setattr(slurm_queue, "slurm_states", down)
    got = {s.job.id: s.status for s in sweep_status(sw)}
    assert [got[n] for n in ("running", "cancelled", "done", "never")] == [UNKNOWN, UNKNOWN, DONE, MISSING]


def test_resubmission_skips_running_and_unknown_jobs(tmp_path, monkeypatch):
    sw = tmp_path / "sw"
    busy, fresh = entry_job(tmp_path, "busy"), entry_job(tmp_path, "fresh")
    sweep.merge_jobs(sw, [busy])
    (sw / "submissions.json").write_text(json.dumps(
        {busy.key: [{"executor": "slurm", "scheduler_id": "5_0", "host": "h", "submitted": "t"}]}))
    answer = {"5_0": "RUNNING"}
    monkeypatch.setattr(slurm_queue, "slurm_states", lambda ids: dict(answer))
    assert submit(sw, [fresh], Resources("debug")) == [fresh]  # only the new job; the running one is left alone
    assert Path(fresh.records[0]).exists() and not Path(busy.records[0]).exists()
    def down(ids):
        raise QueueError("squeue failed: down")

    monkeypatch.setattr(slurm_queue, "slurm_states", down)
    assert submit(sw, [], Resources("debug")) == []  # unknown: not resubmitted
    answer["5_0"] = "TIMEOUT"
    monkeypatch.setattr(slurm_queue, "slurm_states", lambda ids: dict(answer))
    assert submit(sw, [], Resources("debug")) == [busy]
    assert [s.status for s in sweep_status(sw)] == [DONE, DONE]
    with pytest.raises(StegoError, match="defined differently"):
        sweep.merge_jobs(sw, [Job("busy", ["elsewhere.json"], entry=busy.entry, args=busy.args)])


def test_entry_jobs_call_their_function_and_report_import_errors(tmp_path):
    good = entry_job(tmp_path, "good")
    bad = Job("bad", [str(tmp_path / "bad.json")], entry="no_such_module_xyz:run")
    silent = Job("silent", [str(tmp_path / "silent.json")], entry=good.entry, args={"path": str(tmp_path / "x.json")})
    submit(tmp_path / "sw", [good, bad, silent], Resources("debug"))
    got = {s.job.id: s for s in sweep_status(tmp_path / "sw")}
    assert got["good"].status == DONE and json.loads(Path(good.records[0]).read_text()) == {"text": "ok"}
    assert got["bad"].status == FAILED and "cannot import no_such_module_xyz" in got["bad"].detail
    assert got["silent"].status == FAILED and "returned without writing" in got["silent"].detail


def test_command_line_dry_run_and_status(tmp_path, scenes, capsys):
    from stego.cli import main

    preset = write_preset(tmp_path / "tiny.yaml", scenes)
    sw = tmp_path / "sw"
    assert main(["sweep", "submit", "--dir", str(sw), "--preset", str(preset), "--grid", "loss.b_rand=0.2,0.3",
                 "--set", "train.lr=0.001", "--seeds", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 done, 0 running, 0 failed, 4 missing" in out and "nothing submitted" in out
    assert [j.config().train.lr for j in load_jobs(sw / "jobs.yaml")] == [0.001] * 4
    assert main(["sweep", "status", str(sw), "--json"]) == 1  # not all done
    report = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in report] == [MISSING] * 4 and report[0]["records"][0].endswith("record.json")
    assert main(["sweep", "submit", "--dir", str(sw), "--grid", "loss.b_rand=1"]) == 2
    assert "need --preset" in capsys.readouterr().err
    assert main(["sweep", "status", str(tmp_path / "nowhere")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


@pytest.mark.parametrize("slurm", ["absent", "unreachable"])
def test_submitting_without_a_reachable_slurm_is_one_line(tmp_path, scenes, capsys, monkeypatch, slurm):
    """The default executor is SLURM: without sbatch, or with a controller that does not answer (sbatch installed,
    no slurm.conf), the user gets one line naming --executor local, not submitit's traceback."""
    from stego.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if slurm == "unreachable":
        for tool in ("sbatch", "sinfo"):
            (bin_dir / tool).write_text("#!/bin/sh\necho 'sinfo: fatal: Could not establish a configuration "
                                        "source' >&2\nexit 1\n")
            (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/nonexistent")
    preset = write_preset(tmp_path / "tiny.yaml", scenes)
    assert main(["sweep", "submit", "--dir", str(tmp_path / "sw"), "--preset", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor local" in err[0], err
    assert ("sbatch not found" if slurm == "absent" else "Could not establish a configuration source") in err[0]


def test_debug_sweep_writes_records_skips_done_and_reruns_only_failed(tmp_path, scenes):
    later = tmp_path / "later"  # a data root that appears only after the first submission
    preset = write_preset(tmp_path / "tiny.yaml", scenes)
    jobs = grid_jobs(str(preset), tmp_path / "sw", parse_grid([f"data.root={scenes},{later}"]))
    good, bad = jobs
    assert submit(tmp_path / "sw", jobs, Resources("debug")) == jobs
    got = {s.job.id: s for s in sweep_status(tmp_path / "sw")}
    assert got[good.id].status == DONE
    assert got[bad.id].status == FAILED and f"{later}: no synthetic scenes" in got[bad.id].detail
    record = json.loads(Path(good.records[0]).read_text())
    assert record["kind"] == "eval" and record["config"]["data"]["root"] == str(scenes)
    assert 0.0 <= record["metrics"]["cluster"]["miou"] <= 1.0
    assert [a["outcome"] for a in record["sweep"]["attempts"]] == ["done"]
    assert record["sweep"]["attempts"][0]["start_iteration"] == 0
    stamp = os.stat(good.records[0]).st_mtime_ns

    later.symlink_to(scenes)
    assert submit(tmp_path / "sw", [], Resources("debug")) == [bad]  # only the failed job runs again
    assert [s.status for s in sweep_status(tmp_path / "sw")] == [DONE, DONE]
    assert os.stat(good.records[0]).st_mtime_ns == stamp
    submissions = sweep.read_submissions(tmp_path / "sw")
    assert (len(submissions[good.key]), len(submissions[bad.key])) == (1, 2)
    state = sweep.read_json(sweep.state_path(tmp_path / "sw", bad))
    assert [a["outcome"] for a in state["attempts"]] == ["failed", "done"]
    assert submit(tmp_path / "sw", jobs, Resources("debug")) == []


def _wait(condition, timeout_s, what):
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _checkpoint_iteration(run_dir) -> int:
    try:
        return load_checkpoint(Path(run_dir) / "checkpoint.pt")["iteration"]
    except (StegoError, KeyError):
        return 0


@pytest.mark.slow
def test_multi_task_job_trains_data_parallel_and_writes_one_record(tmp_path, scenes, monkeypatch):
    child_env(monkeypatch)
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=2)
    (job,) = grid_jobs(str(preset), tmp_path / "sw")
    submit(tmp_path / "sw", [job], Resources("local", tasks=2, cpus=1), wait=True, poll_s=0.5)
    (status,) = sweep_status(tmp_path / "sw")
    assert status.status == DONE, status.detail
    summary = json.loads((Path(job.out) / "train_summary.json").read_text())
    assert (summary["world_size"], summary["effective_batch"]) == (2, 8)
    assert len(json.loads(Path(job.records[0]).read_text())["sweep"]["attempts"]) == 1
    logs = {int(p.name.split("_")[1]): p.read_text() for p in (tmp_path / "sw" / "logs").glob("*_log.err")}
    assert sorted(logs) == [0, 1]
    assert "cluster mIoU" in logs[0] and "eval:" not in logs[1]  # rank 0 alone evaluates


def test_stego_does_not_import_the_harness():
    code = ("import sys, stego.cli, stego.sweep; stego.cli.build_parser(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'baselines', 'reports')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_table_rows_become_jobs_that_write_benchmark_records(tmp_path, monkeypatch):
    from benchmarks import jobs as table_jobs, runner
    from benchmarks.registry import rows

    results = tmp_path / "results"
    jobs = table_jobs.row_jobs(["table2"], [0], "toy", results)
    cited = [r for r in rows("table2") if r.cited]
    assert all(runner.record_path(results, r, 0).is_file() for r in cited)  # cited rows need no job
    ids = [j.id for j in jobs]
    # at toy scale ViT-B and ViT-S map to one backbone and the world's values (benchmarks/toy.py): one training
    shared = ("table2/vit-s-plus-crf+table2/vit-b-plus-crf+table2/vit-s-plus-sc+"
              "table2/vit-b-clamp-plus-crop-plus-sc/seed0")
    assert len(jobs) == 4 and shared in ids
    assert sum(len(j.records) for j in jobs) == len(rows("table2")) - len(cited)
    pair = jobs[ids.index(shared)]
    submit(tmp_path / "sw", [pair], Resources("debug"))
    assert [s.status for s in sweep_status(tmp_path / "sw") if s.job.id == pair.id] == [DONE]
    records = [json.loads(Path(path).read_text()) for path in pair.records]
    assert [(r["row"], r["scale"], r["seed"]) for r in records] == [
        ("ViT-S +CRF", "toy", 0), ("ViT-B +CRF", "toy", 0), ("ViT-S +SC", "toy", 0), ("ViT-B clamp+crop+SC", "toy", 0)]
    evaluations = sorted(p.name for p in (results / "runs").glob("*/eval-*.json")
                         if not p.name.endswith(COUNTS_SUFFIX))  # the per-image counts sidecar aside
    assert len(evaluations) == 1 and evaluations[0].endswith("-crf.json")  # one evaluation served both rows
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StegoError, match="--gpus 1"):
        table_jobs.run_rows(**pair.args)
