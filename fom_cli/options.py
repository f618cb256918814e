"""The options several commands share, each defined once here with its checks.

argparse turns a value its type function rejects into the one-line usage error "fom: error: argument
--batch-size: invalid positive integer value: '0'" with exit code 2, so checks that need only the value
itself live in the type functions below. Nothing here imports torch: `fom --help` stays fast.
"""

import argparse
import math

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# --mode: avd (animation via disentanglement) needs a TPSMM checkpoint with its AVD network.
ANIMATION_MODES = ("relative", "absolute", "avd")

# --fps: below 1 frame/s a short clip becomes hours of stills, above 240 no player shows the frames.
MIN_FPS, MAX_FPS = 1, 240
FITS = ("crop", "pad", "stretch")
DETECTORS = ("dlib", "sfd", "auto")


# --- value types ------------------------------------------------------------------------------------------

def positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, not {text!r}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a non-negative integer, not {text!r}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or math.isinf(value):  # also rejects nan
        raise ValueError(f"expected a non-negative number, not {text!r}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"expected a positive number, not {text!r}")
    return value


def frame_rate(text):
    value = float(text)
    if not MIN_FPS <= value <= MAX_FPS:  # also rejects nan
        raise ValueError(f"expected a frame rate from {MIN_FPS} to {MAX_FPS}, not {text!r}")
    return value


def fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(f"expected a number from 0 to 1, not {text!r}")
    return value


# argparse names the expected kind in its "invalid ... value" message after the type function's name.
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
non_negative_float.__name__ = "non-negative number"
positive_float.__name__ = "positive number"
frame_rate.__name__ = f"frame rate (from {MIN_FPS} to {MAX_FPS} frames/s)"
fraction.__name__ = "number from 0 to 1"


# --- shared options -----------------------------------------------------------------------------------------

def add_checkpoint(parser, help_text="checkpoint file (an original FOMM one or one fom trained) or a released "
                                     "model's name: vox, taichi, ... (`fom models`; downloaded on first use); "
                                     "default: the bundled model", **kwargs):
    parser.add_argument("--checkpoint", metavar="CHECKPOINT", help=help_text, **kwargs)


def add_config(parser, help_text="config name (vox-256, taichi-256, ...) or YAML path; default: the "
                                 "checkpoint's own, or the bundled config matching its tensor shapes",
               default=None):
    parser.add_argument("--config", default=default, help=help_text)


def add_device(parser, default="auto"):
    help_text = "auto (CUDA when available), cpu, cuda or cuda:N" if default == "auto" else "cpu, cuda or cuda:N"
    parser.add_argument("--device", default=default, help=f"{help_text} (default {default})")


def add_batch_size(parser, help_text="driving frames per forward pass (default: 8 on CPU, 32 on CUDA)"):
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N", help=help_text)


def add_precision(parser, help_text="network precision (default auto: bf16 on a CPU with native bf16, fp16 on "
                                    "CUDA, else fp32); reduced precision autocasts the convolutions while "
                                    "keypoints, output layers and sampling grids stay fp32"):
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=help_text)


def add_mark_options(parser):
    """--no-mark and --visible-mark: what the outputs say about themselves (media/marks.py)."""
    parser.add_argument("--no-mark", action="store_true",
                        help="leave out the metadata that says the output is synthetic (IPTC digital source type "
                             "trainedAlgorithmicMedia, the tool, the model, the source's name): written by default")
    parser.add_argument("--visible-mark", nargs="?", const="AI-generated", default=None, metavar="TEXT",
                        help="write a small label in a corner of every frame (default text: AI-generated), away "
                             "from the faces pasted back")
    parser.add_argument("--sign", nargs=2, metavar=("KEY", "CERT"),
                        help="embed C2PA content credentials signed with this private key (PEM) and certificate "
                             "chain (PEM, the signer's first) in MP4, MOV, GIF and PNG outputs; needs pip install "
                             "'fom[c2pa]'")


BACKENDS = ("torch", "onnxruntime")


def add_backend(parser):
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch (default), or onnxruntime: the graphs of `fom export --onnx` (a checkpoint is "
                             "exported once into the cache; a folder of graphs as --checkpoint runs with it "
                             "by default); needs pip install 'fom[onnx]'")


def add_quiet(parser, help_text="no progress bar or notes"):
    parser.add_argument("-q", "--quiet", action="store_true", help=help_text)



# --- the options of fom animate and fom batch -----------------------------------------------------------

