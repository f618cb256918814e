"""Numerical parity with the original TPSMM code on the `small` fixture (tests/fixtures/tpsmm-parity).

small.npz was computed by the original code (CPU, float32) from a random-weight checkpoint in the
original format, small.pth.tar.gz. Every stage is checked on the original's own inputs to that stage,
against the same networks run in float64 (conftest.assert_parity): the original's result must be within
a limit of it (the networks are the same) and fom's float32 result within 4 times the original's own
float32 error (the same arithmetic, other rounding). The limits: 1e-5 for keypoints, maps and flows;
for images that went through a warp, the reference's measured float32 error is larger, and so are
the limits (see each).

Inputs are built as demo.make_animation builds them (an NHWC copy, permuted): convolutions round
differently at the 1e-7 level for a differently laid-out input (torch.tensor(array[None]) keeps numpy's
zero batch stride, and the source keypoints then differ by 2e-7).
"""

import numpy as np
import pytest
import torch

from conftest import TPSMM_PARITY, assert_parity, load_tpsmm_networks
from fom_cli.models.tpsmm import ANIMATION_MODES, BgMotionPredictor, animation_keypoints, movement_scale
from fom_cli.models.tpsmm.inpainting import warp

PARITY = TPSMM_PARITY
# Keypoints, contribution and occlusion maps, flows: float32 outputs of values up to about 1; the
# reference is within 3e-6 of float64.
LIMIT = 1e-5
# Images warped by a flow: the flow's float32 error times the image's steepest gradient. The TPS flows
# come out of an explicit 8x8 matrix inverse, 2e-6 from float64 in float32; the downsampled source has
# gradients up to 11 per unit, the full-size one 48: the reference's deformed_source is 1.1e-5 and its
# deformed source image 1.3e-5 from float64.
WARPED_LIMIT = 5e-5
# Frames end to end: standard and relative frames are 1.6e-5 to 1.9e-5 from float64; rounding the
# keypoints alone to float32 (half a unit in the last place) moves this random-weight model's AVD frames
# by 1.3e-4 (float64 computed), and the reference's AVD frames are 1.4e-4 from float64.
FRAME_LIMITS = {"standard": 1e-4, "relative": 1e-4, "avd": 5e-4}


def load_networks():
    return load_tpsmm_networks()


