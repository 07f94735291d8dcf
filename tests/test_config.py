"""Config loading: strict keys and types, presets, overrides, YAML round trip."""

import pytest
import yaml

from fieldpaint.config import (Config, apply_overrides, dump_yaml, from_dict, load_config,
                               parse_override, preset_names, to_dict)
from fieldpaint.errors import ConfigError

SEED_PRESETS = {"standard_attn", "standard_attn_slim", "repaint_gaussian_attn",
                "palette_slim", "palette_attn", "film_slim"}


def test_presets_named_in_the_notes_exist():
    assert SEED_PRESETS <= set(preset_names())


@pytest.mark.parametrize("name", sorted(SEED_PRESETS))
def test_every_preset_round_trips_through_yaml(name):
    config = load_config(name)
    again = from_dict(yaml.safe_load(dump_yaml(config)))
    assert again == config


def test_slim_preset_matches_the_notes_table():
    c = load_config("standard_attn_slim")
    assert c.model.channels == (32, 64, 128, 128)
    assert c.model.dropout == 0.1
    assert c.train.batch_size == 64 and c.train.lr == 1e-3
    assert c.train.optimizer == "adamw" and c.train.weight_decay == 1e-4
    assert c.train.warmup_epochs == 10 and c.train.lr_schedule == "cosine"
    assert c.train.ema_decay == 0.9999 and c.train.ema_warmup_steps == 2000


def test_old_recipe_is_kept_for_the_big_model():
    c = load_config("repaint_gaussian_attn")
    assert c.model.channels == (64, 128, 256, 256)
    assert (c.train.optimizer, c.train.weight_decay, c.train.lr_schedule) == ("adam", 0.0, "constant")
    assert (c.train.lr, c.train.batch_size, c.train.ema_warmup_steps) == (3e-4, 16, 0)


def test_every_preset_but_the_old_one_has_ema_warmup():
    # The notes' Run 1 bug (EMA 0.9999 with no warmup scores random weights) must be impossible.
    for name in SEED_PRESETS - {"repaint_gaussian_attn"}:
        assert load_config(name).train.ema_warmup_steps > 0, name


@pytest.mark.parametrize("values, key", [
    ({"model": {"chanels": [8, 16]}}, "model.chanels"),
    ({"trian": {}}, "trian"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"train": {"optimizer": "sgd"}}, "train.optimizer"),
    ({"model": {"channels": 16}}, "model.channels"),
    ({"masks": {"coverage": [0.5, 1.0]}}, "masks.coverage[1]"),
    ({"data": {"height": 60}}, "data.height"),
    ({"model": {"channels": [30, 60], "norm_groups": 8}, "data": {"height": 16, "width": 32}}, "model.norm_groups"),
    ({"model": {"channels": [8, 16], "norm_groups": 4, "attention_levels": ["16x16"]},
      "data": {"height": 16, "width": 32}}, "model.attention_levels[0]"),
    ({"model": {"channels": [8, 16], "norm_groups": 4, "attention_levels": [5]},
      "data": {"height": 16, "width": 32}}, "model.attention_levels[0]"),
])
def test_bad_config_names_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        from_dict(values)
    assert repr(key) in str(err.value) and "\n" not in str(err.value)


def test_an_optional_key_reports_its_own_type_error():
    """An optional tuple of the wrong length says how many values it needs, not 'wrong type'."""
    with pytest.raises(ConfigError, match=r"'masks.mixed_weights': expected 4 values, got 3"):
        from_dict({"masks": {"mixed_weights": [1, 0, 0]}})
    with pytest.raises(ConfigError, match=r"'data.height': expected an integer, got 'tall'"):
        from_dict({"data": {"height": "tall"}})
    assert from_dict({"masks": {"mixed_weights": None}}).masks.mixed_weights is None


def test_attention_by_resolution_and_by_index_agree():
    from fieldpaint.models.structure import attention_level_indices

    by_res = from_dict({"model": {"attention_levels": ["16x32", "8x16", "bottleneck"]}})
    by_index = from_dict({"model": {"attention_levels": [2, 3, 4]}})
    assert attention_level_indices(by_res) == attention_level_indices(by_index) == {2, 3, 4}


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("model.channels=[8,16]") == (["model", "channels"], [8, 16])
    assert parse_override("data.path=data/k.nc") == (["data", "path"], "data/k.nc")
    merged = apply_overrides({"train": {"epochs": 3, "lr": 0.1}}, ["train.epochs=5"])
    assert merged == {"train": {"epochs": 5, "lr": 0.1}}


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config("standard_attn_slim", ["train.learning_rate=1"])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="standard_attn_slim"):
        load_config("no_such_preset")


def test_yaml_file_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 7}}))
    assert load_config(str(path)).train.epochs == 7
    assert to_dict(load_config(str(path)))["train"]["epochs"] == 7
    assert load_config(None) == Config()


def test_v_prediction_is_the_default_and_every_preset_but_the_original_uses_it():
    # The original model of the notes was an ε-model; v avoids ε's 1/√ᾱ amplification at t = T−1.
    assert Config().diffusion.prediction == "v"
    assert load_config("repaint_gaussian_attn").diffusion.prediction == "eps"
    for name in set(preset_names()) - {"repaint_gaussian_attn"}:
        assert load_config(name).diffusion.prediction == "v", name


def test_periodic_key_defaults_to_the_file_attribute():
    assert Config().data.periodic == "auto"
    assert load_config(None, ["data.periodic=xy"]).data.periodic == "xy"
    with pytest.raises(ConfigError, match="'data.periodic'.*'auto', 'none', 'x', 'y', 'xy'"):
        load_config(None, ["data.periodic=yes"])


def test_removed_num_workers_key_is_an_error_except_in_old_run_folders():
    with pytest.raises(ConfigError, match="'train.num_workers' was removed"):
        load_config(None, ["train.num_workers=2"])
    assert "num_workers" not in to_dict(Config())["train"]
    # config.yaml of runs made before the key went away held its default, 0: they still load.
    old = to_dict(load_config("standard_attn_slim"))
    old["train"]["num_workers"] = 0
    assert from_dict(old) == load_config("standard_attn_slim")
