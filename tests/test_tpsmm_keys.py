"""TPSMM: the bundled configs hold the original values, and the networks built from them have the original
checkpoints' state-dict keys, shapes, dtypes and parameter counts (tests/fixtures/tpsmm-keys, listed from
the original code's networks)."""

import json

import pytest
import torch
import yaml

from conftest import FIXTURES
from fom_cli.config import bundled_config_names, config_family, frame_size, load_config
from fom_cli.errors import BadConfig
from fom_cli.models.tpsmm import build_tpsmm_networks

TPSMM_CONFIGS = ["vox-256", "taichi-256", "ted-384", "mgif-256"]
KEYS = FIXTURES / "tpsmm-keys"


def original_listing(name):
    """{network: [(key, shape, dtype)] in state-dict order}, from fixtures/tpsmm-keys/<name>.txt."""
    listing = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        network, key, shape, dtype = line.split()
        listing.setdefault(network, []).append((key, () if shape == "-" else tuple(int(s) for s in shape.split(",")),
                                                dtype))
    return listing


def meta_networks(name):
    """The networks of a bundled TPSMM config, shapes only (vox-256 has 87.7M parameters in all)."""
    with torch.device("meta"):
        return build_tpsmm_networks(load_config(f"tpsmm-{name}")["model_params"])


@pytest.mark.parametrize("name", TPSMM_CONFIGS)
def test_bundled_tpsmm_configs_hold_the_original_values(name):
    config = load_config(f"tpsmm-{name}")
    original = yaml.safe_load((FIXTURES / "tpsmm-configs" / f"{name}.yaml").read_text())
    # fom_params is fom's addition (ted's frame size).
    assert {key: value for key, value in config.items() if not key.startswith("_") and key != "fom_params"} \
        == original
    assert config_family(config) == "tpsmm"
    # frame_shape is null in the originals: the default size, but ted-384's 384 px (the original demo's
    # --img_shape) comes from fom_params.
    assert frame_size(config) == ((384, 384) if name == "ted-384" else (256, 256))
    assert ("fom_params" in config) == (name == "ted-384")


@pytest.mark.parametrize("name", TPSMM_CONFIGS)
def test_state_dict_keys_shapes_and_dtypes_match_the_original(name):
    networks = meta_networks(name)
    expected = original_listing(name)
    # Same networks, in the original checkpoints' order (bg_predictor only where bg: True).
    assert list(networks) == list(expected)
    for network_name, network in networks.items():
        ours = [(key, tuple(value.shape), str(value.dtype).replace("torch.", ""))
                for key, value in network.state_dict().items()]
        assert ours == expected[network_name], network_name


@pytest.mark.parametrize("name", TPSMM_CONFIGS)
def test_parameter_counts_match_the_original(name):
    expected = json.loads((KEYS / "param_counts.json").read_text())[name]
    ours = {}
    for network_name, network in meta_networks(name).items():
        state_dict = network.state_dict()
        ours[network_name] = {"parameters": sum(p.numel() for p in network.parameters()),
                              "state_dict_entries": len(state_dict),
                              "state_dict_numel": sum(value.numel() for value in state_dict.values())}
    assert ours == expected


def test_the_family_is_told_by_num_tps_and_each_family_has_its_schema(tmp_path):
    assert config_family(load_config("vox-256")) == "fomm"
    assert config_family(load_config(FIXTURES / "tpsmm-parity" / "small.yaml")) == "tpsmm"
    assert set(bundled_config_names("tpsmm")) == {f"tpsmm-{name}" for name in TPSMM_CONFIGS}
    assert not set(bundled_config_names()) & set(bundled_config_names("tpsmm"))  # FOMM's by default

    config = yaml.safe_load((FIXTURES / "tpsmm-configs" / "vox-256.yaml").read_text())
    config["model_params"]["dense_motion_params"]["num_block"] = 5
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(BadConfig, match=r"unknown config key 'model_params.dense_motion_params.num_block' "
                                        r"\(did you mean 'model_params.dense_motion_params.num_blocks'\?\)"):
        load_config(tmp_path / "typo.yaml")
