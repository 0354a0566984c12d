import pytest
import yaml

from convlens.config import TrainConfig, make_config, save_config, setting_help
from convlens.errors import ConfigError


def test_defaults_then_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nlr: 0.05\nmodel: textbook\n")
    cfg = make_config(f, {"lr": "0.01", "epochs": None})
    assert cfg.epochs == 3  # from the file; a flag left at None does not override
    assert cfg.lr == 0.01  # the flag wins over the file
    assert cfg.model == "textbook"
    assert cfg.batch_size == 64  # textbook: the classic recipe, not fastnet's defaults


def test_unknown_keys_are_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*epoch"):
        make_config(f)
    with pytest.raises(ConfigError, match="unknown setting.*speed"):
        make_config(None, {"speed": 1})


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("epochs", "many", "must be int"),
        ("epochs", 1.5, "must be an integer"),
        ("nesterov", "perhaps", "true or false"),
        ("optimizer", "lbfgs", "must be one of"),
        ("val_fraction", 1.5, "between 0 and 1"),
        ("lr", -1, "must be positive"),
    ],
)
def test_bad_values_name_the_setting(key, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_config(None, {key: value})
    assert repr(key) in str(e.value)


def test_saved_config_reloads_identically(tmp_path):
    cfg = make_config(None, {"model_args": {"widths": [8, 8, 8]}, "epochs": 2, "init": None})
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model_args"] == {"widths": [8, 8, 8]}
    assert make_config(tmp_path / "config.yaml") == cfg


def test_not_a_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        make_config(f)


def test_every_setting_has_help():
    missing = set(TrainConfig.__dataclass_fields__) - set(setting_help())
    assert not missing


def test_models_other_than_fastnet_start_from_the_classic_recipe(tmp_path):
    assert make_config(None, {}).lr == TrainConfig().lr  # fastnet: the dataclass defaults
    cfg = make_config(None, {"model": "textbook"})
    assert (cfg.lr, cfg.batch_size, cfg.ema) == (0.05, 64, 0.0)
    assert make_config(None, {"model": "textbook", "lr": 0.01}).lr == 0.01  # flags win
    f = tmp_path / "c.yaml"
    f.write_text("model: mlp\nbatch_size: 32\n")
    cfg = make_config(f)
    assert (cfg.batch_size, cfg.lr) == (32, 0.05)  # the file wins over the recipe
    save_config(cfg, tmp_path / "saved.yaml")
    assert make_config(tmp_path / "saved.yaml") == cfg  # a saved config reloads identically


def test_a_task_recipe_sits_between_the_model_recipe_and_the_flags():
    assert make_config(None, {"task": "embed"}).lr == 0.05  # fastnet's 0.75 is too high here
    assert make_config(None, {"task": "embed", "lr": 0.1}).lr == 0.1
    assert make_config(None, {"task": "anomaly"}).lr == TrainConfig().lr
