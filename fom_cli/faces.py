"""Face detectors behind one small interface, and the landmark model for `fom animate --find-best-frame`.

Every detector has `detect(image) -> list[Face]`: boxes in the pixels of the image it was given, the most
prominent face first. Two detectors are available:

- `dlib`: dlib's HOG frontal face detector. Its model is built into the `dlib-bin` wheel, so it works
  offline out of the box. It is fast on a CPU and finds frontal and slightly turned faces. Its tight boxes
  are grown to the framing of S3FD-like boxes (DLIB_TO_WIDER_FACE_SCALE), so crops match the training data.
- `sfd`: face-alignment's S3FD network, the detector the original First Order Motion Model used. It also
  finds small and turned faces, but needs its weights file (about 90 MB) in the torch hub cache. It is
  never downloaded from here: a missing file is a one-line error that says where to put it.

`make_detector("auto")` takes `sfd` when its weights are there, else `dlib`.

Detectors look at a resized working copy of each image: large frames are scaled down (most of the time
goes into the detector, and faces worth cropping are big anyway), small ones up (dlib's HOG window is
80 px, so without upsampling it misses the ~40 px faces of a small video).
"""

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fom_cli.errors import BadInput, first_line
from fom_cli.media.images import resize_uint8, to_uint8

DETECTORS = ("dlib", "sfd", "auto")

# face-alignment downloads its weights into the torch hub cache under these names (the last part of its
# download URLs). The names are written out here so that `--detector auto` can look for the S3FD file
# without importing torch and face-alignment; tests/test_faces.py checks them against face-alignment.
SFD_WEIGHTS_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
SFD_WEIGHTS_FILE = "s3fd-619a316812.pth"

# dlib's HOG detector scans an 80x80 px window: faces smaller than that in the working copy are missed.
DLIB_WINDOW = 80

# dlib's HOG boxes are tight: eyebrows to chin, about the extent of the 68 face landmarks (1.03 times their
# width and 0.96 times their height, medians over the test faces below). The original's S3FD and the
# face detectors trained like it on WIDER FACE box more of the head, and the crops the released vox
# checkpoints were trained on are framed from such boxes. dlib's boxes are grown about their centre by
# this factor to match: on skimage's astronaut, matplotlib's Grace Hopper and 12 frames of carphone,
# MTCNN's WIDER FACE boxes (facenet-pytorch's weights; S3FD's could not be run offline) measured
# 1.20 times dlib's side (median; 1.22 on both photos, 1.05 to 1.46 on carphone's 50 px faces), with the
# same centre (their centres 1% of a side apart, median).
DLIB_TO_WIDER_FACE_SCALE = 1.2


@dataclass(frozen=True)
class Face:
    """One detected face: its box (left, top, right, bottom) in pixels, and the detector's confidence."""

    box: tuple
    score: float

    @property
    def width(self):
        return self.box[2] - self.box[0]

    @property
    def height(self):
        return self.box[3] - self.box[1]

    @property
    def area(self):
        return self.width * self.height


# --- box arithmetic, shared with crop.py -----------------------------------------------------------------

def iou(box_a, box_b):
    """Intersection over union of two (left, top, right, bottom) boxes: 1 for equal boxes, 0 for disjoint."""
    import torch  # here, not at the top: importing this module (`fom crop --help`) must not load torch
    from torchvision.ops import box_iou

    # float64, as Python's own arithmetic: box_iou would compute integer boxes in float32.
    overlap = box_iou(torch.tensor([box_a], dtype=torch.float64), torch.tensor([box_b], dtype=torch.float64))
    return float(overlap.nan_to_num(0.0))  # two boxes without area: 0 / 0, no overlap


def grown(box, factor):
    """The box scaled by `factor` about its centre."""
    left, top, right, bottom = box
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    half_width, half_height = factor * (right - left) / 2, factor * (bottom - top) / 2
    return (centre_x - half_width, centre_y - half_height, centre_x + half_width, centre_y + half_height)


