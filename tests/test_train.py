"""Training: resume after an interruption gives the same weights; a stop request (Ctrl-C, end-of-time signal)
checkpoints after its step, and a validation it skips or cuts short runs first on resume; checkpoints and
records are safe to read."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

import pytest
import torch

from stego.config import from_dict, with_overrides
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.build import val_dataset
from stego.checkpoint import load_checkpoint, load_for_eval
from stego.evaluate import evaluate, run_eval, validator
from stego.train import TrainingStopped, train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=24, n_val=6, size=64), seed=3)


def tiny(root, **train):
    return from_dict({
        "name": "tiny",
        "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32, "workers": 0, "knn_k": 8},
        "model": {"backbone": "dino_vits16", "weights": "random", "dim": 8},
        "loss": {"feature_samples": 4, "neg_samples": 2, "b_rand": 0.3},
        "train": {"batch_size": 4, "iterations": 8, "checkpoint_every": 3, "log_every": 1, **train},
        "eval": {"res": 48, "crf": False, "batch_size": 3},
    })


def weights(path):
    return load_checkpoint(path)["model"]


def test_interrupted_and_resumed_run_ends_with_the_same_weights(scenes, tmp_path):
    cfg = tiny(scenes)
    whole = train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "parts", stop_at=5)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["iteration"] == 5
    resumed = train(cfg, tmp_path / "parts", resume=True)
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open(tmp_path / "parts" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))
    assert [int(r["attempt_start"]) for r in rows] == [0] * 5 + [5] * 3
    # Training moved the head away from its initialisation, so the equality above is not trivial.
    fresh = train(tiny(scenes, iterations=1), tmp_path / "one")
    assert not torch.equal(weights(fresh)["head.linear.weight"], a["head.linear.weight"])


class StopAfter:
    """A stop request that turns true at its n-th reading (as a signal arriving during step n would)."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    def __call__(self):
        self.reads += 1
        return self.reads >= self.n


def test_stop_request_checkpoints_after_the_step_and_resume_matches(scenes, tmp_path):
    cfg = tiny(scenes)  # periodic checkpoints at 3 and 6 only
    whole = train(cfg, tmp_path / "whole")
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, tmp_path / "parts", should_stop=StopAfter(4))
    assert stopped.value.iteration == 4
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["iteration"] == 4
    assert not (tmp_path / "parts" / "train_summary.json").exists()
    # machine settings may change on resume and change nothing: here one DataLoader worker instead of none
    machine = with_overrides(cfg, ["data.workers=1", "eval.crf_workers=3"])
    resumed = train(machine, tmp_path / "parts", resume=True, should_stop=lambda: False)
    a, b = weights(whole), weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open(tmp_path / "parts" / "train_log.csv") as f:
        assert [int(r["attempt_start"]) for r in csv.DictReader(f)] == [0] * 4 + [4] * 4


class Recorded:
    """The suite's validator, recording each finished validation's mIoU (None: cut short by a stop request)."""

    def __init__(self, cfg):
        self.validate, self.results = validator(cfg), []

    def __call__(self, model, backbone, should_stop=None):
        self.results.append(self.validate(model, backbone, should_stop))
        return self.results[-1]


