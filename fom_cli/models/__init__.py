"""The three FOMM networks, built from a config's `model_params` exactly as the original run.py does."""

from fom_cli.models.discriminator import MultiScaleDiscriminator
from fom_cli.models.generator import OcclusionAwareGenerator
from fom_cli.models.keypoints import KeypointDetector


def build_keypoint_detector(model_params):
    return KeypointDetector(**model_params["kp_detector_params"], **model_params["common_params"])


def build_generator(model_params, align_corners=None):
    """align_corners: grid_sample convention; None takes the config's (default True, as trained)."""
    if align_corners is None:
        align_corners = model_params.get("align_corners", True)
    return OcclusionAwareGenerator(**model_params["generator_params"], **model_params["common_params"],
                                   align_corners=align_corners)


def build_discriminator(model_params):
    return MultiScaleDiscriminator(**model_params["discriminator_params"], **model_params["common_params"])
