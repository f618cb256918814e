"""The Thin-Plate Spline Motion Model (TPSMM, Zhao and Zhang, CVPR 2022), built from a config's
`model_params` exactly as the original demo.py and run.py do.

Five networks, named by their checkpoint keys:
  kp_detector           TpsKeypointDetector: image -> 5 * num_tps keypoints
  dense_motion_network  TpsDenseMotionNetwork: keypoints -> flow and occlusion masks
  inpainting_network    InpaintingNetwork: source image + flow -> frame
  avd_network           AvdNetwork: source identity + driving pose -> keypoints (the demo's avd mode)
  bg_predictor          BgMotionPredictor: background motion (training only; configs with bg: True)

Animating one driving batch, with the source side computed once (what demo.make_animation computes):
    kp_source = kp_detector(source)
    motion_source = dense_motion_network.prepare_source(source, kp_source)
    features = inpainting_network.encode_source(source)
    kp = animation_keypoints(mode, kp_source, kp_detector(driving), kp_driving_initial, avd_network)
    frames = inpainting_network.decode(features, dense_motion_network.motion(motion_source, kp))["prediction"]

Keypoints are tensors (N, 5 * num_tps, 2); grid sampling and bilinear resizing use align_corners=True
throughout, as the original passes it everywhere (unlike FOMM, whose convention changed with torch 1.3).
"""

from fom_cli.models.tpsmm.avd import AvdNetwork
from fom_cli.models.tpsmm.background import BgMotionPredictor
from fom_cli.models.tpsmm.inpainting import InpaintingNetwork
from fom_cli.models.tpsmm.keypoints import (ANIMATION_MODES, POINTS_PER_TPS, TpsKeypointDetector, animation_keypoints,
                                            movement_scale, relative_keypoints)
from fom_cli.models.tpsmm.motion import TpsDenseMotionNetwork
from fom_cli.models.tpsmm.tps import ThinPlateSpline

__all__ = ["ANIMATION_MODES", "POINTS_PER_TPS", "AvdNetwork", "BgMotionPredictor", "InpaintingNetwork",
           "ThinPlateSpline", "TpsDenseMotionNetwork", "TpsKeypointDetector", "animation_keypoints",
           "build_avd_network", "build_bg_predictor", "build_dense_motion_network", "build_inpainting_network",
           "build_tps_keypoint_detector", "build_tpsmm_networks", "movement_scale", "relative_keypoints"]


def build_tps_keypoint_detector(model_params):
    return TpsKeypointDetector(num_tps=model_params["common_params"]["num_tps"])


def build_dense_motion_network(model_params):
    common = model_params["common_params"]
    return TpsDenseMotionNetwork(num_tps=common["num_tps"], num_channels=common["num_channels"],
                                 multi_mask=common.get("multi_mask", True), **model_params["dense_motion_params"])


def build_inpainting_network(model_params):
    common = model_params["common_params"]
    return InpaintingNetwork(num_channels=common["num_channels"], multi_mask=common.get("multi_mask", True),
                             **model_params["generator_params"])


def build_avd_network(model_params):
    return AvdNetwork(num_tps=model_params["common_params"]["num_tps"], **model_params.get("avd_network_params", {}))


def build_bg_predictor(model_params):
    """The background motion predictor, or None when the config has none (bg: False)."""
    return BgMotionPredictor() if model_params["common_params"].get("bg", False) else None


def build_tpsmm_networks(model_params):
    """{checkpoint key: network} for every network the config has, in the original checkpoints' order:
    inpainting_network, dense_motion_network, kp_detector, bg_predictor (when bg: True), avd_network."""
    networks = {"inpainting_network": build_inpainting_network(model_params),
                "dense_motion_network": build_dense_motion_network(model_params),
                "kp_detector": build_tps_keypoint_detector(model_params)}
    bg_predictor = build_bg_predictor(model_params)
    if bg_predictor is not None:
        networks["bg_predictor"] = bg_predictor
    networks["avd_network"] = build_avd_network(model_params)
    return networks
