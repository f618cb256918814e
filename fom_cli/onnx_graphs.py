"""`fom export CHECKPOINT --onnx DIR`: a FOMM or TPSMM checkpoint as the ONNX graphs fom's pipeline runs.

The pipeline split where the work is (the source side once, the driving side per batch), and where the
exporters stop (no matrix inverse, no convex hull):

    keypoints.onnx  image (N, 3, H, W)                     -> keypoints (FOMM: value and jacobian)
    source.onnx     source (1, 3, H, W), its keypoints      -> encoder features and what the motion network
                                                               precomputes (downsampled source, heatmaps)
    frame.onnx      the source side + moved keypoints (N)   -> frames (N, 3, H, W) in [0, 1]
    avd.onnx        (TPSMM with an AVD network) source and driving keypoints -> the keypoints to animate with

Outside the graphs, in a few lines of numpy (model.json spells them out for each mode): the relative
motion (a 2x2 jacobian inverse per keypoint), the adapt-scale factor (convex hull areas), and for TPSMM
the thin-plate spline systems (an 8x8 solve per spline: frame.onnx takes their solution). FOMM's graph
inverts the driving jacobians in closed form (models/blocks.inverse_2x2).

The graphs hold the networks after the exact rewrites that help every engine (BatchNorm folded, sub-pixel
up-sampling, the strided anti-alias blur: models/inference.py), in float32, with a dynamic batch. They
are written by torch's TorchScript-based exporter, at opset 17 (GridSample needs 16): it runs on every
torch fom supports and needs no second exporter package.

model.json: the format, fom's version, the family, the config, align_corners, the checkpoint's file name
and sha256, each graph's inputs and outputs (names, shapes with "N" for the batch), and the mode math.
"""

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from fom_cli import __version__
from fom_cli.config import config_name, frame_size, without_private_keys
from fom_cli.errors import BadOutput, FomError
from fom_cli.media.files import AtomicOutput, file_sha256

FORMAT = "fom-onnx-1"
OPSET = 17
MODEL_JSON = "model.json"
BATCH = "N"   # the name of the dynamic batch dimension in model.json and in the graphs

# The math of each mode that stays outside the graphs, as model.json states it (FOMM's then TPSMM's).
FOMM_MODE_MATH = {
    "relative": "value = (value_driving - value_initial) * scale + source_value; jacobian = jacobian_driving @ "
                "inv(jacobian_initial) @ source_jacobian; scale = sqrt(hull_area(source_value)) / "
                "sqrt(hull_area(value_initial)) with adapt_scale, else 1 (value_initial, jacobian_initial: "
                "keypoints.onnx on the driving frame the motion is measured from)",
    "absolute": "value, jacobian = keypoints.onnx of the driving frame",
}
TPSMM_MODE_MATH = {
    "relative": "value = (value_driving - value_initial) * scale + source_value, scale as for FOMM (the original "
                "always adapts it)",
    "absolute": "value = keypoints.onnx of the driving frame",
    "avd": "value = avd.onnx(source_value, value_driving)",
    "splines": "for each frame n and spline g (5 keypoints each, P = 5): c = value[n, 5g:5g+5] (control points), t = "
               "source_value[0, 5g:5g+5] (targets); K[i, j] = r2 log(r2 + 1e-9) with r2 = |c_i - c_j|^2; L = "
               "[[K, C], [C^T, 0]] + 0.01 I with C = [c, 1] (P x 3); [w; a] = inv(L) @ [t; 0] (w: P x 2, a: 3 x 2); "
               "tps_weights[n, g] = w, tps_affine[n, g] = a^T",
}


class FommKeypoints(nn.Module):
    def __init__(self, kp_detector):
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, image):
        return tuple(self.kp_detector(image).values())


class FommSource(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, source, source_value):
        prepared = self.generator.dense_motion_network.prepare_source(source, {"value": source_value})
        return self.generator.encode(source), prepared["image"], prepared["heatmaps"]


class FommFrame(nn.Module):
    """Inputs: the source side, the source's keypoints, the moved keypoints; with blend_warped_source also the
    source image (its own pixels are blended in)."""

    def __init__(self, generator, jacobians, blend):
        super().__init__()
        self.generator = generator
        self.jacobians = jacobians
        self.blend = blend

    def forward(self, source_features, motion_source, source_heatmaps, *keypoints_and_source):
        inputs = list(keypoints_and_source)
        source = inputs.pop() if self.blend else None
        if self.jacobians:
            source_kp = {"value": inputs[0], "jacobian": inputs[1]}
            moved = {"value": inputs[2], "jacobian": inputs[3]}
        else:
            source_kp, moved = {"value": inputs[0]}, {"value": inputs[1]}
        generator = self.generator
        prepared = {"image": motion_source, "kp": source_kp, "heatmaps": source_heatmaps}
        motion = generator.dense_motion_network.motion(prepared, moved)
        features = generator.animate_features(source_features, motion)
        warped = generator.warp_source(source, motion["deformation"]) if self.blend else None
        return generator.decode(features, warped)


