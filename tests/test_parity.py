"""Numerical parity with the original FOMM code on the `small` fixture, in both grid_sample conventions.

The reference arrays were computed by the original code on CPU float32. Every stage is checked on the
original's own inputs to that stage against the same networks run in float64 (conftest.assert_parity):
the original's result within LIMIT of it (the networks are the same), fom's float32 result, with or
without the inference rewrites, within 4 times the original's own float32 error (other rounding, no
worse). The discriminator maps, which go through no warp, are compared directly (1e-5 relative: their
magnitudes reach ~6).
"""

import numpy as np
import pytest
import torch

from conftest import SMALL_CHECKPOINT, SMALL_CONFIG, assert_parity, assert_within
from fom_cli.animation import Animator, movement_scale, relative_motion
from fom_cli.families import load_networks
from fom_cli.checkpoint import load_state, read_checkpoint
from fom_cli.config import load_config
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector

# Keypoints, masks, flows and frames: the reference is within 3e-6 of float64 (its frames within 1e-5).
LIMIT = 1e-5
# The source image warped by a flow: the flow's float32 error times the image's steepest gradient (48 per
# unit at 128 px): the reference is 1.2e-5 from float64, also when warped by its own stored flow, which is
# upsampled to the image's size in float32 first.
WARPED_LIMIT = 5e-5
MODES = {"relative_adapt": ("relative", True), "relative": ("relative", False), "absolute": ("absolute", True)}


@pytest.fixture(scope="module", params=[(False, False), (True, False), (False, True), (True, True)],
                ids=["align_corners_false", "align_corners_true", "align_corners_false-optimized",
                     "align_corners_true-optimized"])
def model(request, reference, fomm_exact):
    """The original blocks, and the same weights after the exact inference rewrites (models/inference.py);
    the reference arrays and the float64 results of the convention."""
    align_corners, optimize = request.param
    networks = load_networks(SMALL_CHECKPOINT, load_config(SMALL_CONFIG), align_corners,
                                                   optimize=optimize)
    config, kp_detector, generator = networks.config, networks.kp_detector, networks.generator
    return fomm_exact[align_corners], reference[align_corners], kp_detector, generator


def nchw(image):
    """The original demo's tensor construction: HWC numpy -> NCHW permuted view."""
    return torch.tensor(np.asarray(image, dtype=np.float32)[None]).permute(0, 3, 1, 2)


def fixture_kp(data, prefix, index=None):
    value, jacobian = data[f"{prefix}_value"], data[f"{prefix}_jacobian"]
    if index is not None:
        value, jacobian = value[index], jacobian[index]
    return {"value": torch.tensor(value)[None], "jacobian": torch.tensor(jacobian)[None]}


def check(ours, name, data, exact, limit=LIMIT, what=None):
    assert_parity(ours, data[name], exact[name], limit, what or name)


def test_keypoints_of_source_and_driving_frames(model):
    exact, data, kp_detector, _ = model
    with torch.inference_mode():
        source = kp_detector(nchw(data["source"]))
        check(source["value"][0], "kp_source_value", data, exact)
        check(source["jacobian"][0], "kp_source_jacobian", data, exact)
        # One batch of all 8 frames gives the same keypoints as 8 single-frame passes.
        driving = kp_detector(torch.tensor(data["driving"]).permute(0, 3, 1, 2))
    check(driving["value"], "kp_driving_value", data, exact)
    check(driving["jacobian"], "kp_driving_jacobian", data, exact)


@pytest.mark.parametrize("mode", MODES)
def test_normalised_keypoints(model, mode):
    exact, data, _, _ = model
    relative, adapt = MODES[mode]
    kp_source = fixture_kp(data, "kp_source")
    kp_initial = fixture_kp(data, "kp_driving", 0)
    driving = {"value": torch.tensor(data["kp_driving_value"]), "jacobian": torch.tensor(data["kp_driving_jacobian"])}
    if relative == "absolute":
        moved = driving
    else:
        scale = movement_scale(kp_source, kp_initial) if adapt else 1.0
        moved = relative_motion(kp_source, driving, kp_initial, scale)
    check(moved["value"], f"{mode}_kp_norm_value", data, exact)
    check(moved["jacobian"], f"{mode}_kp_norm_jacobian", data, exact)


