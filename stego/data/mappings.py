"""Label mappings of docs/protocol.md §6: COCO-Stuff fine → 27, Cityscapes labelIds → 27, Potsdam 6 → 3.

Each mapping is a 256-entry int64 look-up table indexed by the raw value stored in the label file; values
that are not a class map to IGNORE (-1). A matching boolean table of *valid* raw values says which stored
values may appear at all: readers reject a file holding any other value (label out of range) instead of
silently ignoring it.
"""
import numpy as np

from stego.constants import IGNORE

RAW_UNLABELLED = 255
"""Value of unlabelled pixels in the label files of every dataset here (COCO-Stuff, Potsdam, image folders)."""


def _lut_from_ranges(ranges):
    """Build a 256-entry LUT from {class: [fine ids or (first, last) inclusive ranges]}."""
    lut = np.full(256, IGNORE, dtype=np.int64)
    for coarse, members in ranges.items():
        for member in members:
            first, last = member if isinstance(member, tuple) else (member, member)
            lut[first:last + 1] = coarse
    return lut


# docs/protocol.md §6, CocoStuff-27: coarse class → fine stuffthingmaps ids (0–181).
_COCO_RANGES = {
    0: [(71, 76)],  # electronic
    1: [(77, 82)],  # appliance
    2: [(51, 60)],  # food (things)
    3: [(61, 70)],  # furniture (things)
    4: [(83, 90)],  # indoor
    5: [(43, 50)],  # kitchen
    6: [(25, 32)],  # accessory
    7: [(15, 24)],  # animal
    8: [(9, 14)],  # outdoor
    9: [0],  # person
    10: [(33, 42)],  # sports
    11: [(1, 8)],  # vehicle
    12: [(101, 102)],  # ceiling
    13: [100, (113, 117)],  # floor
    14: [(120, 121), 152, 169],  # food (stuff)
    15: [97, (106, 107), 109, 111, 122, 129, 132, 155, 160, 164],  # furniture (stuff)
    16: [99, 131, 138, 142],  # rawmaterial
    17: [(91, 92), (103, 104), 108, 130, 136, 140, 151, (166, 167)],  # textile
    18: [(170, 176)],  # wall
    19: [(179, 180)],  # window
    20: [(94, 95), 127, 150, 157, 165],  # building
    21: [110, (124, 125), 135, 139, (143, 144), 146, 148, 153, 158],  # ground
    22: [93, 96, 118, 123, 128, 133, 141, 162, 168],  # plant
    23: [105, 156],  # sky
    24: [126, 134, 149, 159, 161, 181],  # solid
    25: [98, 112, 137, 145, 163],  # structural
    26: [119, 147, 154, (177, 178)],  # water
}

COCO_FINE_TO_27 = _lut_from_ranges(_COCO_RANGES)
"""int64[256]: COCO-Stuff fine id (0–181) → CocoStuff-27 class; 255 and unused values → -1."""

COCO_VALID_RAW = np.zeros(256, dtype=bool)
COCO_VALID_RAW[:182] = True
COCO_VALID_RAW[RAW_UNLABELLED] = True

COCO_27_NAMES = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)
COCO_FIRST_STUFF = 12
"""Classes 0–11 are things, 12–26 stuff."""

CITYSCAPES_FIRST_CLASS_ID = 7
CITYSCAPES_LAST_CLASS_ID = 33

CITYSCAPES_27_NAMES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)

CITYSCAPES_LABELID_TO_27 = np.full(256, IGNORE, dtype=np.int64)
CITYSCAPES_LABELID_TO_27[CITYSCAPES_FIRST_CLASS_ID:CITYSCAPES_LAST_CLASS_ID + 1] = np.arange(27)
"""int64[256]: gtFine labelId → class labelId − 7 for labelIds 7–33; every other value → -1.

labelIds 0–6 are the void classes (ignored, as in the release). Values 34–255 are not Cityscapes labelIds
(cityscapesScripts never writes the license plate's id −1 into labelIds maps; some tools store it as 255).
The table maps them to -1 so it is total; the reader accepts 255 as unlabelled and rejects 34–254 as a label
out of range. The release would have produced classes ≥ 27 for such values.
"""

CITYSCAPES_VALID_RAW = np.zeros(256, dtype=bool)
CITYSCAPES_VALID_RAW[:CITYSCAPES_LAST_CLASS_ID + 1] = True
CITYSCAPES_VALID_RAW[RAW_UNLABELLED] = True

POTSDAM_3_NAMES = ("roads and cars", "buildings and clutter", "trees and vegetation")

POTSDAM_6_TO_3 = _lut_from_ranges({0: [0, 4], 1: [1, 5], 2: [2, 3]})
"""int64[256]: Potsdam fine label (0–5) → 3 classes; 255 → -1."""

POTSDAM_VALID_RAW = np.zeros(256, dtype=bool)
POTSDAM_VALID_RAW[:6] = True
POTSDAM_VALID_RAW[RAW_UNLABELLED] = True


def identity_lut(n_classes):
    """LUT and valid table for label files that already hold class ids 0..n_classes-1 and 255 as unlabelled.

    With n_classes None (unknown), every value 0–254 is a class id.
    """
    n = 255 if n_classes is None else int(n_classes)
    if not 0 < n <= 255:
        raise ValueError(f"n_classes must be in 1..255 for 8-bit label files, got {n_classes}")
    lut = np.full(256, IGNORE, dtype=np.int64)
    lut[:n] = np.arange(n)
    valid = np.zeros(256, dtype=bool)
    valid[:n] = True
    valid[RAW_UNLABELLED] = True
    return lut, valid


def shifted_lut(n_classes):
    """LUT and valid table for five-crop label PNGs, which store label + 1 (0 = ignore, 1..n_classes).

    With n_classes None (unknown), every value 1–255 is a class id + 1.
    """
    n = 255 if n_classes is None else int(n_classes)
    if not 0 < n <= 255:
        raise ValueError(f"n_classes must be in 1..255 for 8-bit label files, got {n_classes}")
    lut = np.full(256, IGNORE, dtype=np.int64)
    lut[1:n + 1] = np.arange(n)
    valid = np.zeros(256, dtype=bool)
    valid[:n + 1] = True
    return lut, valid


def _apply(lut, arr):
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"label array must hold integers, got dtype {arr.dtype}")
    out = np.full(arr.shape, IGNORE, dtype=np.int64)
    inside = (arr >= 0) & (arr <= 255)
    out[inside] = lut[arr[inside].astype(np.intp)]
    return out


def coco_fine_to_27(arr):
    """Map a COCO-Stuff fine label array to CocoStuff-27 (int64, -1 ignore)."""
    return _apply(COCO_FINE_TO_27, arr)


def cityscapes_label_to_27(arr):
    """Map a Cityscapes gtFine labelIds array to Cityscapes-27: labelId − 7, anything outside 7–33 → -1."""
    return _apply(CITYSCAPES_LABELID_TO_27, arr)


def potsdam_label_to_3(arr):
    """Map a Potsdam 6-class label array to Potsdam-3: {0,4}→0, {1,5}→1, {2,3}→2, anything else → -1."""
    return _apply(POTSDAM_6_TO_3, arr)