@pytest.mark.parametrize("asked_at_read, cut_short", [(4, 0), (6, 1)])
def test_a_validation_a_stop_skips_or_cuts_short_runs_first_on_resume(scenes, tmp_path, asked_at_read, cut_short):
    """Reads of the stop request: one per step, one per validation batch (2 here). Read 4 comes with step 4, whose
    validation is then skipped; read 6 comes before the second batch of that validation. Either way the
    checkpoint of iteration 4 owes it, resume runs it first, and selection ends as in an uninterrupted run."""
    cfg = tiny(scenes, val_every=4, select_on_val=True)
    whole, parts = Recorded(cfg), Recorded(cfg)
    best_whole = train(cfg, tmp_path / "whole", validate=whole)
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, tmp_path / "parts", validate=parts, should_stop=StopAfter(asked_at_read))
    assert stopped.value.iteration == 4 and parts.results == [None] * cut_short
    state = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert state["iteration"] == 4 and state["validation_owed"]
    best_parts = train(cfg, tmp_path / "parts", validate=parts, resume=True, should_stop=lambda: False)
    assert parts.results[cut_short:] == whole.results and len(whole.results) == 2
    assert not load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["validation_owed"]
    summaries = [json.loads((tmp_path / run / "train_summary.json").read_text()) for run in ("whole", "parts")]
    assert summaries[0]["best"] == summaries[1]["best"] and summaries[0]["best"]["iteration"] in (4, 8)
    a, b = weights(best_whole), weights(best_parts)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_stop_during_the_resumed_validation_stops_again_and_still_owes_it(scenes, tmp_path):
    cfg = tiny(scenes, val_every=4)
    with pytest.raises(TrainingStopped):
        train(cfg, tmp_path / "run", validate=Recorded(cfg), should_stop=StopAfter(4))
    again = Recorded(cfg)
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, tmp_path / "run", validate=again, resume=True, should_stop=StopAfter(2))
    assert stopped.value.iteration == 4 and again.results == [None]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["validation_owed"]


def test_evaluation_asked_to_stop_returns_nothing_partial(scenes, tmp_path):
    cfg = tiny(scenes, iterations=1)
    _, model, backbone = load_for_eval(train(cfg, tmp_path / "run"))
    val = val_dataset(cfg)
    assert evaluate(model, backbone, val, cfg, should_stop=StopAfter(2)) is None
    assert evaluate(model, backbone, val, cfg, should_stop=lambda: False)["images"] == len(val)


def _two_rank_worker(rank, world, port, cfg_dict, out, stop_reads):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    cfg = from_dict(cfg_dict)
    should_stop = StopAfter(stop_reads) if rank == 1 and stop_reads else (lambda: False)
    try:
        train(cfg, out, resume=Path(out, "checkpoint.pt").exists(), validate=validator(cfg), should_stop=should_stop)
    except TrainingStopped as stopped:
        Path(out, f"stopped{rank}").write_text(str(stopped.iteration))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_validation_cut_short_on_one_rank_stops_both_ranks_there(scenes, tmp_path):
    """Rank 1 alone is asked to stop during the validation of iteration 4 (an iteration where the every-10
    agreement would not look): both ranks stop at 4, and the resumed pair ends as an uninterrupted pair."""
    import torch.multiprocessing as mp

    cfg = tiny(scenes, val_every=4, select_on_val=True).to_dict()
    port = 29500 + (os.getpid() + 211) % 1000
    mp.spawn(_two_rank_worker, args=(2, port, cfg, str(tmp_path / "whole"), 0), nprocs=2)
    mp.spawn(_two_rank_worker, args=(2, port + 1, cfg, str(tmp_path / "parts"), 6), nprocs=2)
    assert [(tmp_path / "parts" / f"stopped{r}").read_text() for r in range(2)] == ["4", "4"]
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["iteration"] == 4
    mp.spawn(_two_rank_worker, args=(2, port + 2, cfg, str(tmp_path / "parts"), 0), nprocs=2)
    summaries = [json.loads((tmp_path / run / "train_summary.json").read_text()) for run in ("whole", "parts")]
    assert summaries[0]["best"] == summaries[1]["best"] and summaries[1]["world_size"] == 2
    a, b = weights(tmp_path / "whole" / "best.pt"), weights(tmp_path / "parts" / "best.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_ctrl_c_in_stego_train_checkpoints_and_resume_finishes(scenes, tmp_path):
    values = tiny(scenes, iterations=100, checkpoint_every=1000).to_dict()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(values))
    command = [sys.executable, "-c", "import sys; from stego.cli import main; sys.exit(main(sys.argv[1:]))", "train",
               str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path = tmp_path / "run" / "train_log.csv"
    began = time.monotonic()
    while not (log_path.exists() and log_path.read_text().count("\n") > 3):
        assert proc.poll() is None and time.monotonic() - began < 120, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"]
    assert 3 <= stopped_at < 100 and f"stopped at iteration {stopped_at}" in out
    done = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 101))
    assert {int(r["attempt_start"]) for r in rows} == {0, stopped_at}


