"""Reading original and fom checkpoints, config inference, safety against code in pickles."""

import pickle

import numpy as np
import pytest
import torch

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, run_cli
from fom_cli.families import load_networks
from fom_cli.checkpoint import infer_config, make_checkpoint, read_checkpoint, save_checkpoint
from fom_cli.config import load_config
from fom_cli.errors import BadCheckpoint, BadInput
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector


def test_zip_and_legacy_formats_hold_the_same_weights():
    modern, legacy = read_checkpoint(SMALL_CHECKPOINT), read_checkpoint(PARITY / "small-legacy.pth.tar")
    assert modern["epoch"] == legacy["epoch"] == 3
    for network in ("generator", "kp_detector", "discriminator"):
        assert modern[network].keys() == legacy[network].keys()
        for key in modern[network]:
            assert torch.equal(modern[network][key], legacy[network][key]), key


def test_module_prefix_from_data_parallel_is_stripped(tmp_path):
    checkpoint = torch.load(SMALL_CHECKPOINT, weights_only=True)
    for network in ("generator", "kp_detector"):
        checkpoint[network] = {f"module.{key}": value for key, value in checkpoint[network].items()}
    torch.save(checkpoint, tmp_path / "prefixed.pth.tar")
    loaded = read_checkpoint(tmp_path / "prefixed.pth.tar")
    assert "first.conv.weight" in loaded["generator"]
    networks = load_networks(tmp_path / "prefixed.pth.tar", load_config(SMALL_CONFIG), optimize=False)
    generator = networks.generator
    original = read_checkpoint(SMALL_CHECKPOINT)["generator"]
    assert torch.equal(generator.state_dict()["final.weight"], original["final.weight"])


def original_format_checkpoint(config_name, with_discriminator=False):
    """A checkpoint dict shaped like a released one (values uninitialised: only shapes matter here)."""
    model_params = load_config(config_name)["model_params"]
    builders = [("generator", build_generator), ("kp_detector", build_keypoint_detector)]
    if with_discriminator:
        builders.append(("discriminator", build_discriminator))
    checkpoint = {}
    for name, build in builders:
        with torch.device("meta"):
            shapes = {key: (value.shape, value.dtype) for key, value in build(model_params).state_dict().items()}
        checkpoint[name] = {key: torch.empty(shape, dtype=dtype) for key, (shape, dtype) in shapes.items()}
    checkpoint["epoch"] = 99
    return checkpoint


def test_config_is_inferred_from_an_original_checkpoint_file(tmp_path):
    torch.save(original_format_checkpoint("mgif-256"), tmp_path / "mgif-cpk.pth.tar")
    config, note = infer_config(read_checkpoint(tmp_path / "mgif-cpk.pth.tar"), tmp_path / "mgif-cpk.pth.tar")
    assert config["_name"] == "mgif-256"
    assert config["model_params"]["kp_detector_params"]["single_jacobian_map"] is True
    assert "mgif-256" in note


def test_the_discriminator_breaks_ties_between_configs_with_identical_networks():
    config, note = infer_config(original_format_checkpoint("vox-adv-256", with_discriminator=True))
    # taichi-adv-256 builds the very same three networks; vox-256 (spectral norm, no keypoints) does not.
    assert config["_name"] == "taichi-adv-256" and "vox-adv-256" in note and "vox-256," not in note
    assert config["model_params"]["discriminator_params"]["use_kp"] is True
    config, note = infer_config(original_format_checkpoint("vox-256"))
    assert config["_name"] == "bair-256"  # first of the configs that build these networks
    assert "vox-256" in note


def test_a_checkpoint_matching_no_config_names_the_closest_and_the_tensor():
    with pytest.raises(BadCheckpoint) as error:
        infer_config(read_checkpoint(SMALL_CHECKPOINT), "small.pth.tar")
    message = str(error.value)
    assert "closest:" in message and "generator." in message and "--config" in message


