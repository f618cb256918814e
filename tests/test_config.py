"""Configs: found by name or path, same values as the original, validated key by key."""

import pytest
import yaml

from conftest import FIXTURES, ORIGINAL_CONFIGS, SMALL_CONFIG
from fom_cli.config import frame_size, load_config
from fom_cli.errors import BadConfig


@pytest.mark.parametrize("name", ORIGINAL_CONFIGS)
def test_bundled_configs_hold_the_original_values(name):
    config = load_config(name)
    original = yaml.safe_load((FIXTURES / "fomm-configs" / f"{name}.yaml").read_text())
    assert {k: v for k, v in config.items() if not k.startswith("_")} == original
    assert frame_size(config) == (256, 256)


def test_a_config_can_be_a_path():
    assert load_config(str(SMALL_CONFIG))["model_params"]["common_params"]["num_kp"] == 10


def write_config(tmp_path, mutate):
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    mutate(config)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_mistyped_key_is_named_with_a_suggestion(tmp_path):
    def typo(config):
        config["model_params"]["common_params"]["num_kps"] = config["model_params"]["common_params"].pop("num_kp")
    with pytest.raises(BadConfig, match=r"unknown config key 'model_params.common_params.num_kps' "
                                        r"\(did you mean 'model_params.common_params.num_kp'\?\)"):
        load_config(write_config(tmp_path, typo))


def test_a_missing_key_is_named(tmp_path):
    def drop(config):
        del config["model_params"]["generator_params"]["num_down_blocks"]
    with pytest.raises(BadConfig, match="'model_params.generator_params.num_down_blocks' is missing"):
        load_config(write_config(tmp_path, drop))


def test_a_value_of_the_wrong_type_is_named(tmp_path):
    def wrong(config):
        config["model_params"]["kp_detector_params"]["num_blocks"] = "three"
    with pytest.raises(BadConfig, match="num_blocks' must be a whole number"):
        load_config(write_config(tmp_path, wrong))


def test_unknown_names_and_broken_yaml(tmp_path):
    with pytest.raises(BadConfig, match="no config named 'vox-512'.*vox-256"):
        load_config("vox-512")
    (tmp_path / "broken.yaml").write_text("model_params: [unclosed\n")
    with pytest.raises(BadConfig, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
