"""Where every dataset file and released checkpoint comes from: names, URLs, approximate sizes, known hashes.

The one place for these facts (backbone weight names and URLs live in stego.backbones.BACKBONES). Sizes are
the published approximate ones (None: not published) and only inform the disk-space estimate and the docs;
the exact size always comes from the server. Nothing here was tried from the project's machines: any host
may be down or moved, so each file also says how to get it by hand.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Digest:
    """A known hash of a file, or a prefix of it, and who published it."""

    algo: str
    value: str
    source: str

    def matches(self, hexdigest):
        return hexdigest.lower().startswith(self.value.lower())

    def __str__(self):
        return f"{self.algo} {self.value}{'…' if len(self.value) < 32 else ''} ({self.source})"


WGET = "`wget -c -O {dest} {url}`, or a browser"
"""How to fetch a file by hand ({url} and {dest} are filled in), unless its Remote says otherwise."""


@dataclass(frozen=True)
class Remote:
    """One downloadable file: its name (on disk and on a mirror), URL, approximate size, hashes, how to get it."""

    name: str
    url: str
    size: int | None = None
    digests: tuple = ()
    manual: str = WGET
    via: str = "http"
    """"http", or "cityscapes" for a package of the Cityscapes site (needs its login, unless mirrored)."""


GB, MB = 10**9, 10**6

# The authors' release (mhamilton723/STEGO src/download_datasets.py, src/download_models.py): an Azure blob.
RELEASE_BASE = "https://marhamilresearch4.blob.core.windows.net/stego-public/"
AZCOPY = "`azcopy copy {url} {dest}`, which the release's authors suggest where wget stalls"


def _release(path):
    return Remote(path.rsplit("/", 1)[-1], RELEASE_BASE + path, manual=AZCOPY)


RELEASE_ZIPS = {
    "cocostuff27": _release("pytorch_data/cocostuff.zip"),
    "cityscapes27": _release("pytorch_data/cityscapes.zip"),
    "potsdam3": _release("pytorch_data/potsdam.zip"),
    "potsdam3_raw": _release("pytorch_data/potsdamraw.zip"),
}
"""The authors' preprocessed archives; no sizes or hashes published, their inner layout is not verified."""

CHECKPOINTS = {r.name: r for r in map(_release, (
    "saved_models/cocostuff27_vit_base_5.ckpt",
    "saved_models/cityscapes_vit_base_1.ckpt",
    "saved_models/potsdam_test.ckpt",
    "saved_models/picie_and_probes.pth",
))}
"""The authors' released files (no hashes published)."""

DEFAULT_CHECKPOINTS = ("cocostuff27_vit_base_5.ckpt", "cityscapes_vit_base_1.ckpt", "potsdam_test.ckpt")
"""What `stego weights download --release` fetches when no file is named: the three STEGO checkpoints."""


# COCO 2017 and COCO-Stuff 164k.
COCO_TRAIN = Remote("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", 18 * GB,
                    (Digest("md5", "cced6f7f71b7629ddf16f17bbcfab6b2", "PaddleDetection; COCO publishes none"),))
COCO_VAL = Remote("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", 1 * GB,
                  (Digest("md5", "442b8da7639aecaf257c1dceb8ba8c80", "PaddleDetection; COCO publishes none"),))
STUFFTHINGMAPS = Remote("stuffthingmaps_trainval2017.zip",
                        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                        "stuffthingmaps_trainval2017.zip", 659 * MB)
IIC_CURATED = Remote("COCOStuff164kCurated.tar.gz",
                     "https://www.robots.ox.ac.uk/~xuji/datasets/COCOStuff164kCurated.tar.gz")
"""IIC's curated id lists (every list, Coco164kFull_Stuff_Coarse.txt among them)."""

_PICIE = "https://raw.githubusercontent.com/janghyuncho/PiCIE/master/curated/"
PICIE_LISTS = {
    split: Remote(f"{split}/Coco164kFull_Stuff_Coarse_7.txt", f"{_PICIE}{split}/Coco164kFull_Stuff_Coarse_7.txt",
                  digests=(Digest("sha256", prefix, "computed from PiCIE's repository copy"),))
    for split, prefix in (("train2017", "3b837594"), ("val2017", "7c629734"))
}
"""PiCIE's copies of the `_7` lists (49,629 / 2,175 ids). Their names keep the split folder: both files are
called Coco164kFull_Stuff_Coarse_7.txt, so on a mirror they are BASE_URL/train2017/... and .../val2017/...."""

# Cityscapes: packages of an account-only site, fetched with cityscapesScripts (login, server md5, resume).
CITYSCAPES_SITE = "https://www.cityscapes-dataset.com"
CITYSCAPES_PACKAGES = {"gtFine_trainvaltest.zip": (1, 241 * MB), "leftImg8bit_trainvaltest.zip": (3, 11 * GB)}
CITYSCAPES_GTFINE, CITYSCAPES_LEFTIMG = (
    Remote(name, f"{CITYSCAPES_SITE}/file-handling/?packageID={pid}", size,
           manual=f"a browser, logged in at {CITYSCAPES_SITE}/downloads/", via="cityscapes")
    for name, (pid, size) in CITYSCAPES_PACKAGES.items())


def cityscapes_md5_url(name):
    """The site's page with the md5 of a package (cityscapesScripts checks it; we name it when it differs)."""
    return f"{CITYSCAPES_SITE}/md5-sum/?packageID={CITYSCAPES_PACKAGES[name][0]}"


# Potsdam (ISPRS 2D labelling), as IIC preprocessed it.
IIC_POTSDAM = Remote("Potsdam.tar.gz", "https://www.robots.ox.ac.uk/~xuji/datasets/Potsdam.tar.gz")
IIC_POTSDAM_COUNTS = {"all": 8550, "labelled": 5400, "labelled_test": 855, "labelled_train": 4545,
                      "unlabelled_train": 3150}
"""Tile counts of IIC's Potsdam (38 RGB-IR tiles, 24 labelled, each cut into 15 × 15 crops)."""
ISPRS_REQUEST = "the ISPRS 2D semantic labelling benchmark's data request form"

# Backbone weight files (names and URLs: stego.backbones.BACKBONES): what is known beyond torch hub's
# name-suffix rule (name-<sha256 prefix>.ext, which DINOv3's licence-gated files follow too).
WEIGHT_DIGESTS = {
    "moco_v2_800ep_pretrain.pth.tar": (Digest("md5", "a04e12f8", "MoCo README"),),
}
WEIGHT_ALTERNATIVES = {
    "moco_v2_800ep_pretrain.pth.tar":
        f"fetch the release's copy, {RELEASE_BASE}models/models/moco_v2_800ep_pretrain.pth.tar",
}
"""Other places a weight file is published (named in its error messages)."""


def mirror_url(remote, mirror):
    """The URL to fetch `remote` from: BASE_URL/<name> with a mirror, else its own."""
    return f"{mirror.rstrip('/')}/{remote.name}" if mirror else remote.url

