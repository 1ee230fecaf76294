"""Presets load with the docs/protocol.md §5 values; overrides and ablations apply; typos are clear errors."""
import pytest
import yaml

from stego.config import from_dict, list_presets, load_config
from stego.errors import StegoError

# docs/protocol.md §5, transcribed independently, the released values to the last digit the release prints
# (its train_config.yml blocks), the paper's as Table 6 rounds them: (λ_rand, λ_knn, λ_self, b_rand, b_knn, b_self,
# dim, backbone, pointwise, batch, iterations, crop).
RELEASED = {
    "cocostuff27_release": (0.1538476246415498, 1, 0.1, 1, 0.2, 0.12, 90, "dino_vitb8", "release", 32, 7000, "five"),
    "cityscapes27_release": (0.9058762625226623, 0.577453483136995, 1, 0.31361241889448443, 0.1754346515479633,
                             0.45828472207, 100, "dino_vitb8", "off", 32, 7000, "five"),
    "potsdam3_release": (0.63, 0.25, 0.67, 0.76, 0.02, 0.08, 70, "dino_vits8", "release", 16, 5000, "none"),
    "cocostuff27_paper": (0.15, 1.00, 0.10, 1.00, 0.20, 0.12, 70, "dino_vitb8", "release", 32, 7000, "five"),
    "cocostuff27_vits8_paper": (0.15, 1.00, 0.10, 1.00, 0.20, 0.12, 70, "dino_vits8", "release", 32, 7000, "five"),
    "cityscapes27_paper": (0.91, 0.58, 1.00, 0.31, 0.18, 0.46, 70, "dino_vitb8", "off", 32, 7000, "five"),
    "potsdam3_paper": (0.63, 0.25, 0.67, 0.76, 0.02, 0.08, 70, "dino_vitb8", "release", 16, 5000, "none"),
}


def preset_values(cfg) -> tuple:
    """A config's values in the order of RELEASED."""
    loss = cfg.loss
    return (loss.lambda_rand, loss.lambda_knn, loss.lambda_self, loss.b_rand, loss.b_knn, loss.b_self, cfg.model.dim,
            cfg.model.backbone, loss.pointwise, cfg.train.batch_size, cfg.train.iterations, cfg.data.crop)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_presets_carry_the_protocol_values(name):
    cfg = load_config(name)
    assert preset_values(cfg) == RELEASED[name]
    l = cfg.loss
    assert (l.feature_samples, l.neg_samples, cfg.data.num_neighbors, cfg.data.crop_ratio) == (11, 5, 7, 0.5)
    assert (l.zero_clamp, l.stabilize, cfg.model.projection, cfg.model.dropout, cfg.model.extra_clusters) == (
        True, False, "nonlinear", 0.1, 0)
    assert (cfg.train.lr, cfg.train.probe_lr, cfg.data.res, cfg.eval.res, cfg.eval.crf) == (5e-4, 5e-3, 224, 320, True)
    assert cfg.train.precision == "fp32"
    assert cfg.follows == name.rsplit("_", 1)[1]


def test_every_preset_loads():
    names = list_presets()
    assert "synthetic_demo" in names and len(names) >= 8
    for name in names:
        assert load_config(name).name


def test_overrides_and_ablations():
    cfg = load_config("cocostuff27_release", ["loss.b_rand=0.3", "train.iterations=10", "model.weights=random"])
    assert cfg.loss.b_rand == 0.3 and cfg.train.iterations == 10 and cfg.model.weights == "random"
    ab = load_config("cocostuff27_vits8_paper", ablation="no_zero_clamp")
    assert ab.loss.zero_clamp is False and ab.name.endswith("no_zero_clamp")
    assert load_config("cocostuff27_vits8_paper", ablation="no_pointwise").loss.pointwise == "off"
    assert load_config("cocostuff27_vits8_paper", ablation="no_five_crop").data.crop == "none"
    assert load_config("cocostuff27_vits8_paper", ablation="mocov2_backbone").model.backbone == "mocov2_r50"


def test_unknown_keys_sections_and_presets_are_named():
    with pytest.raises(StegoError, match="loss.b_random"):
        load_config("cocostuff27_release", ["loss.b_random=0.3"])
    with pytest.raises(StegoError, match="optim"):
        from_dict({"optim": {}})
    with pytest.raises(StegoError, match="no preset"):
        load_config("cocostuff28")
    with pytest.raises(StegoError, match="unknown ablation"):
        load_config("cocostuff27_release", ablation="no_everything")
    with pytest.raises(StegoError, match="section.key=value"):
        load_config("cocostuff27_release", ["loss.b_rand"])
    with pytest.raises(ValueError, match="pointwise"):
        load_config("cocostuff27_release", ["loss.pointwise=both"])


