"""The label mappings against the docs/protocol.md §6 tables, value by value for every raw value 0–255."""
import numpy as np
import pytest

from stego.data import mappings
from tests.fixtures import CITYSCAPES_LABEL_NAMES, PROTOCOL_POTSDAM_3, parse_protocol_coco


def test_protocol_coco_table_covers_every_fine_id_once():
    table, names = parse_protocol_coco()
    assert sorted(table) == list(range(182))
    assert len(names) == 27


def test_coco_fine_to_27_matches_protocol_for_all_256_values():
    table, _ = parse_protocol_coco()
    lut = mappings.COCO_FINE_TO_27
    assert lut.dtype == np.int64 and lut.shape == (256,)
    for value in range(256):
        assert lut[value] == table.get(value, -1), value
    assert lut[255] == -1


def test_coco_27_names_follow_protocol():
    _, names = parse_protocol_coco()
    simplified = [n.replace("(", "-").rstrip(")") for n in names]
    assert list(mappings.COCO_27_NAMES) == simplified
    assert mappings.COCO_27_NAMES[mappings.COCO_FIRST_STUFF] == "ceiling"
    assert mappings.COCO_27_NAMES[mappings.COCO_FIRST_STUFF - 1] == "vehicle"


def test_coco_spot_values():
    # Hand-picked from docs/protocol.md §6: person 0 → 9, "floor 100" → 13, "water 177–178" → 26, "solid 181" → 24.
    raw = np.array([[0, 100, 177], [178, 181, 255]])
    assert mappings.coco_fine_to_27(raw).tolist() == [[9, 13, 26], [26, 24, -1]]


def test_cityscapes_label_to_27_for_all_256_values():
    raw = np.arange(256)
    got = mappings.cityscapes_label_to_27(raw)
    for value in range(256):
        expected = value - 7 if 7 <= value <= 33 else -1
        assert got[value] == expected, value
    assert got.dtype == np.int64


def test_cityscapes_names_are_label_ids_7_to_33():
    assert len(mappings.CITYSCAPES_27_NAMES) == 27
    for label_id, name in CITYSCAPES_LABEL_NAMES.items():
        assert mappings.CITYSCAPES_27_NAMES[label_id - 7] == name


def test_potsdam_label_to_3_for_all_256_values():
    got = mappings.potsdam_label_to_3(np.arange(256))
    for value in range(256):
        assert got[value] == PROTOCOL_POTSDAM_3.get(value, -1), value
    assert mappings.POTSDAM_3_NAMES == ("roads and cars", "buildings and clutter", "trees and vegetation")


@pytest.mark.parametrize("fn", [mappings.coco_fine_to_27, mappings.cityscapes_label_to_27,
                                mappings.potsdam_label_to_3])
def test_mapping_functions_keep_shape_and_ignore_values_outside_a_byte(fn):
    raw = np.array([[-5, 0], [300, 4]], dtype=np.int32)
    out = fn(raw)
    assert out.shape == (2, 2) and out.dtype == np.int64
    assert out[0, 0] == -1 and out[1, 0] == -1
    assert out[1, 1] == fn(np.array([4]))[0]


def test_mapping_functions_reject_float_arrays():
    with pytest.raises(ValueError, match="integers"):
        mappings.potsdam_label_to_3(np.zeros((2, 2), dtype=np.float32))


def test_valid_raw_tables():
    assert np.flatnonzero(mappings.COCO_VALID_RAW).tolist() == list(range(182)) + [255]
    assert np.flatnonzero(mappings.CITYSCAPES_VALID_RAW).tolist() == list(range(34)) + [255]
    assert np.flatnonzero(mappings.POTSDAM_VALID_RAW).tolist() == [0, 1, 2, 3, 4, 5, 255]


def test_identity_and_shifted_luts():
    lut, valid = mappings.identity_lut(4)
    assert lut[:6].tolist() == [0, 1, 2, 3, -1, -1] and lut[255] == -1
    assert np.flatnonzero(valid).tolist() == [0, 1, 2, 3, 255]
    lut, valid = mappings.shifted_lut(3)
    assert lut[:5].tolist() == [-1, 0, 1, 2, -1]
    assert np.flatnonzero(valid).tolist() == [0, 1, 2, 3]
    lut, valid = mappings.identity_lut(None)
    assert lut[254] == 254 and lut[255] == -1 and valid.all()
    with pytest.raises(ValueError):
        mappings.identity_lut(0)
