"""The onnxruntime backend: the graphs `fom export --onnx` writes, run with the animators' protocol.

OnnxNetworks stands where families.Networks stands (config, family, device, animator()), so the engine,
and with it `fom animate`, `fom batch`, `fom bench` and the Python API, animate through onnxruntime with
every option they have (`--backend onnxruntime`). OnnxAnimator computes the source side once (source.onnx),
then per driving batch runs keypoints.onnx, the mode's math (the same torch functions the torch animators
use: the relative motion, the adapt-scale factor, TPSMM's spline solve) and frame.onnx.

onnxruntime is an optional extra (`pip install 'fom[onnx]'`); the graphs are float32 (onnxruntime's CPU
GridSample takes nothing else), on the CPU or, with onnxruntime-gpu, on CUDA.
"""

import collections
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fom_cli.errors import BadCheckpoint, BadInput, FomError
from fom_cli.onnx_graphs import FORMAT, MODEL_JSON

log = logging.getLogger("fom_cli")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FomError("the onnxruntime backend needs onnxruntime: pip install 'fom[onnx]' (or onnxruntime-gpu for "
                       "CUDA)") from None
    return onnxruntime


def execution_providers(device):
    """onnxruntime's providers for a torch device: the CPU's, or CUDA's on the device's index (then the CPU's
    for any node CUDA cannot take)."""
    onnxruntime = import_onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise FomError(f"this onnxruntime cannot run on {device} (it has {', '.join(onnxruntime.get_available_providers())}); "
                   "pip install onnxruntime-gpu, or use --device cpu")


class OnnxNetworks:
    """A folder of exported graphs, loaded into onnxruntime sessions on `device`."""

    def __init__(self, folder, device=torch.device("cpu"), profile=False):
        from fom_cli.families import FAMILIES

        onnxruntime = import_onnxruntime()
        folder = Path(folder)
        try:
            self.description = json.loads((folder / MODEL_JSON).read_text())
        except (OSError, ValueError) as error:
            raise BadCheckpoint(f"{folder}: no readable {MODEL_JSON} ({error}); export the model again with "
                                "fom export CHECKPOINT --onnx DIR") from None
        if self.description.get("format") != FORMAT:
            raise BadCheckpoint(f"{folder}: {MODEL_JSON} is not in the format this fom reads ({FORMAT}); export the "
                                "model again with this fom")
        self.folder = folder
        self.device = torch.device(device)
        self.family = FAMILIES[self.description["family"]]
        self.config = dict(self.description["config"], _name=self.description["config_name"])
        self.note = None
        providers = execution_providers(self.device)
        self.sessions = {}
        for name, graph in self.description["graphs"].items():
            options = onnxruntime.SessionOptions()
            if profile:   # for node_placement; one file per graph (older releases name them by the second)
                options.enable_profiling = True
                options.profile_file_prefix = os.path.join(tempfile.gettempdir(),
                                                           f"fom-onnx-profile-{os.getpid()}-{name}")
            try:
                self.sessions[name] = onnxruntime.InferenceSession(str(folder / graph["file"]), options,
                                                                   providers=providers)
            except Exception as error:  # onnxruntime's own exception types
                raise BadCheckpoint(f"{folder / graph['file']}: onnxruntime cannot load it ({str(error).splitlines()[0]})"
                                    ) from None

    def node_placement(self):
        """{graph: {execution provider: how many of its nodes ran there}} over the runs so far, read from the
        sessions' profiles (made with profile=True; profiling ends here). A GPU provider can hand nodes it
        lacks a kernel for to the CPU, each a copy there and back: this says whether any were."""
        placement = {}
        for name, session in self.sessions.items():
            path = session.end_profiling()
            # onnxruntime before 1.17 writes the profile into the working folder under the name it returns.
            path = next((candidate for candidate in (path, os.path.basename(path)) if os.path.isfile(candidate)), None)
            if path is None:
                continue
            with open(path) as file:
                events = json.load(file)
            os.remove(path)
            nodes = collections.defaultdict(set)
            for event in events:
                provider = event.get("args", {}).get("provider")
                if event.get("cat") == "Node" and provider:
                    nodes[provider].add(event["name"].removesuffix("_kernel_time"))
            placement[name] = {provider: len(names) for provider, names in nodes.items()}
        return placement

    @property
    def has_avd_network(self):
        return "avd" in self.sessions

    name = None   # what the user called the model (set by api.load_model), for the outputs' marks

    def identity(self):
        """The model, as the outputs' marks name it (families.model_identity): the exported checkpoint."""
        from fom_cli.families import model_identity

        checkpoint = self.description.get("checkpoint") or {}
        return model_identity(self.name or checkpoint.get("file"), None, self.config, checkpoint.get("sha256"))

    @property
    def align_corners(self):
        return self.description["align_corners"]

    def run(self, graph, **inputs):
        """{output name: array} of one graph on float32 numpy inputs."""
        session = self.sessions[graph]
        names = [output.name for output in session.get_outputs()]
        feeds = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in inputs.items()}
        return dict(zip(names, session.run(names, feeds)))

    def animator(self, source, mode="relative", adapt_scale=True, precision="fp32"):
        return OnnxAnimator(self, source, mode, adapt_scale, precision)


