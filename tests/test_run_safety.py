"""What a user hits first with runs: two writers of one run folder, --resume on the wrong folder, extending a
finished run, evaluation that cannot be scored, outputs that cannot be written, and the --run-gpu promise."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stego.cli import main
from stego.config import with_overrides
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.evaluate import run_eval
from stego.checkpoint import load_checkpoint
from stego.train import train
from tests.test_train import tiny, weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=12, n_val=4, size=64), seed=5)


def _tiny_args(scenes, out, *extra):
    """`stego train` of a tiny run into `out`; extra: overrides and flags (--resume)."""
    flags = [e for e in extra if e.startswith("--")]
    return ["train", "data.dataset=synthetic", f"data.root={scenes}", "data.crop=none", "data.res=32",
            "data.workers=0", "data.knn_k=8", "model.backbone=dino_vits16", "model.weights=random", "model.dim=8",
            "loss.feature_samples=4", "loss.neg_samples=2", "train.batch_size=4", "train.checkpoint_every=3",
            "eval.res=48", "eval.crf=false", *[e for e in extra if e not in flags], "--out", str(out), *flags]


def test_a_second_writer_of_a_run_folder_gets_a_one_line_error(scenes, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom stego.io import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_tiny_args(scenes, out, "train.iterations=2")) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by pid {holder.pid}" in err and "--out" in err and err.count("\n") == 1
        assert not (out / "checkpoint.pt").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(_tiny_args(scenes, out, "train.iterations=2")) == 0  # the lock ends with its process


def test_resume_refuses_a_folder_without_a_checkpoint(scenes, tmp_path, capsys):
    for folder in (tmp_path / "typo", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        assert main(_tiny_args(scenes, folder, "train.iterations=2", "--resume")) == 2
        err = capsys.readouterr().err
        assert f"--resume: {folder} holds no checkpoint.pt" in err and "drop --resume" in err
        assert not (folder / "config.yaml").exists()


def test_a_finished_run_extends_when_only_iterations_grow(scenes, tmp_path):
    """Extending 5 -> 8 iterations ends with the weights of an 8-iteration run; shrinking or changing more is
    refused; the summary is strict JSON."""
    whole = train(tiny(scenes, iterations=8), tmp_path / "whole")
    short = tiny(scenes, iterations=5)
    train(short, tmp_path / "extended")
    extended = train(tiny(scenes, iterations=8), tmp_path / "extended", resume=True)
    a, b = weights(whole), weights(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(extended)["config"]["train"]["iterations"] == 8

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))

    assert strict((tmp_path / "extended" / "train_summary.json").read_text())["iterations"] == 8
    with pytest.raises(StegoError, match="is at iteration 8, past train.iterations=5"):
        train(short, tmp_path / "extended", resume=True)
    with pytest.raises(StegoError, match=r"differs in train\.lr.*only train\.iterations may grow"):
        train(with_overrides(tiny(scenes, iterations=9), ["train.lr=0.01"]), tmp_path / "extended", resume=True)


@pytest.fixture(scope="module")
def checkpoint(scenes, tmp_path_factory):
    return train(tiny(scenes, iterations=2), tmp_path_factory.mktemp("run"))


def test_evaluation_refuses_what_it_cannot_score_before_the_pass(checkpoint, scenes, tmp_path):
    unlabelled = make_scenes(tmp_path / "unlabelled", SceneSpec(n_train=4, n_val=2, size=64), seed=1)
    for split in ("train", "val"):
        for label in (unlabelled / "labels" / split).iterdir():
            label.unlink()
        (unlabelled / "labels" / split).rmdir()
    record = tmp_path / "record.json"
    with pytest.raises(StegoError, match=r"split 'val' of synthetic under .* has no labels.*stego predict"):
        run_eval(None, checkpoint, record, overrides=[f"data.root={unlabelled}"])
    with pytest.raises(StegoError, match=r"does not fit the given config: model\.dim=12 \(trained with 8\)"):
        run_eval(with_overrides(tiny(scenes), ["model.dim=12"]), checkpoint, record)
    with pytest.raises(StegoError, match=r"--record .* is a folder; give a file path"):
        run_eval(None, checkpoint, tmp_path)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StegoError, match=r"cannot create the folder"):
        run_eval(None, checkpoint, tmp_path / "a-file" / "sub" / "record.json")
    assert not record.exists()


def test_outputs_that_are_files_are_named_before_any_work(scenes, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(_tiny_args(scenes, taken, "train.iterations=2")) == 2
    assert f"--out {taken} is a file, not a folder" in capsys.readouterr().err
    assert main(["report", str(scenes), "--out", str(taken)]) == 2
    assert f"--out {taken} is a file, not a folder" in capsys.readouterr().err


def test_run_gpu_without_a_gpu_stops_pytest_at_once(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "--run-gpu", "-q", "-p", "no:cacheprovider",
                          "tests/test_metrics.py"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 4, run.stdout[-2000:]
    assert "--run-gpu: no CUDA device is visible" in run.stdout + run.stderr
    assert " passed" not in run.stdout