def test_a_checkpoint_that_does_not_fit_the_given_config_names_the_tensor():
    with pytest.raises(BadCheckpoint, match=r"does not fit the config: (generator|kp_detector)\.[\w.]+ has shape"):
        load_networks(SMALL_CHECKPOINT, load_config("vox-256"))


def test_our_format_round_trips_with_its_config(tmp_path):
    config = load_config(SMALL_CONFIG)
    networks = load_networks(SMALL_CHECKPOINT, config)
    kp_detector, generator = networks.kp_detector, networks.generator
    path = tmp_path / "ours.pth"
    save_checkpoint(path, make_checkpoint(config, {"generator": generator, "kp_detector": kp_detector}, epoch=1))
    inferred, note = infer_config(read_checkpoint(path), path)
    assert inferred["model_params"] == config["model_params"] and inferred["_name"] == "small"
    assert "stored" in note
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


class CreatesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_never_runs_code(tmp_path, legacy):
    target = tmp_path / "pwned"
    payload = {"generator": {}, "kp_detector": {}, "evil": CreatesAFile(target)}
    path = tmp_path / "evil.pth.tar"
    if legacy:
        with open(path, "wb") as file:
            pickle.dump(payload, file)
    else:
        torch.save(payload, path)
    assert not target.exists()
    with pytest.raises(BadCheckpoint, match="objects that would run code"):
        read_checkpoint(path)
    assert not target.exists()


def test_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(BadInput):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(BadCheckpoint, match="not"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(BadCheckpoint, match="generator"):
        read_checkpoint(tmp_path / "other.pth")


@pytest.mark.parametrize("kind, expected", [
    ("random bytes", "not a checkpoint at all"), ("an HTML page", "web page (HTML)"), ("empty", "is empty"),
    ("a cut zip checkpoint", "cut-off checkpoint"), ("a cut legacy checkpoint", "cut-off checkpoint"),
])
def test_a_failed_download_is_called_one_and_not_code(tmp_path, kind, expected):
    contents = {
        "random bytes": np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
        "an HTML page": b"\n<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>",
        "empty": b"",
        "a cut zip checkpoint": SMALL_CHECKPOINT.read_bytes()[:80_000],
        "a cut legacy checkpoint": (PARITY / "small-legacy.pth.tar").read_bytes()[:80_000],
    }
    path = tmp_path / "vox-cpk.pth.tar"
    path.write_bytes(contents[kind])
    with pytest.raises(BadCheckpoint) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert expected in message and "incomplete or failed download" in message and "\n" not in message
    assert "run code" not in message


def test_export_keeps_only_what_animation_needs_and_animates_the_same(tmp_path, capsys):
    slim = tmp_path / "small-slim.pth"
    code, _, err = run_cli(["export", SMALL_CHECKPOINT, "-o", slim, "--config", SMALL_CONFIG], capsys)
    assert code == 0, err
    exported = read_checkpoint(slim)
    assert set(exported) == {"generator", "kp_detector", "config", "fom", "epoch"}
    assert slim.stat().st_size < 0.5 * SMALL_CHECKPOINT.stat().st_size   # no discriminator, no optimisers
    original = read_checkpoint(SMALL_CHECKPOINT)
    for network in ("generator", "kp_detector"):
        assert exported[network].keys() == original[network].keys()
        assert all(torch.equal(exported[network][key], original[network][key]) for key in original[network])
    # The config travels inside: no --config needed any more.
    networks = load_networks(slim)
    config, note = networks.config, networks.note
    assert "config stored in small-slim.pth" in note
    assert config["model_params"] == load_config(SMALL_CONFIG)["model_params"]


def test_export_to_a_missing_folder_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(["export", SMALL_CHECKPOINT, "-o", tmp_path / "no" / "such.pth", "--config", SMALL_CONFIG],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err
    assert not (tmp_path / "no").exists()
