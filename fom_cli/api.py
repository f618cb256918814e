"""fom from Python: load a model once, then animate with it, from files or from arrays in memory.

    import fom_cli as fom

    model = fom.load_model("vox", device="auto", precision="auto")    # a name, a path, or None (bundled)
    fom.animate(model, "face.png", "talk.mp4", "out.mp4", face=True)    # the CLI's job, with its options
    frames = model.animate(source_image, driving_frames)               # numpy (H, W, 3) in, numpy out
    for frame in model.stream(source_image, frame_iterator):           # lazily, in constant memory
        ...

The options are AnimationOptions' (engine.py), by name: mode, adapt_scale, best_frame, find_best_frame,
fit, start, duration, fps, audio, side_by_side, overwrite, batch_size, face, crop_source, all_faces,
crop_driving, paste_back, max_size, increase, detector, detector_weights. Images in memory are RGB,
(H, W, 3), uint8 or float in [0, 1], of any size (fitted as the CLI fits them); frames out are uint8.
Errors are FomError (BadInput, BadCheckpoint, BadOutput, ...). Nothing is printed unless asked
(`progress=True` shows a progress bar on stderr); notes go to the logging logger "fom_cli".
"""

import logging
from pathlib import Path

import numpy as np

from fom_cli.checkpoint import BUNDLED_MODEL
from fom_cli.config import frame_size, load_config
from fom_cli.engine import Animation, AnimationOptions, animate_file, check_outputs, check_source, driving_source
from fom_cli.errors import BadInput
from fom_cli.families import load_networks
from fom_cli.fetch import checkpoint_or_bundled
from fom_cli.media.images import read_image, to_uint8
from fom_cli.onnx_graphs import is_export_folder
from fom_cli.options import BACKENDS, PRECISIONS
from fom_cli.runtime import choose_precision, pick_device

log = logging.getLogger("fom_cli")


class Model:
    """Networks loaded once, on their device, in their precision: animate any number of sources with them."""

    def __init__(self, networks, precision="fp32", checkpoint=None, precision_reason="asked for"):
        self.networks = networks
        self.precision = precision
        self.precision_reason = precision_reason  # why this precision: "asked for", or auto's reason
        self.checkpoint = checkpoint

    @property
    def config(self):
        return self.networks.config

    @property
    def family(self):
        """"fomm" or "tpsmm"."""
        return self.networks.family.name

    @property
    def device(self):
        return self.networks.device

    @property
    def frame_size(self):
        """(height, width) of the frames the networks see."""
        return tuple(frame_size(self.config))

    def __repr__(self):
        return (f"Model({self.family}, config={self.config.get('_name')!r}, device={self.device}, "
                f"precision={self.precision})")

    def stream(self, source, driving, fps=25.0, progress=False, **options):
        """Output frames (uint8 (H, W, 3)) one by one as the driving frames come: `driving` is a video path,
        an (N, H, W, 3) array, a list of frames or any iterator of frames (read once, `fps` frames/s)."""
        options = AnimationOptions(**options)
        animation = Animation(self.networks, self.precision, source_image(source), driving_source(driving, fps),
                              options, progress)
        for frame in animation:
            yield to_uint8(frame)

    def animate(self, source, driving, fps=25.0, progress=False, **options):
        """All output frames at once: uint8 (N, H, W, 3). For long videos use stream or fom.animate."""
        return np.stack(list(self.stream(source, driving, fps, progress, **options)))


def source_image(source):
    """A source given as a path (read as the CLI reads it) or as an array (checked when animated)."""
    if isinstance(source, (str, Path)):
        return read_image(check_source(source))
    return source


def load_model(checkpoint=None, device="auto", precision="auto", config=None, align_corners=None, compile=False,
               progress=False, backend=None):
    """A Model from a released model's name (`vox`, `tpsmm-vox`, ...: downloaded once into the cache), a
    checkpoint file (FOMM, TPSMM, or one fom trained or exported), or None for the bundled toon-128 model.

    device: auto (CUDA when available), cpu, cuda or cuda:N. precision: auto (bf16 on a CPU with native
    bf16, fp16 on CUDA, else fp32: runtime.choose_precision), fp32, bf16 or fp16 (the convolutions;
    keypoints, output layers and sampling stay fp32); Model.precision says what was chosen. config: a config name or YAML path (default: the
    checkpoint's own, or the bundled config whose tensor shapes match). align_corners: None (the config's),
    True or False. compile: torch.compile the networks (GPUs). progress: report a download on stderr.
    backend: torch, or onnxruntime (the graphs of `fom export --onnx`: a checkpoint is exported once into the
    cache); None: torch, or onnxruntime when `checkpoint` is a folder of exported graphs.
    """
    if precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if backend not in (None, *BACKENDS):
        raise BadInput(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    device = pick_device(device)
    path = checkpoint_or_bundled(str(checkpoint) if checkpoint is not None else None, quiet=not progress)
    if backend is None:
        backend = "onnxruntime" if is_export_folder(path) else "torch"
    # The name the outputs' marks give the model: a released model's name, or None for its file's.
    name = None if checkpoint is None or Path(str(checkpoint)).exists() else str(checkpoint)
    if backend == "onnxruntime":
        networks = load_onnx_networks(path, config, align_corners, device, precision, compile, progress)
        networks.name = name
        return Model(networks, "fp32", path, "the onnxruntime backend runs float32 graphs")
    if is_export_folder(path):
        raise BadInput(f"{path} holds ONNX graphs: run them with --backend onnxruntime")
    precision, precision_reason = choose_precision(precision, device)
    networks = load_networks(path, load_config(config) if config else None, align_corners, device,
                             precision=precision, compile=compile)
    networks.name = name
    if checkpoint is None:
        networks.note = (f"no --checkpoint: using the bundled {Path(BUNDLED_MODEL).stem} model, trained on cartoon "
                         "faces (for real faces: --checkpoint vox)")
    if networks.note:
        log.info(networks.note)
    return Model(networks, precision, path, precision_reason)


def load_onnx_networks(path, config, align_corners, device, precision, compile, progress):
    """OnnxNetworks from a folder of exported graphs, or from a checkpoint exported first into the cache (once
    per checkpoint, config and convention)."""
    from fom_cli.onnx_backend import OnnxNetworks, import_onnxruntime
    from fom_cli.onnx_graphs import cached_export

    import_onnxruntime()   # a missing extra stops here, before an export
    if precision not in ("auto", "fp32"):
        raise BadInput(f"the onnxruntime backend runs float32 graphs: leave out --precision {precision}")
    if compile:
        raise BadInput("--compile is torch's: leave it out with --backend onnxruntime")
    if not is_export_folder(path):
        path = cached_export(path, load_config(config) if config else None, align_corners, progress)
    elif config is not None or align_corners is not None:
        raise BadInput(f"{path} was exported with its config and grid convention: export again to change them "
                       "(fom export CHECKPOINT --config ... --onnx DIR)")
    return OnnxNetworks(path, device)


def animate(model, source, driving, output, progress=False, **options):
    """The CLI's job: `source` (an image path or array) animated by `driving` (a video path, a frames folder,
    or frames in memory) into `output` (.mp4 .mov .mkv .webm .gif, or a folder for PNG frames), with the
    driving video's frame rate, duration and sound. Returns the output's path."""
    options = AnimationOptions(**options)
    paths = [Path(given) if isinstance(given, (str, Path)) else None for given in (source, driving)]
    check_outputs([(*paths, Path(output))], options.overwrite, signed=options.sign is not None)
    animate_file(model.networks, model.precision, source, driving, Path(output), options, progress)
    return Path(output)
