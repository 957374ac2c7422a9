"""Names, options and their error messages."""

from __future__ import annotations

import pytest

import mobilevit


def test_list_models() -> None:
    names = mobilevit.list_models()
    assert names == sorted(names)
    assert {"mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_100"} <= set(names)
    assert mobilevit.list_models("mobilevitv2_*") == [f"mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150",
                                                                                  "175", "200")]  # fmt: skip


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="mobilevit_xxs"):
        mobilevit.create_model("mobilevit_xxss")


def test_unknown_option_suggests_close_match() -> None:
    with pytest.raises(TypeError, match="drop_path_rate"):
        mobilevit.create_model("mobilevit_xxs", drop_path=0.1)


def test_bad_option_value() -> None:
    with pytest.raises(ValueError, match="attention"):
        mobilevit.create_model("mobilevit_xxs", attention="linear")
    with pytest.raises(ValueError, match="out_indices"):
        mobilevit.create_model("mobilevit_xxs", features_only=True, out_indices=(5,))


def test_pretrained_true_with_unknown_weights_says_what_to_do() -> None:
    # (pretrained=True with registered weights, cached or not, is covered offline by tests/test_hub.py)
    with pytest.raises(ValueError, match=r"Available for mobilevit_xxs: .*pretrained='path/to/checkpoint'"):
        mobilevit.create_model("mobilevit_xxs.no_such_tag", pretrained=True)