def test_movement_scale_is_the_ratio_of_convex_hull_sizes(model):
    _, data, _, _ = model
    scale = movement_scale(fixture_kp(data, "kp_source"), fixture_kp(data, "kp_driving", 0))
    assert abs(scale - float(data["relative_adapt_movement_scale"])) <= 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_predictions_in_every_mode(model, mode):
    exact, data, kp_detector, generator = model
    relative, adapt = MODES[mode]
    animator = Animator(kp_detector, generator, data["source"], mode=relative, adapt_scale=adapt)
    animator.set_initial_frame(data["driving"][0])
    # Batches of 3, 3 and 2 frames: batching must not change the result.
    predictions = animator.animate_all(data["driving"], batch_size=3)
    check(predictions, f"{mode}_prediction", data, exact)


def test_generator_intermediates_on_frame_3(model):
    exact, data, _, generator = model
    kp_source = fixture_kp(data, "kp_source")
    kp_moved = fixture_kp(data, "relative_kp_norm", 3)
    with torch.inference_mode():
        out = generator(nchw(data["source"]), kp_driving=kp_moved, kp_source=kp_source)
        deformed = generator.deform(nchw(data["source"]), torch.tensor(data["relative_f3_deformation"]))
    for name in ("mask", "occlusion_map", "deformation", "sparse_deformed", "prediction"):
        check(out[name], f"relative_f3_{name}", data, exact)
    check(out["deformed"], "relative_f3_deformed", data, exact, WARPED_LIMIT)
    # The warp alone, on the original's own flow.
    assert_parity(deformed, data["relative_f3_deformed"], exact["relative_f3_deformed_by_its_flow"], WARPED_LIMIT,
                  "deformed by the original's flow")


def test_discriminator_maps(model):
    _, data, _, _ = model
    model_params = load_config(SMALL_CONFIG)["model_params"]
    discriminator = build_discriminator(model_params)
    load_state(discriminator, read_checkpoint(SMALL_CHECKPOINT)["discriminator"], "discriminator", "small")
    discriminator.eval()
    with torch.inference_mode():
        out = discriminator({"prediction_1": torch.tensor(data["disc_input_1"])}, kp=fixture_kp(data, "kp_source"))
    for i, feature_map in enumerate(out["feature_maps_1"]):
        np.testing.assert_allclose(feature_map.numpy(), data[f"disc_feature_map_1_{i}"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["prediction_map_1"].numpy(), data["disc_prediction_map_1"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["relative_adapt", "relative", "absolute"])
def test_zero_order_models_animate_in_every_mode(mode):
    """estimate_jacobian: false works everywhere (the original crashes in relative mode); relative motion
    then moves keypoint values only."""
    model_params = load_config(SMALL_CONFIG)["model_params"]
    model_params["common_params"] = dict(model_params["common_params"], estimate_jacobian=False)
    torch.manual_seed(0)
    kp_detector, generator = build_keypoint_detector(model_params).eval(), build_generator(model_params).eval()
    rng = np.random.default_rng(0)
    source, driving = rng.random((128, 128, 3), dtype=np.float32), rng.random((3, 128, 128, 3), dtype=np.float32)
    relative, adapt = MODES[mode]
    animator = Animator(kp_detector, generator, source, mode=relative, adapt_scale=adapt)
    animator.set_initial_frame(driving[0])
    predictions = animator.animate(driving)

    with torch.inference_mode():
        kp_source, kp_driving = kp_detector(nchw(source)), kp_detector(torch.tensor(driving).permute(0, 3, 1, 2))
        assert "jacobian" not in kp_driving
        if relative == "relative":
            scale = movement_scale(kp_source, {"value": kp_driving["value"][:1]}) if adapt else 1.0
            kp_driving = {"value": (kp_driving["value"] - kp_driving["value"][:1]) * scale + kp_source["value"]}
        expected = [generator(nchw(source), kp_driving={"value": kp_driving["value"][i:i + 1]}, kp_source=kp_source)
                    ["prediction"][0].permute(1, 2, 0).numpy() for i in range(3)]
    assert_within(predictions, np.stack(expected), 1e-5, "zero-order predictions")