def test_yaml_words_are_typed_by_their_field():
    cfg = load_config("cocostuff27_release", ["loss.pointwise=off", "loss.zero_clamp=off", "eval.crf=yes"])
    assert cfg.loss.pointwise == "off" and cfg.loss.zero_clamp is False and cfg.eval.crf is True
    with pytest.raises(StegoError, match="quote it"):
        from_dict({"loss": {"pointwise": False}})
    with pytest.raises(StegoError, match="true or false"):
        load_config("cocostuff27_release", ["loss.zero_clamp=maybe"])
    with pytest.raises(StegoError, match="loss.pointwise must be one of release, paper, off, got 'both'"):
        from_dict({"loss": {"pointwise": "both"}})


def test_numbers_are_typed_by_their_field():
    cfg = load_config("cocostuff27_release", ["train.lr=1e-4", "train.iterations=20", "loss.b_rand=1"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.loss.b_rand, float) and cfg.train.iterations == 20
    with pytest.raises(StegoError, match="number"):
        load_config("cocostuff27_release", ["train.lr=fast"])
    with pytest.raises(StegoError, match="whole number"):
        load_config("cocostuff27_release", ["train.iterations=2.5"])


BAD_VALUES = [
    ("model.projection=foo", "model.projection must be one of nonlinear, linear, none, pca, random, got 'foo'"),
    ("model.projection=lineer", "did you mean 'linear'?"),
    ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
    ("model.dim=0", "model.dim must be at least 1, got 0"),
    ("train.lr=-1", "train.lr must be at least 0, got -1.0"),
    ("data.res=0", "data.res must be at least 1, got 0"),
    ("train.batch_size=abc", "train.batch_size must be a whole number, got 'abc'"),
    ("train.iterations=0", "train.iterations must be at least 1, got 0"),
    ("train.iterations=-5", "train.iterations must be at least 1, got -5"),
    ("data.knn_k=5", "data.knn_k=5 must exceed data.num_neighbors=7"),
    ("data.crop_ratio=1.5", "data.crop_ratio must be in (0, 1]"),
    ("data.crop=fiv", "did you mean 'five'?"),
    ("model.dropout=1", "model.dropout must be in [0, 1)"),
    ("eval.crf_timeout=0", "eval.crf_timeout must be positive"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda, cuda:N or mps"),
    ("train.precision=fp16", "train.precision must be one of fp32, bf16, got 'fp16'"),
    ("train.precision=bf61", "did you mean 'bf16'?"),
    ("loss.neg_samples=-1", "loss.neg_samples must be at least 0"),
    ("train.batch_size=1", "train.batch_size must be at least 2 while the random term is on"),
    ("follows=mine", "follows must be one of release, paper, ours"),
]


@pytest.mark.parametrize("override,needle", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_every_field_is_checked_when_the_config_is_built(override, needle):
    with pytest.raises(StegoError) as e:
        load_config("cocostuff27_release", [override])
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    assert msg.startswith(f"override {override!r}: "), msg  # the override is at fault, not the preset file


def test_unknown_keys_name_their_origin_and_the_closest_key(tmp_path):
    for override, needle in (("trian.iterations=5", "unknown section 'trian'; did you mean 'train'?"),
                             ("train.iteratons=5", "unknown key train.iteratons; did you mean 'iterations'?")):
        with pytest.raises(StegoError) as e:
            load_config("cocostuff27_release", [override])
        assert str(e.value).startswith(f"override {override!r}: ") and needle in str(e.value), str(e.value)
    preset = tmp_path / "mine.yaml"
    preset.write_text("train: {iteratons: 5}\n")
    with pytest.raises(StegoError) as e:
        load_config(str(preset), ["train.lr=0.1"])
    assert str(e.value).startswith(f"{preset}: unknown key train.iteratons"), str(e.value)
    preset.write_text("train: {batch_size: 0}\n")
    with pytest.raises(StegoError) as e:
        load_config(str(preset))
    assert str(e.value).startswith(f"{preset}: train.batch_size must be at least 1"), str(e.value)
    with pytest.raises(StegoError, match="no preset 'cocostuff27_relase'; did you mean 'cocostuff27_release'"):
        load_config("cocostuff27_relase")


def test_every_preset_and_ablation_passes_the_checks():
    from stego.config import PRESET_DIR, list_presets

    ablations = yaml.safe_load((PRESET_DIR / "_ablations.yaml").read_text())
    for name in list_presets():
        for ablation in (None, *ablations):
            load_config(name, ablation=ablation)