def nchw(frames):
    """(N, H, W, 3) or (H, W, 3) float [0, 1] -> a contiguous (N, 3, H, W) float32 array."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


class OnnxAnimator:
    """Animator's protocol (animation.Animator, animation_tpsmm.TpsAnimator) on OnnxNetworks' sessions."""

    def __init__(self, networks, source, mode="relative", adapt_scale=True, precision="fp32"):
        if precision != "fp32":
            raise BadInput(f"the onnxruntime backend runs float32 graphs; --precision {precision} is torch's")
        if mode not in networks.family.modes or (mode == "avd" and not networks.has_avd_network):
            raise FomError(f"--mode {mode}: these exported graphs animate in "
                           f"{' or '.join(m for m in networks.family.modes if m != 'avd' or networks.has_avd_network)} "
                           "mode")
        self.networks = networks
        self.tpsmm = networks.family.name == "tpsmm"
        self.mode = mode
        self.adapt_scale = adapt_scale
        self.source = nchw(source)
        self.kp_source = self.keypoints(source)
        self.source_side = networks.run("source", source=self.source, source_value=self.kp_source["value"])
        # Models that blend the warped source in (toon-128) take the source image in frame.onnx too.
        self.frame_takes_source = any(spec["name"] == "source"
                                      for spec in networks.description["graphs"]["frame"]["inputs"])
        self.kp_driving_initial = None
        self.scale = 1.0

    def keypoints(self, frames):
        """{'value' (N, K, 2)[, 'jacobian' (N, K, 2, 2)]} as float32 tensors (the mode's math is torch's)."""
        return {name: torch.from_numpy(array) for name, array in self.networks.run("keypoints", image=nchw(frames)).items()}

    def set_initial_frame(self, frame):
        """The driving frame whose pose corresponds to the source's: relative motion is measured from it."""
        from fom_cli.animation import movement_scale

        self.kp_driving_initial = self.keypoints(frame)
        if self.mode == "relative" and self.adapt_scale:
            self.scale = movement_scale(self.kp_source, self.kp_driving_initial)

    def driving_keypoints(self, kp_driving):
        """The keypoints the source is animated with, in the animator's mode."""
        from fom_cli.animation import relative_motion

        if self.mode == "absolute":
            return kp_driving
        if self.mode == "avd":
            moved = self.networks.run("avd", source_value=self.kp_source["value"], value_driving=kp_driving["value"])
            return {"value": torch.from_numpy(moved["value"])}
        return relative_motion(self.kp_source, kp_driving, self.kp_driving_initial, self.scale)

    def frame_inputs(self, kp_moved):
        """frame.onnx's inputs besides the source side."""
        if self.tpsmm:
            from fom_cli.models.tpsmm.tps import keypoint_splines

            splines = keypoint_splines(kp_moved["value"], self.kp_source["value"])
            return {"source": self.source, "value": kp_moved["value"], "tps_affine": splines.affine,
                    "tps_weights": splines.weights}
        inputs = {f"source_{name}": value for name, value in self.kp_source.items()}
        inputs.update(kp_moved)
        if self.frame_takes_source:
            inputs["source"] = self.source
        return inputs

    def animate(self, frames, kp_driving=None):
        """(N, H, W, 3) float32 driving frames -> (N, H, W, 3) float32 predictions in [0, 1]."""
        if self.mode == "relative" and self.kp_driving_initial is None:
            self.set_initial_frame(frames[0])
        with torch.inference_mode():
            kp_driving = self.keypoints(frames) if kp_driving is None else kp_driving
            kp_moved = self.driving_keypoints(kp_driving)
            inputs = {name: value.numpy() if torch.is_tensor(value) else value
                      for name, value in self.frame_inputs(kp_moved).items()}
        prediction = self.networks.run("frame", **self.source_side, **inputs)["prediction"]
        self.last_keypoints = {"source": self.kp_source["value"][0].numpy(), "driving": kp_driving["value"].numpy(),
                               "moved": kp_moved["value"].numpy()}
        return prediction.transpose(0, 2, 3, 1)

    def animate_all(self, frames, batch_size):
        """A whole in-memory clip, `batch_size` frames per run of the graphs."""
        return np.concatenate([self.animate(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
