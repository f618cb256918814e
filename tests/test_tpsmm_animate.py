"""Animating with TPSMM checkpoints: the TpsAnimator against the original code's predictions
(tests/fixtures/tpsmm-parity/small.npz), and `fom animate` end to end with the fixture's checkpoint."""

import gzip
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from fom_cli.animation_tpsmm import TpsAnimator, TpsModel
from fom_cli.config import load_config
from fom_cli.errors import FomError
from fom_cli.models.tpsmm import build_tpsmm_networks

TPSMM_PARITY = FIXTURES / "tpsmm-parity"
SMALL_CONFIG = TPSMM_PARITY / "small.yaml"
# Whole frames against the reference machine's: see FRAME_TOLERANCE in test_tpsmm_parity.py.
FRAME_TOLERANCE = 1e-4
# fom's mode names -> the original demo's (whose arrays small.npz holds).
ORIGINAL_MODE = {"relative": "relative", "absolute": "standard", "avd": "avd"}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(TPSMM_PARITY / "small.npz"))


@pytest.fixture(scope="module")
def networks():
    """The fixture checkpoint's networks, in eval mode, on one torch thread (see test_tpsmm_parity.py)."""
    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as file:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    networks = build_tpsmm_networks(load_config(SMALL_CONFIG)["model_params"])
    for name, network in networks.items():
        network.load_state_dict(checkpoint[name])
        network.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield networks
    torch.set_num_threads(threads)


@pytest.fixture
def small_checkpoint(tmp_path):
    path = tmp_path / "small.pth.tar"
    with gzip.open(TPSMM_PARITY / "small.pth.tar.gz") as packed, open(path, "wb") as file:
        shutil.copyfileobj(packed, file)
    return path


def animator(networks, source, mode, avd=True):
    model = TpsModel(networks["inpainting_network"], networks["dense_motion_network"],
                     networks["avd_network"] if avd else None)
    return TpsAnimator(networks["kp_detector"], model, source, mode=mode)


def max_difference(ours, theirs):
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_batches_of_driving_frames_reproduce_the_original_predictions(networks, reference, mode):
    """Source side once, driving frames in batches of 3, 3 and 2: the original's frames within 1e-4."""
    tps = animator(networks, reference["source"], mode)
    tps.set_initial_frame(reference["driving"][0])
    frames = tps.animate_all(reference["driving"], batch_size=3)
    assert frames.dtype == np.float32
    assert max_difference(frames, reference[f"{ORIGINAL_MODE[mode]}_prediction"]) <= FRAME_TOLERANCE
    # The keypoints side by side draws: the source's, each driving frame's and the moved ones of the last batch.
    assert tps.last_keypoints["source"].shape == (20, 2) and tps.last_keypoints["moved"].shape == (2, 20, 2)
    assert max_difference(tps.last_keypoints["driving"], reference["kp_driving"][6:]) <= 1e-6
    assert max_difference(tps.last_keypoints["moved"], reference[f"{ORIGINAL_MODE[mode]}_kp_norm"][6:]) <= 1e-6


def test_avd_mode_reproduces_the_original_predictions(networks, reference):
    """One frame per batch, as the original: this random-weight model turns the 2e-7 by which keypoints
    computed in a batch differ into 3e-4 in its frames (see test_tpsmm_parity.py), so batched AVD is checked
    on its keypoints."""
    tps = animator(networks, reference["source"], "avd")
    frames = tps.animate_all(reference["driving"], batch_size=1)
    assert max_difference(frames, reference["avd_prediction"]) <= FRAME_TOLERANCE
    tps.animate(reference["driving"])
    assert max_difference(tps.last_keypoints["moved"], reference["avd_kp_norm"]) <= 1e-6


def test_relative_motion_is_measured_from_the_initial_frame_with_adapt_scale(networks, reference):
    tps = animator(networks, reference["source"], "relative")
    tps.set_initial_frame(reference["driving"][0])
    assert abs(tps.scale - float(reference["relative_movement_scale"])) <= 1e-6
    # Without adapt-scale the motion is not scaled; the initial frame itself gives the source's keypoints.
    plain = TpsAnimator(networks["kp_detector"], tps.generator, reference["source"], adapt_scale=False)
    plain.set_initial_frame(reference["driving"][5])
    assert plain.scale == 1.0
    plain.animate(reference["driving"][5:6])
    assert max_difference(plain.last_keypoints["moved"][0], reference["kp_source"]) <= 1e-6


def test_avd_mode_without_the_avd_network_is_one_clear_error(networks, reference):
    with pytest.raises(FomError, match="--mode avd needs the checkpoint's avd_network"):
        animator(networks, reference["source"], "avd", avd=False)
