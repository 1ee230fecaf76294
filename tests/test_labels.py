"""Labels outside the classes stop at the file that holds them (a one-line error naming the file, the values and
the fix), in training and evaluation alike, never deep in cross-entropy or the confusion matrix; a batch whose
every pixel is unlabelled gives a linear-probe loss of exactly 0 and finite gradients (docs/protocol.md §11)."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stego.build import train_dataset
from stego.constants import IGNORE
from stego.data.datasets import ImageFolder
from stego.data.files import LabelRangeError
from stego.data.synthetic import SceneSpec, make_scenes
from stego.evaluate import run_eval
from stego.model import LinearProbe
from stego.train import train
from tests.test_train import tiny

N_CLASSES = 5


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_classes=N_CLASSES, n_train=8, n_val=2, size=48),
                       seed=2)


def poison(label_file, values) -> None:
    """Write `values` into a few pixels of a label PNG."""
    label = np.array(Image.open(label_file))
    label.flat[:len(values)] = values
    Image.fromarray(label).save(label_file)


def test_an_image_folder_label_outside_the_classes_names_file_values_and_fix(scenes, tmp_path):
    root = shutil.copytree(scenes, tmp_path / "data")
    ds = ImageFolder(root, "train")
    poison(ds.label_path(3), [7, 9, 7])
    with pytest.raises(LabelRangeError) as err:
        ds[3]
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{ds.label_path(3)}: holds label values 7, 9, outside "
                                                      f"0-{N_CLASSES - 1} (classes) and 255 (unlabelled); "), message
    assert "data.n_classes" in message and "classes.txt" in message and "stego data check" in message


def test_training_stops_at_the_bad_label_file_not_in_cross_entropy(scenes, tmp_path):
    root = shutil.copytree(scenes, tmp_path / "data")
    cfg = tiny(root, iterations=2, batch_size=8)
    bad = train_dataset(cfg).label_path(0)
    poison(bad, [N_CLASSES])  # one past the last class: cross-entropy's IndexError without the check
    with pytest.raises(LabelRangeError, match=f"^{bad}: holds label values {N_CLASSES}, outside"):
        train(cfg, tmp_path / "run")


def test_evaluation_checks_an_undeclared_image_folder_against_the_probes_classes(scenes, tmp_path):
    """Without classes.txt or data.n_classes the folder's own classes are unknown: the checkpoint's probes say how
    many there are, so a label beyond them is refused at its file before any prediction."""
    checkpoint = train(tiny(scenes, iterations=1), tmp_path / "run")
    root = shutil.copytree(scenes, tmp_path / "data")
    (root / "classes.txt").unlink()
    bad = root / "labels" / "val" / sorted(p.name for p in (root / "labels" / "val").iterdir())[1]
    poison(bad, [200])
    with pytest.raises(LabelRangeError, match=f"^{bad}: holds label values 200, outside 0-{N_CLASSES - 1} "):
        run_eval(None, checkpoint, tmp_path / "record.json", overrides=[f"data.root={root}"])


def test_a_batch_with_every_pixel_unlabelled_gives_loss_zero_and_finite_gradients():
    torch.manual_seed(0)
    probe, code = LinearProbe(4, 3), torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.full((2, 6, 6), IGNORE)
    loss = probe.loss(code, labels)
    loss.backward()
    assert loss.item() == 0.0
    grads = [code.grad, *(p.grad for p in probe.parameters())]
    assert all(torch.isfinite(g).all() and not g.any() for g in grads)
    # the release's mean over labelled pixels divides 0 by 0 here
    logits = F.interpolate(probe(code), size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.isnan(F.cross_entropy(logits, labels, ignore_index=IGNORE))