class TpsKeypoints(nn.Module):
    def __init__(self, kp_detector):
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, image):
        return self.kp_detector(image)


class TpsSource(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source, source_value):
        prepared = self.model.dense_motion_network.prepare_source(source, source_value)
        encoded = self.model.inpainting_network.encode_source(source)
        return (*encoded["feature_maps"], prepared["image"], prepared["heatmaps"])


class TpsFrame(nn.Module):
    def __init__(self, model, num_feature_maps):
        super().__init__()
        self.model = model
        self.num_feature_maps = num_feature_maps

    def forward(self, source, *inputs):
        from fom_cli.models.tpsmm import ThinPlateSpline

        feature_maps = list(inputs[:self.num_feature_maps])
        motion_source, source_heatmaps, value, tps_affine, tps_weights = inputs[self.num_feature_maps:]
        dense_motion = self.model.dense_motion_network
        splines = ThinPlateSpline(value.view(*tps_weights.shape), tps_affine, tps_weights)
        motion = dense_motion.motion({"image": motion_source, "heatmaps": source_heatmaps}, value, splines=splines)
        encoded = {"image": source, "feature_maps": feature_maps}
        return self.model.inpainting_network.decode(encoded, motion)["prediction"]


class TpsAvd(nn.Module):
    def __init__(self, avd_network):
        super().__init__()
        self.avd_network = avd_network

    def forward(self, source_value, value_driving):
        return self.avd_network(source_value, value_driving)


def make_portable(networks):
    """Networks (families.Networks, original blocks) rewritten in place with the rewrites every engine gains
    from (see the module's docstring)."""
    from fom_cli.animation_tpsmm import optimize_tps_networks
    from fom_cli.models.inference import optimize_for_inference

    if networks.family.name == "fomm":
        for network in (networks.kp_detector, networks.generator):
            optimize_for_inference(network, channels_last=False, inplace=True, portable=True)
    else:
        optimize_tps_networks(networks.kp_detector, networks.generator, portable=True)
    return networks


def graph_specs(networks):
    """[(file name, module, example inputs, input names, output names, batched names)] for the networks: the
    batched names have the dynamic batch as their first dimension."""
    height, width = frame_size(networks.config)
    source = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    frames = source.expand(2, -1, -1, -1).contiguous()
    specs = []
    if networks.family.name == "fomm":
        kp_detector, generator = networks.kp_detector, networks.generator
        with torch.no_grad():
            kp_names = list(kp_detector(source).keys())   # value, and jacobian unless zero-order
            source_kp = kp_detector(source)
            kp_frames = kp_detector(frames)
        jacobians = "jacobian" in kp_names
        blend = generator.blend_mask is not None
        specs.append(("keypoints.onnx", FommKeypoints(kp_detector), (frames,), ["image"], kp_names,
                      ["image", *kp_names]))
        specs.append(("source.onnx", FommSource(generator), (source, source_kp["value"]), ["source", "source_value"],
                      ["source_features", "motion_source", "source_heatmaps"], []))
        with torch.no_grad():
            source_features, motion_source, source_heatmaps = FommSource(generator)(source, source_kp["value"])
        source_inputs = [source_kp[name] for name in kp_names]
        frame_inputs = (source_features, motion_source, source_heatmaps, *source_inputs,
                        *[kp_frames[name] for name in kp_names], *([source] if blend else []))
        frame_names = ["source_features", "motion_source", "source_heatmaps", *[f"source_{name}" for name in kp_names],
                       *kp_names, *(["source"] if blend else [])]
        specs.append(("frame.onnx", FommFrame(generator, jacobians, blend), frame_inputs, frame_names, ["prediction"],
                      [*kp_names, "prediction"]))
        return specs

    kp_detector, model = networks.kp_detector, networks.generator
    with torch.no_grad():
        source_value = kp_detector(source)
        value = kp_detector(frames)
        source_side = TpsSource(model)(source, source_value)
        splines = model.dense_motion_network.fit_splines(value, source_value)
    num_maps = len(source_side) - 2
    map_names = [f"feature_map_{i}" for i in range(num_maps)]
    specs.append(("keypoints.onnx", TpsKeypoints(kp_detector), (frames,), ["image"], ["value"], ["image", "value"]))
    specs.append(("source.onnx", TpsSource(model), (source, source_value), ["source", "source_value"],
                  [*map_names, "motion_source", "source_heatmaps"], []))
    specs.append(("frame.onnx", TpsFrame(model, num_maps),
                  (source, *source_side, value, splines.affine, splines.weights),
                  ["source", *map_names, "motion_source", "source_heatmaps", "value", "tps_affine", "tps_weights"],
                  ["prediction"], ["value", "tps_affine", "tps_weights", "prediction"]))
    if model.avd_network is not None:
        specs.append(("avd.onnx", TpsAvd(model.avd_network), (source_value, value), ["source_value", "value_driving"],
                      ["value"], ["value_driving", "value"]))
    return specs