def union_box(boxes):
    """The smallest box holding all the given boxes."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())


def by_prominence(faces):
    """Faces sorted most prominent first: the largest box, and among equal sizes the highest score."""
    return sorted(faces, key=lambda face: (face.area, face.score), reverse=True)


def most_prominent(faces):
    """The most prominent face, or None for no faces."""
    ranked = by_prominence(faces)
    return ranked[0] if ranked else None


def keep_best_of_overlapping(faces, max_iou=0.3):
    """Of faces whose boxes overlap by more than max_iou, keep only the highest-scoring one.

    One face can fire a detector twice (dlib has five HOG filters: frontal, turned left/right, tilted), and
    two boxes for one face would make two crops of it.
    """
    import torch
    from torchvision.ops import nms

    # nms keeps the best-scored box and drops those overlapping it by more than max_iou, then the next. It
    # is given ranks rather than scores: its sort may reorder equal scores, Python's stable sort does not.
    ranked = sorted(faces, key=lambda face: face.score, reverse=True)
    boxes = torch.tensor([face.box for face in ranked], dtype=torch.float64).reshape(-1, 4)
    kept = nms(boxes, torch.arange(len(ranked), 0, -1, dtype=torch.float64), max_iou)
    return [ranked[index] for index in kept.tolist()]


# --- the working copy ------------------------------------------------------------------------------------

def as_rgb_uint8(image):
    """Any image the rest of fom handles (uint8 or float in [0, 1]; gray, RGB or RGBA) as uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def working_copy(image, max_side, max_upscale):
    """The image resized so its longer side is at most max_side, enlarged at most max_upscale times.

    Returns the copy and its scale (copy pixels per image pixel), to map boxes back.
    """
    height, width = image.shape[:2]
    scale = min(max_upscale, max_side / max(height, width))
    if abs(scale - 1.0) < 1e-3:
        return image, 1.0
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_uint8(image, new_size), scale


# --- detectors -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def dlib_frontal_face_detector():
    """dlib's detector, built once per process: building it takes 0.3 s (it unpacks its HOG model), which a
    batch of face jobs would otherwise pay per job. It holds no state between images."""
    import dlib  # imported here so that `fom` commands that detect no faces do not pay for it

    return dlib.get_frontal_face_detector()


class DlibDetector:
    """dlib's HOG frontal face detector (built into the dlib-bin wheel: nothing to download)."""

    name = "dlib"

    def __init__(self, max_side=1024):
        self.max_side = max_side
        self._detector = dlib_frontal_face_detector()

    def detect(self, image, max_side=None):
        """Faces in an image (HxWx3 RGB), most prominent first, boxes in the image's pixels.

        max_side bounds the working copy's longer side (default: the detector's); small images are
        enlarged up to 2x so that faces of 40 px fill dlib's 80 px window.
        """
        image = as_rgb_uint8(image)
        work, scale = working_copy(image, max_side or self.max_side, max_upscale=DLIB_WINDOW / 40)
        # run() rather than calling the detector: it also returns each box's score. Upsampling is already
        # done by working_copy (0 here), and a threshold of 0 is dlib's default.
        rectangles, scores, _filter_indices = self._detector.run(work, 0, 0.0)
        faces = [Face(box=(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale),
                      score=float(score))
                 for r, score in zip(rectangles, scores)]
        return [Face(box=grown(face.box, DLIB_TO_WIDER_FACE_SCALE), score=face.score)
                for face in by_prominence(keep_best_of_overlapping(faces))]


class SfdDetector:
    """face-alignment's S3FD face detector, the one the original First Order Motion Model used."""

    name = "sfd"

    def __init__(self, network, max_side=640):
        """network: a face_alignment SFDDetector (see load_sfd). max_side 640 as the original crop script."""
        self.network = network
        self.max_side = max_side

    def detect(self, image, max_side=None):
        """Faces in an image (HxWx3 RGB), most prominent first, boxes in the image's pixels."""
        import torch

        image = as_rgb_uint8(image)
        # S3FD finds faces down to ~15 px by itself: the working copy is only ever made smaller.
        work, scale = working_copy(image, max_side or self.max_side, max_upscale=1.0)
        with torch.inference_mode():
            detections = self.network.detect_from_image(work)  # rows of left, top, right, bottom, score
        faces = [Face(box=tuple(float(value) / scale for value in row[:4]), score=float(row[4]))
                 for row in detections]
        return by_prominence(faces)


