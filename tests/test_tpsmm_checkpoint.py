"""TPSMM checkpoints: recognised by their keys, read safely, and matched to one of the four original configs
(whose networks are identical but for the background predictor, so the file name decides the rest)."""

import pytest
import torch

from conftest import TPSMM_PARITY
from fom_cli.checkpoint import checkpoint_family, infer_config, read_checkpoint
from fom_cli.config import frame_size, load_config
from fom_cli.errors import BadCheckpoint
from fom_cli.models.tpsmm import build_tpsmm_networks


def released_like(config_name, background=None):
    """A checkpoint dict shaped like a released TPSMM one (meta tensors: only shapes matter here).
    background: keep bg_predictor (default: where the config has one)."""
    with torch.device("meta"):
        networks = build_tpsmm_networks(load_config(config_name)["model_params"])
    if background is False:
        networks.pop("bg_predictor", None)
    checkpoint = {name: network.state_dict() for name, network in networks.items()}
    checkpoint.update(optimizer={"state": {}, "param_groups": []}, epoch=99)
    return checkpoint


def test_the_fixture_is_read_as_a_tpsmm_checkpoint_with_module_prefixes_stripped(small_tpsmm_checkpoint, tmp_path):
    checkpoint = read_checkpoint(small_tpsmm_checkpoint)
    assert checkpoint_family(checkpoint) == "tpsmm"
    assert {"inpainting_network", "dense_motion_network", "kp_detector", "avd_network", "optimizer"} <= set(checkpoint)
    assert checkpoint["epoch"] == 99
    assert "fg_encoder.conv1.weight" in checkpoint["kp_detector"]

    # Saved from DataParallel: "module." on every key of every network.
    prefixed = {name: ({f"module.{key}": value for key, value in state.items()}
                       if name.endswith(("network", "detector")) else state) for name, state in checkpoint.items()}
    torch.save(prefixed, tmp_path / "prefixed.pth.tar")
    loaded = read_checkpoint(tmp_path / "prefixed.pth.tar")
    for network in ("inpainting_network", "dense_motion_network", "kp_detector", "avd_network"):
        assert loaded[network].keys() == checkpoint[network].keys()
        assert all(torch.equal(loaded[network][key], checkpoint[network][key]) for key in checkpoint[network])


def test_a_file_of_neither_family_is_one_clear_error(tmp_path):
    torch.save({"kp_detector": {}, "dense_motion_network": {}}, tmp_path / "half.pth")
    with pytest.raises(BadCheckpoint, match="neither a FOMM checkpoint .* nor a TPSMM one"):
        read_checkpoint(tmp_path / "half.pth")


@pytest.mark.parametrize("file_name, expected, size", [
    ("vox.pth.tar", "tpsmm-vox-256", 256),
    ("taichi.pth.tar", "tpsmm-taichi-256", 256),
    ("ted384.pth.tar", "tpsmm-ted-384", 384),
])
def test_configs_with_identical_networks_are_told_apart_by_the_file_name(file_name, expected, size):
    config, note = infer_config(released_like(expected), file_name)
    assert config["_name"] == expected and frame_size(config) == (size, size)
    assert "by the file's name" in note and "build the same networks" in note


def test_without_a_telling_name_the_choice_is_a_guess_and_the_note_says_so():
    config, note = infer_config(released_like("tpsmm-ted-384"), "converted.pth.tar")
    assert config["_name"] == "tpsmm-vox-256"
    assert "guess" in note and "tpsmm-ted-384" in note and "--config" in note


def test_no_background_predictor_means_mgif_whatever_the_name():
    config, note = infer_config(released_like("tpsmm-mgif-256"), "model.pth.tar")
    assert config["_name"] == "tpsmm-mgif-256" and "without a background predictor" in note
    # A vox checkpoint whose bg_predictor was dropped fits mgif's networks best: the shapes decide first.
    config, _ = infer_config(released_like("tpsmm-vox-256", background=False), "vox.pth.tar")
    assert config["_name"] == "tpsmm-mgif-256"


def test_a_tpsmm_checkpoint_matching_no_bundled_config_names_the_closest(small_tpsmm_checkpoint):
    with pytest.raises(BadCheckpoint) as error:
        infer_config(read_checkpoint(small_tpsmm_checkpoint), small_tpsmm_checkpoint)
    message = str(error.value)
    assert "TPSMM" in message and "closest: tpsmm-" in message and "--config" in message


def test_export_keeps_the_networks_that_animate_and_the_config(small_tpsmm_checkpoint, tmp_path, capsys):
    from conftest import run_cli
    from fom_cli.families import load_networks
    from fom_cli.animation_tpsmm import TpsModel

    slim = tmp_path / "slim.pth"
    code, _, err = run_cli(["export", small_tpsmm_checkpoint, "-o", slim, "--config", TPSMM_PARITY / "small.yaml"], capsys)
    assert code == 0, err
    assert "inpainting_network, dense_motion_network, kp_detector, avd_network" in err
    exported, original = read_checkpoint(slim), read_checkpoint(small_tpsmm_checkpoint)
    assert set(exported) == {"inpainting_network", "dense_motion_network", "kp_detector", "avd_network", "config",
                             "fom", "epoch"}
    for network in ("inpainting_network", "dense_motion_network", "kp_detector", "avd_network"):
        assert all(torch.equal(exported[network][key], original[network][key]) for key in original[network])
    # The config travels inside: no --config needed any more.
    networks = load_networks(slim)
    config, model, note = networks.config, networks.generator, networks.note
    assert isinstance(model, TpsModel) and model.avd_network is not None
    assert "config stored in slim.pth" in note and config["model_params"]["common_params"]["num_tps"] == 4