def test_a_run_is_not_overwritten_and_resume_checks_the_config(scenes, tmp_path):
    train(tiny(scenes, iterations=2), tmp_path / "run")
    with pytest.raises(StegoError, match="--resume"):
        train(tiny(scenes, iterations=2), tmp_path / "run")
    with pytest.raises(StegoError, match="train.lr"):
        train(tiny(scenes, iterations=2, lr=1e-3), tmp_path / "run", resume=True)


def test_truncated_checkpoint_is_a_clear_error(scenes, tmp_path):
    path = train(tiny(scenes, iterations=1), tmp_path / "run")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StegoError, match="unreadable"):
        load_checkpoint(path)
    with pytest.raises(StegoError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_eval_writes_a_complete_record_with_crf(scenes, tmp_path):
    path = train(tiny(scenes, iterations=2), tmp_path / "run")
    cfg = tiny(scenes, iterations=2)
    cfg.eval.crf, cfg.eval.crf_workers = True, 0
    record = run_eval(cfg, path, tmp_path / "record.json")
    saved = json.loads((tmp_path / "record.json").read_text())
    assert saved["metrics"]["images"] == 6
    for probe in ("cluster", "linear", "cluster_crf", "linear_crf"):
        m = saved["metrics"][probe]
        assert 0 <= m["miou"] <= 1 and 0 <= m["accuracy"] <= 1
        assert len(m["iou"]) == 5
        assert sum(map(sum, m["confusion"])) == 6 * 48 * 48  # synthetic scenes label every pixel
    assert saved["config"]["name"] == "tiny" and saved["versions"]["torch"] == torch.__version__
    assert record.metrics["cluster"]["miou"] == saved["metrics"]["cluster"]["miou"]


def test_raw_feature_baseline_trains_only_the_probes(scenes, tmp_path):
    cfg = tiny(scenes, iterations=3)
    cfg.model.projection = "none"
    state = load_checkpoint(train(cfg, tmp_path / "raw"))
    assert not any(k.startswith("head.") for k in state["model"])
    assert len(state["optimizers"]) == 2
    assert state["model"]["cluster_probe.clusters"].shape == (5, 384)


def test_code_correlation_histograms_count_every_sampled_pair(scenes, tmp_path):
    cfg = tiny(scenes, iterations=4, hist_every=2)
    train(cfg, tmp_path / "run")
    hists = json.loads((tmp_path / "run" / "code_corr_hist.json").read_text())
    assert [h["iteration"] for h in hists] == [2, 4]
    points = cfg.loss.feature_samples ** 2
    pairs = cfg.train.batch_size * points * points
    for h in hists:
        assert sum(h["self"]) == sum(h["knn"]) == pairs and sum(h["rand"]) == cfg.loss.neg_samples * pairs
        assert sum(h["self"][h["bins"] // 2:]) > 0


def test_untrained_head_reference_keeps_the_initial_head_and_mines_nothing(tmp_path):
    root = make_scenes(tmp_path / "scenes", SceneSpec(n_train=8, n_val=2, size=48), seed=4)
    trained = load_checkpoint(train(tiny(root, iterations=2, batch_size=4), tmp_path / "a"))["model"]
    assert (root / "nns").is_dir()
    root2 = make_scenes(tmp_path / "scenes2", SceneSpec(n_train=8, n_val=2, size=48), seed=4)
    frozen = load_checkpoint(train(tiny(root2, iterations=2, batch_size=4, lr=0.0), tmp_path / "b"))["model"]
    assert not (root2 / "nns").exists()
    assert not torch.equal(trained["head.linear.weight"], frozen["head.linear.weight"])
    init = load_checkpoint(train(tiny(root2, iterations=1, batch_size=4, lr=0.0), tmp_path / "c"))["model"]
    assert torch.equal(init["head.linear.weight"], frozen["head.linear.weight"])
    assert not torch.equal(init["cluster_probe.clusters"], frozen["cluster_probe.clusters"])
