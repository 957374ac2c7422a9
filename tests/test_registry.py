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


def test_load_pretrained_builds_the_model_around_its_checkpoint(tmp_path) -> None:
    """The weights layer's one load call: the checkpoint supplies the classifier size and every tensor."""
    from mobilevit.models import build_config
    from mobilevit.weights import ModelRequest, load_pretrained

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    original = mobilevit.create_model("mobilevit_xxs", num_classes=7)
    folder = mobilevit.save_pretrained(original, tmp_path / "m")
    model = load_pretrained(ModelRequest("mobilevit_xxs", build_config("mobilevit_xxs")), folder)
    assert model.num_classes == 7 and model.pretrained_cfg.source == str(folder)
    loaded, saved = model.state_dict(), original.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