def export_graph(path, module, inputs, input_names, output_names, batched):
    """One graph written to `path` with torch's TorchScript-based exporter, the batch dimension dynamic."""
    import inspect

    # torch 2.9 and later default to the torch.export-based exporter (which needs onnxscript); 2.4 has only
    # this one, and no argument to choose.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's deprecation notice and its tracer's warnings about Python values in shapes (the
        # graphs are checked at other batch sizes by the tests) are not the user's concern.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                          opset_version=OPSET, dynamic_axes={name: {0: BATCH} for name in batched},
                          do_constant_folding=True, **legacy)


def describe_graph(module, inputs, input_names, output_names, batched):
    """{inputs: [{name, dtype, shape}], outputs: [...]} from the example the graph was traced with, the dynamic
    batch as "N" (the exporter's own shape inference names other dimensions after the batch too)."""
    with torch.no_grad():
        outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)

    def values(names, tensors):
        return [{"name": name, "dtype": "float32",
                 "shape": [BATCH if name in batched and axis == 0 else size for axis, size in enumerate(tensor.shape)]}
                for name, tensor in zip(names, tensors)]

    return {"inputs": values(input_names, inputs), "outputs": values(output_names, outputs)}


def require_onnx():
    """FomError naming the install command where the exporter's packages are missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise FomError("exporting to ONNX needs the onnx package: pip install 'fom[onnx]'") from None


def export_onnx(checkpoint, directory, config=None, align_corners=None):
    """Write `directory` (new, or an empty folder) with the graphs and model.json of a checkpoint file (config
    and align_corners as `fom animate` takes them). Returns model.json's contents."""
    from fom_cli.families import load_networks

    require_onnx()
    check_export_folder(directory)
    networks = load_networks(checkpoint, config, align_corners, device="cpu", optimize=False)
    return write_graphs(make_portable(networks), directory, checkpoint)


def check_export_folder(directory):
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BadOutput(f"{directory} exists and is not an empty folder; give a new folder for the ONNX graphs")


def write_graphs(networks, directory, checkpoint=None):
    """The graphs of `networks` (on the CPU, made portable) and model.json, written in a temporary folder beside
    `directory` and renamed when whole. checkpoint: the file they came from, named with its sha256."""
    import onnx

    require_onnx()
    check_export_folder(directory)
    family = networks.family.name
    generator = networks.generator
    description = {
        "format": FORMAT, "fom_version": __version__, "family": family, "config_name": config_name(networks.config),
        "config": without_private_keys(networks.config),
        "frame_size": list(frame_size(networks.config)), "opset": OPSET,
        "align_corners": True if family == "tpsmm" else generator.align_corners,
        "checkpoint": None if checkpoint is None else {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint)},
        "modes": dict(FOMM_MODE_MATH if family == "fomm" else TPSMM_MODE_MATH),
        "graphs": {},
    }
    if family == "tpsmm" and generator.avd_network is None:
        del description["modes"]["avd"]
    with AtomicOutput(directory, directory=True) as output:
        for name, *spec in graph_specs(networks):
            path = Path(output.temporary) / name
            export_graph(path, *spec)
            onnx.checker.check_model(str(path))
            description["graphs"][name.removesuffix(".onnx")] = {"file": name, **describe_graph(*spec)}
        (Path(output.temporary) / MODEL_JSON).write_text(json.dumps(description, indent=2) + "\n")
    return description


def is_export_folder(path):
    """Whether `path` is a folder fom export --onnx wrote."""
    return Path(path).is_dir() and (Path(path) / MODEL_JSON).is_file()


def cached_export(checkpoint, config=None, align_corners=None, progress=False):
    """The export folder of a checkpoint in fom's cache (FOM_HOME/onnx/), exported on first use: keyed by the
    file's sha256, the config and the grid convention asked for, and the graphs' format."""
    import logging

    from fom_cli.registry import cache_home

    convention = {None: "default", True: "align-corners", False: "no-align-corners"}[align_corners]
    key = f"{file_sha256(checkpoint)[:16]}-{config_name(config) if config else 'own-config'}-{convention}-{FORMAT}"
    folder = cache_home() / "onnx" / key
    if is_export_folder(folder):
        return folder
    if progress:
        logging.getLogger("fom_cli").info(f"exporting {checkpoint} to ONNX graphs once, into {folder}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadOutput(f"cannot create {folder.parent} ({error.strerror}); set FOM_HOME to a writable folder") from None
    try:
        export_onnx(checkpoint, folder, config, align_corners)
    except BadOutput:
        if not is_export_folder(folder):   # else another process exported it meanwhile
            raise
    return folder
