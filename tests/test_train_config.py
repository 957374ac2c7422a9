"""Tests of the training config (mobilevit.train.config): YAML round trip, overrides, errors, shipped recipes."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest

from mobilevit import list_models
from mobilevit.train import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    from_dict,
    from_yaml,
    list_recipes,
    load_recipe,
    to_yaml,
)

V2_WIDTHS = {"050": (0.009, 0.004), "075": (0.009, 0.008), "100": (0.0075, 0.013), "125": (0.0049, 0.020),
             "150": (0.0035, 0.029), "175": (0.0026, 0.039)}  # fmt: skip


def test_recipes_listed():
    names = list_recipes()
    assert {
        "mobilevit_xxs",
        "mobilevit_xs",
        "mobilevit_s",
        "mobilevitv2_100",
        "mobilevitv3_xxs",
        "fastvit_sa12",
    } <= set(names)
    assert {f"mobilevitv2_{w}" for w in V2_WIDTHS} <= set(names)


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_round_trip(name, tmp_path):
    cfg = load_recipe(name)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name in list_models()
    assert from_yaml(to_yaml(cfg)) == cfg
    path = tmp_path / "cfg.yaml"
    to_yaml(cfg, path)
    assert from_yaml(path) == cfg
    assert from_yaml(str(path)) == cfg


def test_v1_values():
    xxs = load_recipe("mobilevit_xxs")
    assert (xxs.optimizer.lr, xxs.optimizer.betas, xxs.optimizer.weight_decay) == (2e-3, (0.9, 0.999), 0.01)
    assert (xxs.schedule.warmup_iters, xxs.schedule.warmup_init_lr, xxs.schedule.min_lr) == (3000, 2e-4, 2e-4)
    assert xxs.epochs == 300 and xxs.sampler.kind == "variable_batch"
    assert (xxs.sampler.min_size, xxs.sampler.max_size, xxs.sampler.base_size, xxs.sampler.batch_size) == (
        160,
        320,
        256,
        128,
    )
    assert (xxs.augment.label_smoothing, xxs.ema.momentum, xxs.augment.interpolation) == (0.1, 0.0005, "bilinear")
    assert (xxs.model.drop_rate, xxs.model.proj_drop_rate) == (0.1, 0.05)
    s = load_recipe("mobilevit_s")
    assert s.schedule.warmup_iters == 20000 and s.amp and s.model.proj_drop_rate == 0.1


@pytest.mark.parametrize("width", list(V2_WIDTHS))
def test_v2_values(width):
    cfg = load_recipe(f"mobilevitv2_{width}")
    lr, wd = V2_WIDTHS[width]
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.no_decay_norm_bias) == (lr, wd, True)
    assert cfg.schedule.min_lr == pytest.approx(lr / 10)
    assert (cfg.schedule.warmup_iters, cfg.schedule.warmup_init_lr) == (20000, 1e-6)
    assert cfg.sampler.kind == "fixed" and cfg.sampler.base_size == 256
    a = cfg.augment
    assert (a.interpolation, a.randaugment, a.random_erase, a.mixup_alpha, a.cutmix_alpha) == (
        "bicubic",
        True,
        0.25,
        0.2,
        1.0,
    )
    assert cfg.amp and cfg.channels_last and cfg.clip_grad == 10.0


def test_fastvit_values():
    cfg = load_recipe("fastvit_sa12")
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.schedule.min_lr) == (1e-3, 0.05, 1e-5)
    assert (cfg.schedule.warmup_epochs, cfg.schedule.warmup_init_lr, cfg.epochs) == (5.0, 1e-6, 300)
    a = cfg.augment
    assert (a.randaugment_magnitude, a.randaugment_magnitude_std, a.random_erase, a.mixup_alpha) == (9, 0.5, 0.25, 0.8)
    assert (a.cutmix_alpha, a.label_smoothing, cfg.ema.momentum) == (1.0, 0.1, 0.0005)
    assert (cfg.distill.kind, cfg.distill.alpha, cfg.distill.tau) == ("hard", 0.5, 1.0)
    drop_path = {n: load_recipe(f"fastvit_{n}").model.drop_path_rate for n in ("sa12", "sa24", "sa36", "ma36")}
    assert drop_path == {"sa12": 0.1, "sa24": 0.1, "sa36": 0.2, "ma36": 0.35}


def test_overrides():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "optimizer.lr=0.002",
            "epochs=5",
            "optimizer.betas=[0.9, 0.95]",
            "augment.rrc_scale=0.25,1",
            "model.name=mobileone_s0",
            "model.pretrained=mobileone_s0.apple_in1k",
            "clip_grad=1",
            "schedule.warmup_init_lr=1e-6",
            "amp=true",
            "sampler.kind=fixed",
        ],
    )
    assert cfg.optimizer.lr == 0.002 and isinstance(cfg.optimizer.lr, float)
    assert cfg.epochs == 5 and cfg.optimizer.betas == (0.9, 0.95) and cfg.augment.rrc_scale == (0.25, 1.0)
    assert cfg.model.name == "mobileone_s0" and cfg.model.pretrained == "mobileone_s0.apple_in1k"
    assert cfg.clip_grad == 1.0 and isinstance(cfg.clip_grad, float)
    assert cfg.schedule.warmup_init_lr == 1e-6 and cfg.amp is True and cfg.sampler.kind == "fixed"
    assert apply_overrides(cfg, ["clip_grad=none", "model.pretrained=null"]).clip_grad is None
    assert TrainConfig().optimizer.lr == 2e-3  # frozen: the original is untouched


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optimizer.lrr=0.1", r"optimizer\.lrr.*Did you mean 'lr'"),
        ("optimiser.lr=0.1", r"Did you mean 'optimizer'"),
        ("epochs=five", r"epochs: expected an integer"),
        ("epochs=2.5", r"epochs: expected an integer"),
        ("amp=1", r"amp: expected true or false"),
        ("sampler.kind=random", r"sampler\.kind: expected one of"),
        ("optimizer.betas=[0.9]", r"optimizer\.betas: expected 2 values"),
        ("optimizer=3", r"optimizer is a section"),
        ("epochs.x=3", r"epochs is a value"),
        ("epochs", r"key=value"),
    ],
)
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), [override])


def test_yaml_errors():
    with pytest.raises(ConfigError, match=r"optimizer\.weight_decy.*Did you mean 'weight_decay'"):
        from_yaml("optimizer:\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'epoch'.*'epochs'"):
        from_yaml("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"optimizer\.lr: expected a number"):
        from_yaml("optimizer:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"ema: expected a mapping"):
        from_yaml("ema: 0.9995\n")
    with pytest.raises(ConfigError, match="Unknown recipe 'mobilevit_xxx'"):
        load_recipe("mobilevit_xxx")


def test_partial_yaml_and_yaml11_floats():
    cfg = from_yaml("optimizer:\n  lr: 1e-3\nepochs: 2\n")  # PyYAML reads 1e-3 as a string; accepted for floats
    assert cfg.optimizer.lr == 1e-3 and cfg.epochs == 2 and cfg.sampler == TrainConfig().sampler
    assert from_yaml("") == TrainConfig() == from_dict({})


@pytest.mark.parametrize("variant", ["s0", "s1", "s2", "s3", "s4"])
def test_mobileone_values(variant):
    """MobileOne paper (arXiv 2206.04040): SGD, lr 0.1 at batch 256, cosine, wd 1e-4 annealed to 1e-5, LS 0.1,
    EMA 0.9995, 300 epochs, 224 input; eval resize 256 / crop 224 bilinear (the published weights' preprocessing)."""
    cfg = load_recipe(f"mobileone_{variant}")
    assert cfg.model.name == f"mobileone_{variant}"
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("sgd", 0.1, 1e-4)
    assert cfg.schedule.min_weight_decay == 1e-5 and cfg.epochs == 300
    assert cfg.sampler.batch_size * 8 == 256 and cfg.sampler.base_size == 224 and cfg.sampler.kind == "fixed"
    assert (cfg.augment.label_smoothing, cfg.ema.enabled, cfg.ema.momentum) == (0.1, True, 0.0005)
    assert (cfg.augment.mixup_alpha, cfg.augment.cutmix_alpha, cfg.augment.randaugment) == (0.0, 0.0, False)
    assert (cfg.data.val_resize, cfg.data.val_crop, cfg.data.val_interpolation) == (256, 224, "bilinear")


def test_v2_200_values():
    """ml-cvnets config/classification/imagenet/mobilevit_v2.yaml (width 2.0): max lr 0.002, min 0.0002, wd 0.05."""
    cfg = load_recipe("mobilevitv2_200")
    assert cfg.model.name == "mobilevitv2_200"
    assert (cfg.optimizer.lr, cfg.schedule.min_lr, cfg.optimizer.weight_decay) == (0.002, 0.0002, 0.05)
    assert (cfg.schedule.warmup_iters, cfg.schedule.warmup_init_lr) == (20000, 1e-6)
    assert cfg.amp and cfg.channels_last and cfg.clip_grad == 10.0 and cfg.augment.mixup_alpha == 0.2


def test_new_sections_override():
    cfg = apply_overrides(
        TrainConfig(),
        ["optimizer.name=sgd", "optimizer.nesterov=true", "optimizer.layer_decay=0.75", "logging.tensorboard=true"],
    )
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.layer_decay == 0.75
    assert cfg.logging.tensorboard and cfg.logging.csv
    with pytest.raises(ConfigError, match=r"optimizer\.name: expected one of"):
        apply_overrides(TrainConfig(), ["optimizer.name=lamb"])


def test_every_recipe_trains_its_own_model():
    """A variant that extends a family base names its own network and output folder (finetune: any model)."""
    for name in list_recipes():
        cfg = load_recipe(name)
        assert cfg.output_dir == f"runs/{name}"
        assert name == "finetune" or cfg.model.name == name


@pytest.mark.parametrize(
    ("v3", "recipe"),
    [("xxs", "mobilevit_xxs"), ("xs", "mobilevit_xs"), ("s", "mobilevit_s"), ("050", "mobilevitv2_050"),
     ("075", "mobilevitv2_075"), ("100", "mobilevitv2_100")],
)  # fmt: skip
def test_v3_trains_with_the_recipe_it_builds_on(v3, recipe):
    """MobileViT v3 (arXiv 2209.15159) trains its v1- and v2-based networks with the v1 and v2 recipes."""
    cfg, ref = load_recipe(f"mobilevitv3_{v3}"), load_recipe(recipe)
    assert cfg.model.name == f"mobilevitv3_{v3}"
    assert dataclasses.replace(cfg, model=ref.model, output_dir=ref.output_dir) == ref


def test_family_bases_are_not_recipes():
    names = list_recipes()
    assert not [n for n in names if n.startswith("_")]
    with pytest.raises(ConfigError, match="Unknown recipe '_mobilevitv2'"):
        load_recipe("_mobilevitv2")


@pytest.fixture
def recipes_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty recipes folder in place of the shipped one."""
    (tmp_path / "recipes").mkdir()
    monkeypatch.setattr("mobilevit.train.config.resources", types.SimpleNamespace(files=lambda package: tmp_path))
    return tmp_path / "recipes"


def test_base_merges_deeply_and_the_recipe_wins(recipes_folder: Path):
    (recipes_folder / "_family.yaml").write_text("optimizer:\n  lr: 0.5\n  weight_decay: 0.25\nepochs: 7\n")
    (recipes_folder / "middle.yaml").write_text("base: _family.yaml\noptimizer:\n  lr: 0.125\nseed: 3\n")
    (recipes_folder / "leaf.yaml").write_text("base: middle.yaml\noptimizer:\n  momentum: 0.5\nepochs: 9\n")
    assert list_recipes() == ["leaf", "middle"]
    cfg = load_recipe("leaf")
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (0.125, 0.25, 0.5)
    assert (cfg.epochs, cfg.seed, cfg.optimizer.eps) == (9, 3, TrainConfig().optimizer.eps)


def test_base_errors(recipes_folder: Path):
    (recipes_folder / "a.yaml").write_text("base: b.yaml\n")
    (recipes_folder / "b.yaml").write_text("base: a.yaml\n")
    (recipes_folder / "c.yaml").write_text("base: _missing.yaml\n")
    (recipes_folder / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"cycle: a\.yaml -> b\.yaml -> a\.yaml"):
        load_recipe("a")
    with pytest.raises(ConfigError, match=r"c\.yaml: base '_missing\.yaml' is not a file"):
        load_recipe("c")
    with pytest.raises(ConfigError, match=r"d\.yaml: base must be a file name"):
        load_recipe("d")
