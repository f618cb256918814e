"""YAML configs in the original FOMM schema: find by name or path, load, validate.

A config is a plain dict, exactly what the YAML file holds. Validation checks every key against the
schema below, so a typo (`num_kps`) or a missing key is one clear line naming it instead of a
TypeError deep inside a network's constructor.
"""

import difflib
from pathlib import Path

import yaml

from fom_cli.errors import BadConfig

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name):
    """configs/ or checkpoints/: inside the installed package, or at the top of a source checkout."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    return PACKAGE_DIR / name


def bundled_config_names(family="fomm"):
    """Names of the bundled configs of one model family ('fomm' or 'tpsmm', see config_family), or of
    all of them with family=None. FOMM's by default: that is what the callers that build networks from
    every bundled config (checkpoint.infer_config) can build."""
    paths = sorted(bundled_dir("configs").glob("*.yaml"))
    if family is not None:
        paths = [path for path in paths if config_family(yaml.safe_load(path.read_text())) == family]
    return [path.stem for path in paths]


# --- schema ---------------------------------------------------------------------------------------------
# key -> (required?, type or nested schema). Numbers accept ints where floats are expected.
NUMBER = (int, float)
ANY = object

COMMON_PARAMS = {"num_kp": (True, int), "num_channels": (True, int), "estimate_jacobian": (False, bool)}
KP_DETECTOR_PARAMS = {
    "temperature": (True, NUMBER), "block_expansion": (True, int), "max_features": (True, int),
    "num_blocks": (True, int), "scale_factor": (False, NUMBER), "single_jacobian_map": (False, bool),
    "pad": (False, int),
}
DENSE_MOTION_PARAMS = {
    "block_expansion": (True, int), "max_features": (True, int), "num_blocks": (True, int),
    "scale_factor": (False, NUMBER), "kp_variance": (False, NUMBER),
}
GENERATOR_PARAMS = {
    "block_expansion": (True, int), "max_features": (True, int), "num_down_blocks": (True, int),
    "num_bottleneck_blocks": (True, int), "estimate_occlusion_map": (False, bool),
    "dense_motion_params": (False, DENSE_MOTION_PARAMS),
    # fom's addition (models/generator.py): mix the warped source image into the frame.
    "blend_warped_source": (False, bool),
}
DISCRIMINATOR_PARAMS = {
    "scales": (True, list), "block_expansion": (True, int), "max_features": (True, int),
    "num_blocks": (True, int), "sn": (False, bool), "use_kp": (False, bool), "kp_variance": (False, NUMBER),
}
MODEL_PARAMS = {
    "common_params": (True, COMMON_PARAMS),
    "kp_detector_params": (True, KP_DETECTOR_PARAMS),
    "generator_params": (True, GENERATOR_PARAMS),
    "discriminator_params": (False, DISCRIMINATOR_PARAMS),
    # fom's addition: the grid_sample convention. True is how the released checkpoints were trained
    # (torch 1.0); False reproduces the original code run on today's torch.
    "align_corners": (False, bool),
}
DATASET_PARAMS = {
    "root_dir": (False, str), "frame_shape": (False, list), "id_sampling": (False, bool),
    "pairs_list": (False, (str, type(None))), "augmentation_params": (False, dict),
}
TRANSFORM_PARAMS = {"sigma_affine": (True, NUMBER), "sigma_tps": (True, NUMBER), "points_tps": (True, int)}
LOSS_WEIGHTS = {
    "generator_gan": (False, NUMBER), "discriminator_gan": (False, NUMBER), "feature_matching": (False, list),
    "perceptual": (False, list), "equivariance_value": (False, NUMBER), "equivariance_jacobian": (False, NUMBER),
}
TRAIN_PARAMS = {
    "num_epochs": (False, int), "num_repeats": (False, int), "epoch_milestones": (False, list),
    "lr_generator": (False, NUMBER), "lr_discriminator": (False, NUMBER), "lr_kp_detector": (False, NUMBER),
    "batch_size": (False, int), "scales": (False, list), "checkpoint_freq": (False, int),
    "transform_params": (False, TRANSFORM_PARAMS), "loss_weights": (False, LOSS_WEIGHTS),
}
CONFIG = {
    "dataset_params": (False, DATASET_PARAMS),
    "model_params": (True, MODEL_PARAMS),
    "train_params": (False, TRAIN_PARAMS),
    "reconstruction_params": (False, dict),
    "animate_params": (False, dict),
    "visualizer_params": (False, dict),
}


# --- TPSMM schema ---------------------------------------------------------------------------------------
# The Thin-Plate Spline Motion Model's configs (models/tpsmm): keys of its four original configs. A config
# is TPSMM's when its common_params count thin-plate splines (num_tps) instead of keypoints.
TPSMM_COMMON_PARAMS = {
    "num_tps": (True, int), "num_channels": (True, int), "bg": (False, bool), "multi_mask": (False, bool),
}
TPSMM_GENERATOR_PARAMS = {"block_expansion": (True, int), "max_features": (True, int), "num_down_blocks": (True, int)}
TPSMM_DENSE_MOTION_PARAMS = {
    "block_expansion": (True, int), "max_features": (True, int), "num_blocks": (True, int),
    "scale_factor": (False, NUMBER), "kp_variance": (False, NUMBER),
}
TPSMM_AVD_NETWORK_PARAMS = {"id_bottle_size": (False, int), "pose_bottle_size": (False, int)}
TPSMM_MODEL_PARAMS = {
    "common_params": (True, TPSMM_COMMON_PARAMS),
    "generator_params": (True, TPSMM_GENERATOR_PARAMS),
    "dense_motion_params": (True, TPSMM_DENSE_MOTION_PARAMS),
    "avd_network_params": (False, TPSMM_AVD_NETWORK_PARAMS),
}
# frame_shape is null in the original configs (their datasets hold frames of the model's size).
TPSMM_DATASET_PARAMS = dict(DATASET_PARAMS, frame_shape=(False, (list, type(None))))
TPSMM_LOSS_WEIGHTS = {
    "perceptual": (False, list), "equivariance_value": (False, NUMBER), "warp_loss": (False, NUMBER),
    "bg": (False, NUMBER),
}
TPSMM_TRAIN_PARAMS = {
    "num_epochs": (False, int), "num_repeats": (False, int), "epoch_milestones": (False, list),
    "lr_generator": (False, NUMBER), "batch_size": (False, int), "scales": (False, list),
    "dataloader_workers": (False, int), "checkpoint_freq": (False, int), "dropout_epoch": (False, int),
    "dropout_maxp": (False, NUMBER), "dropout_startp": (False, NUMBER), "dropout_inc_epoch": (False, int),
    "bg_start": (False, int), "transform_params": (False, TRANSFORM_PARAMS),
    "loss_weights": (False, TPSMM_LOSS_WEIGHTS),
}
TPSMM_TRAIN_AVD_PARAMS = {
    "num_epochs": (False, int), "num_repeats": (False, int), "batch_size": (False, int),
    "dataloader_workers": (False, int), "checkpoint_freq": (False, int), "epoch_milestones": (False, list),
    "lr": (False, NUMBER), "lambda_shift": (False, NUMBER), "lambda_affine": (False, NUMBER),
    "random_scale": (False, NUMBER),
}
# fom's additions to a TPSMM config. frame_shape: the frame size the model was trained at, where the original
# config leaves dataset_params.frame_shape null and its demo is told the size (--img_shape 384,384 for ted).
FOM_PARAMS = {"frame_shape": (False, list)}
TPSMM_CONFIG = {
    "dataset_params": (False, TPSMM_DATASET_PARAMS),
    "fom_params": (False, FOM_PARAMS),
    "model_params": (True, TPSMM_MODEL_PARAMS),
    "train_params": (False, TPSMM_TRAIN_PARAMS),
    "train_avd_params": (False, TPSMM_TRAIN_AVD_PARAMS),
    "visualizer_params": (False, dict),
}


def config_family(config):
    """'tpsmm' for a Thin-Plate Spline Motion Model config (its common_params have num_tps), else 'fomm'."""
    model_params = config.get("model_params") if isinstance(config, dict) else None
    common_params = model_params.get("common_params") if isinstance(model_params, dict) else None
    return "tpsmm" if isinstance(common_params, dict) and "num_tps" in common_params else "fomm"


def _type_name(kind):
    if kind is NUMBER:
        return "a number"
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind if k is not type(None)) + " or null"
    return {int: "a whole number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping"}.get(kind, kind.__name__)


def _is_instance(value, kind):
    if kind is bool or kind == (bool,):
        return isinstance(value, bool)
    if isinstance(value, bool):  # YAML true is not a number
        return False
    return isinstance(value, kind)


def validate(config, schema=CONFIG, where=""):
    """Raise BadConfig naming the first unknown, missing or mistyped key. A whole config is checked
    against its family's schema (config_family)."""
    if schema is CONFIG and config_family(config) == "tpsmm":
        schema = TPSMM_CONFIG
    if not isinstance(config, dict):
        raise BadConfig(f"{where or 'the config'} must be a mapping of keys to values")
    for key in config:
        if str(key).startswith("_"):  # fom's own bookkeeping (e.g. _name), never in a YAML file
            continue
        if key not in schema:
            hint = difflib.get_close_matches(str(key), schema, n=1)
            suggestion = f" (did you mean '{where}{hint[0]}'?)" if hint else ""
            raise BadConfig(f"unknown config key '{where}{key}'{suggestion}")
    for key, (required, kind) in schema.items():
        if key not in config:
            if required:
                raise BadConfig(f"config key '{where}{key}' is missing")
            continue
        value = config[key]
        if isinstance(kind, dict):
            validate(value, kind, f"{where}{key}.")
        elif not _is_instance(value, kind):
            raise BadConfig(f"config key '{where}{key}' must be {_type_name(kind)}, not {value!r}")
    if schema is CONFIG:
        generator = config["model_params"]["generator_params"]
        if generator.get("blend_warped_source") and "dense_motion_params" not in generator:
            raise BadConfig("config key 'model_params.generator_params.blend_warped_source' needs "
                            "dense_motion_params: without a flow there is no warped source to blend")


