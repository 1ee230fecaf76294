"""Where downloads go: the release-checkpoint folder, the backbone-weights folder, a data root's archives."""
import os
from pathlib import Path

RELEASE_ENV = "STEGO_RELEASE_DIR"
RELEASE_DEFAULT = "saved_models"


def release_dir():
    """The folder of the authors' released checkpoints: $STEGO_RELEASE_DIR, else ./saved_models."""
    return Path(os.environ.get(RELEASE_ENV) or RELEASE_DEFAULT).expanduser()


def weights_dir():
    """The first folder the backbone loader searches: $STEGO_WEIGHTS_DIR, else torch hub's checkpoints."""
    from stego.backbones.weights import search_dirs  # imports torch and timm: only when weights are wanted

    return search_dirs()[0]


def downloads_dir(root):
    """ROOT/downloads: the archives of a data root, kept (unless removed) so re-runs and checks can use them."""
    return Path(root) / "downloads"