def add_animation_options(parser):
    """The options shared by `fom animate` and `fom batch`."""
    model = parser.add_argument_group("model")
    add_checkpoint(model)
    add_config(model)
    model.add_argument("--align-corners", choices=("true", "false"), default=None,
                       help="grid_sample convention: true = how the released checkpoints were trained (default, "
                            "unless the config says otherwise); false = the original code on today's torch")
    motion = parser.add_argument_group("motion")
    motion.add_argument("--mode", choices=ANIMATION_MODES, default="relative",
                        help="relative: apply the driving motion since the start frame to the source's keypoints "
                             "(default); absolute: use the driving keypoints as they are; avd: TPSMM's AVD "
                             "network puts the source's shape in each driving pose (TPSMM checkpoints only)")
    motion.add_argument("--adapt-scale", action=argparse.BooleanOptionalAction, default=True,
                        help="scale relative motion by the size ratio of source and driving keypoint clouds "
                             "(default: on)")
    start = motion.add_mutually_exclusive_group()
    start.add_argument("--best-frame", type=non_negative_int, metavar="N",
                       help="driving frame N matches the source's pose: motion is measured from it")
    start.add_argument("--find-best-frame", action="store_true",
                       help="find the driving frame whose pose best matches the source (face landmarks when "
                            "face-alignment's model is cached, else the model's own keypoints)")
    media = parser.add_argument_group("frames and output")
    media.add_argument("--fit", choices=FITS, default="crop",
                       help="how frames of another aspect ratio are fitted to the model's frame: centre crop "
                            "(default), pad with black, or stretch (the original's behaviour)")
    media.add_argument("--start", type=non_negative_float, default=0.0, metavar="SECONDS",
                       help="use the driving video from this time on (ffmpeg's -ss; the sound is cut to match)")
    media.add_argument("--duration", type=positive_float, metavar="SECONDS",
                       help="use this many seconds of the driving video (ffmpeg's -t; default: to its end)")
    media.add_argument("--fps", type=frame_rate,
                       help=f"output frame rate, {MIN_FPS} to {MAX_FPS} (default: the driving video's); the "
                            f"duration stays the driving video's: frames are repeated or dropped, so the sound "
                            f"stays in sync")
    media.add_argument("--no-audio", action="store_true", help="do not copy the driving video's sound")
    media.add_argument("--side-by-side", action="store_true",
                       help="write source | driving | result panels with keypoints drawn")
    add_mark_options(media)
    media.add_argument("--overwrite", action="store_true",
                       help="replace the PNG frames an earlier run wrote in a frames folder (a folder holding "
                            "any other file is never touched)")
    run = parser.add_argument_group("running")
    add_device(run)
    add_batch_size(run)
    add_precision(run)
    add_backend(run)
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the networks (pays off on GPUs for long or many videos: the first batch "
                          "waits for compilation); falls back to plain PyTorch with a warning where it fails")
    add_quiet(run)
    add_face_options(parser)


def add_face_options(parser):
    """Face cropping and paste-back for `fom animate` and `fom batch` (fom_cli/face_animation.py)."""
    faces = parser.add_argument_group("faces in larger photos and videos")
    faces.add_argument("--face", action="store_true",
                       help="the preset for real photos and phone videos: --crop-source --crop-driving --paste-back")
    faces.add_argument("--crop-source", action="store_true",
                       help="find the face in the source photo and animate that square (the model needs a face "
                            "filling its frame)")
    faces.add_argument("--all-faces", action="store_true",
                       help="animate every face in the photo with the same driving motion (with --paste-back)")
    faces.add_argument("--crop-driving", action="store_true",
                       help="follow the face in the driving video with a window smoothed over time and feed the "
                            "model that square")
    faces.add_argument("--paste-back", action="store_true",
                       help="put every animated face back into the photo (feathered edges): the output has the "
                            "photo's size and, outside the faces, its exact pixels; implies --crop-source")
    faces.add_argument("--max-size", type=positive_int, default=None, metavar="N",
                       help="with --paste-back: shrink the photo so its longer side is at most N pixels "
                            "(default 1920); H.264 outputs of odd size get one edge row/column repeated")
    faces.add_argument("--increase", type=non_negative_float, default=0.1,
                       help="margin around each face box, as a fraction of its size, as in `fom crop` "
                            "(default: 0.1)")
    faces.add_argument("--detector", choices=DETECTORS, default="dlib",
                       help="face detector, as in `fom crop`: dlib (default, offline), sfd (S3FD, needs its "
                            "weights cached), auto")
    faces.add_argument("--detector-weights", metavar="PATH", help="S3FD weights file for --detector sfd/auto")