def resolve_config_path(name_or_path):
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise BadConfig(f"config file {name_or_path} does not exist")
        return path
    bundled = bundled_dir("configs") / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(bundled_config_names(family=None))
    raise BadConfig(f"no config named '{name_or_path}': give a YAML path or one of {names}")


def load_config(name_or_path):
    """A validated config dict from a bundled name ("vox-256") or a YAML file path."""
    path = resolve_config_path(name_or_path)
    try:
        with open(path) as file:
            config = yaml.safe_load(file)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise BadConfig(f"config {path} is not valid YAML{at}") from None
    except OSError as error:
        raise BadConfig(f"cannot read config {path}: {error.strerror}") from None
    try:
        validate(config)
    except BadConfig as error:
        raise BadConfig(f"{path}: {error}") from None
    config = dict(config)
    config.setdefault("_name", path.stem)
    return config


def config_name(config):
    return config.get("_name", "config")


def frame_size(config):
    """The model's (height, width), from dataset_params.frame_shape, else (null in the TPSMM configs) from
    fom_params.frame_shape (tpsmm-ted-384's 384 x 384), else 256 x 256."""
    shape = (config.get("dataset_params", {}).get("frame_shape") or config.get("fom_params", {}).get("frame_shape")
             or [256, 256, 3])
    return int(shape[0]), int(shape[1])


def without_private_keys(config):
    """The config as it would be written to YAML (fom's bookkeeping keys removed)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}