@pytest.fixture(scope="module")
def model(tpsmm_exact):
    """(networks, reference arrays, float64 results, source (1, 3, H, W), driving (1, 3, T, H, W)), the
    tensors built as demo.make_animation builds them. One torch thread: the test machines' two cores are
    shared, and two OpenMP threads with one core busy elsewhere wait on each other (results do not depend
    on it)."""
    data = dict(np.load(PARITY / "small.npz"))
    source = torch.tensor(data["source"][np.newaxis].astype(np.float32)).permute(0, 3, 1, 2)
    driving = torch.tensor(np.array(list(data["driving"]))[np.newaxis].astype(np.float32)).permute(0, 4, 1, 2, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_networks(), data, tpsmm_exact, source, driving
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_autograd():
    with torch.inference_mode():
        yield


def test_keypoints_of_source_and_driving_frames(model):
    networks, data, exact, source, driving = model
    kp_detector = networks["kp_detector"]
    assert_parity(kp_detector(source)[0], data["kp_source"], exact["kp_source"], LIMIT, "source")
    per_frame = torch.cat([kp_detector(driving[:, :, t]) for t in range(driving.shape[2])])
    assert_parity(per_frame, data["kp_driving"], exact["kp_driving"], LIMIT, "driving, frame by frame")
    # One batch of all 8 frames gives the same keypoints.
    assert_parity(kp_detector(driving[0].transpose(0, 1)), data["kp_driving"], exact["kp_driving"], LIMIT,
                  "driving, one batch")


def test_movement_scale_is_the_ratio_of_convex_hull_sizes(model):
    _, data, _, _, _ = model
    scale = movement_scale(torch.tensor(data["kp_source"])[None], torch.tensor(data["kp_driving"][:1]))
    assert abs(scale - float(data["relative_movement_scale"])) <= 1e-6


@pytest.mark.parametrize("mode", ANIMATION_MODES)
def test_animation_keypoints_in_every_mode(model, mode):
    networks, data, exact, _, _ = model
    kp_source, kp_driving = torch.tensor(data["kp_source"])[None], torch.tensor(data["kp_driving"])
    # All frames at once (the AVD network's batch norm is in eval mode: frames stay independent).
    moved = animation_keypoints(mode, kp_source, kp_driving, kp_driving[:1], networks["avd_network"])
    assert_parity(moved, data[f"{mode}_kp_norm"], exact[f"{mode}_kp_norm"], LIMIT, mode)


def test_dense_motion_and_inpainting_intermediates_on_frame_3(model):
    networks, data, exact, source, _ = model
    kp_source, kp_moved = torch.tensor(data["kp_source"])[None], torch.tensor(data["relative_kp_norm"][3:4])
    motion = networks["dense_motion_network"](source, kp_moved, kp_source)
    out = networks["inpainting_network"](source, motion)
    for name, limit in (("contribution_maps", LIMIT), ("deformation", LIMIT), ("deformed_source", WARPED_LIMIT)):
        assert_parity(motion[name], data[f"relative_f3_{name}"], exact[f"relative_f3_{name}"], limit, name)
    assert_parity(out["prediction"], data["relative_f3_prediction"], exact["relative_f3_prediction"], LIMIT,
                  "prediction")
    assert len(motion["occlusion_maps"]) == 4
    for i, occlusion_map in enumerate(motion["occlusion_maps"]):
        name = f"relative_f3_occlusion_map_{i}"
        assert_parity(occlusion_map, data[name], exact[name], LIMIT, f"occlusion map {i}")
    assert_parity(out["deformed"], data["relative_f3_deformed"], exact["relative_f3_deformed"], WARPED_LIMIT,
                  "deformed")
    # The warp alone, on the original's own flow (upsampled to the image's size in float32 first: it
    # carries float32 error even from an exact flow).
    flow = torch.tensor(data["relative_f3_deformation"])
    assert_parity(warp(source, flow), data["relative_f3_deformed"], warp(source.double(), flow.double()),
                  WARPED_LIMIT, "deformed by the original's flow")


def original_animation(networks, source, driving, mode):
    """demo.make_animation: every network on every frame, one frame at a time, through forward()."""
    kp_detector, avd_network = networks["kp_detector"], networks["avd_network"]
    kp_source, kp_driving_initial = kp_detector(source), kp_detector(driving[:, :, 0])
    frames = []
    for t in range(driving.shape[2]):
        kp = animation_keypoints(mode, kp_source, kp_detector(driving[:, :, t]), kp_driving_initial, avd_network)
        motion = networks["dense_motion_network"](source, kp, kp_source)
        frames.append(networks["inpainting_network"](source, motion)["prediction"][0].permute(1, 2, 0))
    return torch.stack(frames)


@pytest.mark.parametrize("mode", ANIMATION_MODES)
def test_predictions_in_every_mode(model, mode):
    networks, data, exact, source, driving = model
    frames = original_animation(networks, source, driving, mode)
    assert_parity(frames, data[f"{mode}_prediction"], exact[f"{mode}_prediction"], FRAME_LIMITS[mode], mode)


def test_the_source_side_once_then_decode_is_forward(model):
    networks, data, _, source, _ = model
    dense_motion, inpainting = networks["dense_motion_network"], networks["inpainting_network"]
    kp_source, kp_moved = torch.tensor(data["kp_source"])[None], torch.tensor(data["relative_kp_norm"][3:4])
    motion = dense_motion.motion(dense_motion.prepare_source(source, kp_source), kp_moved)
    decoded = inpainting.decode(inpainting.encode_source(source), motion)
    expected = inpainting(source, dense_motion(source, kp_moved, kp_source))
    assert torch.equal(decoded["prediction"], expected["prediction"])
    assert torch.equal(decoded["deformed"], expected["deformed"])


@pytest.mark.parametrize("mode", ANIMATION_MODES)
def test_frames_decoded_in_batches_from_one_source_encoding(model, mode):
    """Batches of 3, 3 and 2 driving frames against one encoding of the source.

    Fed the original's keypoints for each mode: keypoints computed in a batch differ from frame-by-frame
    ones by float32 rounding (2e-7), and this random-weight model amplifies keypoint differences about
    a thousandfold (1e-7 of noise on the AVD keypoints moves its frames by 3e-4), which would hide what
    this test checks.
    """
    networks, data, exact, source, _ = model
    dense_motion, inpainting = networks["dense_motion_network"], networks["inpainting_network"]
    kp_source, kp_moved = torch.tensor(data["kp_source"])[None], torch.tensor(data[f"{mode}_kp_norm"])
    motion_source = dense_motion.prepare_source(source, kp_source)
    source_features = inpainting.encode_source(source)
    frames = [inpainting.decode(source_features, dense_motion.motion(motion_source, kp_moved[start:start + 3]))
              ["prediction"] for start in range(0, len(kp_moved), 3)]
    assert_parity(torch.cat(frames).permute(0, 2, 3, 1), data[f"{mode}_prediction"], exact[f"{mode}_decoded"],
                  FRAME_LIMITS[mode], mode)


def test_an_identity_background_motion_changes_nothing(model):
    """bg_param (training's background motion): a fresh BgMotionPredictor predicts the identity."""
    networks, data, exact, source, driving = model
    bg_param = BgMotionPredictor().eval()(source, driving[:, :, 3])
    assert torch.equal(bg_param, torch.eye(3)[None])
    kp_source, kp_moved = torch.tensor(data["kp_source"])[None], torch.tensor(data["relative_kp_norm"][3:4])
    motion = networks["dense_motion_network"](source, kp_moved, kp_source, bg_param=bg_param)
    assert_parity(motion["deformation"], data["relative_f3_deformation"], exact["relative_f3_deformation"], LIMIT,
                  "deformation")