def torch_hub_checkpoints_dir():
    """Where torch.hub (and so face-alignment) keeps downloaded weights.

    The same rule as torch.hub.get_dir(), written out so that looking for a file does not import torch:
    $TORCH_HOME/hub, where TORCH_HOME defaults to $XDG_CACHE_HOME/torch, then ~/.cache/torch.
    """
    cache_home = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.environ.get("TORCH_HOME", os.path.join(cache_home, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def sfd_weights_path():
    """Where face-alignment keeps S3FD's weights (the file may not be there)."""
    return torch_hub_checkpoints_dir() / SFD_WEIGHTS_FILE


def load_sfd(weights_path, device="auto", max_side=640):
    """An SfdDetector with the weights from weights_path; BadInput if the file is missing or is not them.

    device: a torch device name, or "auto" (or None) for cuda when available, else cpu.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise BadInput(f"the sfd face detector needs its weights: put {SFD_WEIGHTS_FILE} (from "
                       f"{SFD_WEIGHTS_URL}) at {weights_path}, pass --detector-weights PATH, "
                       f"or use --detector dlib")
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    from fom_cli.runtime import pick_device

    device = str(pick_device(device))  # a bad --device is the device's fault, not the file's: say so first
    try:
        # Given a path, face-alignment loads that file and never goes to the network.
        network = SFDDetector(device=device, path_to_detector=str(weights_path))
    except Exception as error:
        if not is_weights_file_error(error):  # out of memory, a driver error, ...: the file may be fine
            raise BadInput(f"could not load the S3FD face detector from {weights_path} on {device} "
                           f"({type(error).__name__}: {first_line(error)})") from None
        raise BadInput(f"{weights_path} is not S3FD face detector weights "
                       f"({type(error).__name__}); expected {SFD_WEIGHTS_FILE}") from None
    return SfdDetector(network, max_side=max_side)


def is_weights_file_error(error) -> bool:
    """True when loading weights failed because of the file itself (not a checkpoint, truncated, other
    weights), as opposed to the device, memory or a library: only then is replacing the file the advice."""
    import pickle
    import zipfile

    if isinstance(error, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(sign in text for sign in (
        "Error(s) in loading state_dict", "PytorchStreamReader", "size mismatch", "invalid load key",
        "Weights only load failed", "unexpected EOF", "storage has wrong byte size"))


def make_detector(name="dlib", weights=None, device="auto"):
    """The detector called name ("dlib", "sfd" or "auto"); weights: S3FD's file instead of the cached one.

    "auto" is sfd when its weights are there (given or cached), else dlib. device: the torch device for
    sfd ("auto": cuda when available, else cpu); dlib runs on the CPU.
    """
    if name not in DETECTORS:
        raise BadInput(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if weights and not Path(weights).is_file():
        raise BadInput(f"S3FD weights not found: {weights}; check the path (the file is {SFD_WEIGHTS_FILE}, "
                       f"from {SFD_WEIGHTS_URL})")
    sfd_weights = Path(weights) if weights else sfd_weights_path()
    if name == "auto":
        name = "sfd" if sfd_weights.is_file() else "dlib"
    if name == "sfd":
        return load_sfd(sfd_weights, device=device)
    return DlibDetector()


# --- landmarks for `fom animate --find-best-frame` -------------------------------------------------------

class LandmarkModel:
    """face-alignment's 2D-FAN: 68 facial landmarks of the most prominent face in an image."""

    def __init__(self, aligner, detector):
        self.aligner = aligner  # a face_alignment.FaceAlignment
        self.detector = detector  # an SfdDetector sharing the aligner's S3FD network

    def landmarks(self, image):
        """(68, 2) float32 array of x, y pixel positions, or None when the image has no face."""
        image = as_rgb_uint8(image)
        face = most_prominent(self.detector.detect(image))
        if face is None:
            return None
        # Our own box (found on the working copy, mapped back) spares face-alignment a second detection.
        points = self.aligner.get_landmarks_from_image(image, detected_faces=[np.array([*face.box, face.score])])
        if not points:
            return None
        return np.asarray(points[0][:, :2], dtype=np.float32)


def landmark_weights_paths():
    """The files the landmark model needs in the torch hub cache: 2D-FAN's weights and S3FD's."""
    from face_alignment.api import models_urls

    fan_file = os.path.basename(models_urls["2DFAN-4"])
    return [torch_hub_checkpoints_dir() / fan_file, sfd_weights_path()]


def landmark_model(device="cpu"):
    """A LandmarkModel, or None when face-alignment's weights are not in the local torch hub cache.

    Constructing face_alignment.FaceAlignment downloads missing weights, so the files are looked for
    first and nothing is constructed without them.
    """
    try:
        weight_files = landmark_weights_paths()
    except ImportError:
        return None
    if not all(path.is_file() for path in weight_files):
        return None

    import face_alignment

    fan_weights, sfd_weights = weight_files
    # flip_input as the original demo: landmarks averaged with those of the mirrored face, steadier.
    options = dict(device=device, flip_input=True, face_detector="sfd",
                   face_detector_kwargs={"path_to_detector": str(sfd_weights)})
    # face-alignment 1.5 compiles the network by default, which takes minutes on a CPU and is not paid
    # back in one run of --find-best-frame. (Older versions have no such option.)
    if "compile" in inspect.signature(face_alignment.FaceAlignment).parameters:
        options["compile"] = False
    try:
        aligner = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, **options)
    except Exception as error:
        if not is_weights_file_error(error):  # the device, memory, a library: the cached files may be fine
            raise BadInput(f"could not load face-alignment's landmark model on {device} "
                           f"({type(error).__name__}: {first_line(error)})") from None
        raise BadInput(f"could not load face-alignment's weights from {fan_weights.parent} "
                       f"({type(error).__name__}); delete {fan_weights.name} and {sfd_weights.name} "
                       f"there or replace them") from None
    return LandmarkModel(aligner, SfdDetector(aligner.face_detector))
