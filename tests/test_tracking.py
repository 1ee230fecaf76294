"""Training scalars reach every sink: train_log.csv, TensorBoard events (read back with tensorboard's
EventAccumulator) and an offline Weights & Biases run (read back from its .wandb log), with the same numbers."""
import csv
import glob
import json
import struct

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stego.config import with_overrides
from stego.data.synthetic import SceneSpec, make_scenes
from stego.train import due, train
from tests.test_train import tiny

FIELDS = ("loss", "loss_knn", "corr_knn", "corr_rand", "linear_loss", "cluster_loss")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=12, n_val=4, size=64), seed=6)


def csv_rows(run_dir) -> dict:
    with open(run_dir / "train_log.csv", newline="") as f:
        return {int(r["iteration"]): r for r in csv.DictReader(f)}


def test_tensorboard_events_hold_the_csv_scalars_after_a_resume(scenes, tmp_path):
    cfg = with_overrides(tiny(scenes, iterations=6, hist_every=3), ["train.tensorboard=true"])
    train(cfg, tmp_path / "run", stop_at=4)
    train(cfg, tmp_path / "run", resume=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    rows = csv_rows(tmp_path / "run")
    assert sorted(rows) == list(range(1, 7))
    for name in FIELDS:
        scalars = events.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == sorted(rows), name
        for s in scalars:
            assert s.value == pytest.approx(float(rows[s.step][name]), rel=1e-6, abs=1e-7), (name, s.step)
    assert {"code_corr/self", "code_corr/knn", "code_corr/rand"} <= set(events.Tags()["histograms"])
    saved = json.loads((tmp_path / "run" / "code_corr_hist.json").read_text())
    assert [h.step for h in events.Histograms("code_corr/knn")] == [h["iteration"] for h in saved] == [3, 4, 6]


def wandb_history(folder) -> list[dict]:
    """History rows of the offline W&B run under `folder`, from its .wandb file (a LevelDB-style log of
    protobuf records: 32 KiB blocks, each record a 7-byte header of CRC, length and chunk type)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, chunks, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
            pending = b""
    rows = []
    for raw in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_an_offline_wandb_run_holds_the_csv_scalars(scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = with_overrides(tiny(scenes, iterations=4), ["train.wandb=stego-tests"])
    train(cfg, tmp_path / "run")
    rows = csv_rows(tmp_path / "run")
    logged = {int(r["_step"]): r for r in wandb_history(tmp_path / "run") if "train/loss" in r}
    assert sorted(logged) == sorted(rows) == [1, 2, 3, 4]
    for step, row in logged.items():
        for name in FIELDS:
            assert float(row[f"train/{name}"]) == pytest.approx(float(rows[step][name]), rel=1e-6, abs=1e-7)


def test_what_each_iteration_is_due():
    cfg = tiny(".", iterations=10, log_every=4, hist_every=5, val_every=3, checkpoint_every=6)
    seen = {it: due(it, 10, cfg.train) for it in range(1, 11)}
    assert [it for it, d in seen.items() if d["log"]] == [4, 8, 10]
    assert [it for it, d in seen.items() if d["hist"]] == [5, 10]
    assert [it for it, d in seen.items() if d["validate"]] == [3, 6, 9]
    assert [it for it, d in seen.items() if d["checkpoint"]] == [6, 10]
    assert not any(d["hist"] for d in (due(it, 10, tiny(".", hist_every=0).train) for it in range(1, 11)))
