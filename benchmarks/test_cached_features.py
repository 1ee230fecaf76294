"""The toy benchmark rows run from the feature store (`--override data.features=cached`, `python -m benchmarks run
--set data.features=cached`) and their records agree with the image path's: within ±0.2 points per table number
for a float32 store (docs/features.md; the filter bank gives the same numbers to the bit)."""
import pytest

from benchmarks import runner
from benchmarks.registry import row
from stego import build
from stego.data.features import INDEX
from stego.records import TABLE_METRICS

CACHED32 = ["data.features=cached", "data.features_dtype=float32"]


def test_a_row_from_a_float32_cache_agrees_with_its_image_record(bench, scale, data_root, tmp_path, run_overrides):
    if scale != "toy" or run_overrides:
        pytest.skip("compares the default toy records with a cached run of the same row")
    r = row("table5", "full")  # every loss term, five-crops, KNN pairs and CRF
    images = bench(r, 0)  # the session's image-path record (run now if no test ran it yet)
    cached = runner.run_row(r, "toy", 0, tmp_path / "cached", data_root=data_root, overrides=CACHED32)
    assert cached.run_overrides == CACHED32 and cached.config["data"]["features"] == "cached"
    cfg = runner.row_config(r, "toy", 0, data_root, overrides=CACHED32)
    for spec in (build.feature_spec(cfg), build.val_feature_spec(cfg)):  # the stores it trained and scored from
        assert (spec.folder / INDEX).is_file(), spec.folder
    for metric in TABLE_METRICS:
        assert abs(cached.measured_values[metric] - images.measured_values[metric]) <= 0.2, metric
    assert cached.metrics["images"] == images.metrics["images"]
