"""Faces in a larger photo, for the engine's --crop-source, --all-faces and --paste-back: where the faces
are, the squares the model sees, and every animated square put back into the photo.

FOMM only works on inputs framed like its training data, a face filling a square. The engine (engine.py)
cuts such squares out of raw inputs with these helpers and puts the results back:

- the source photo (bounded by --max-size) is searched for faces once; each face's square window
  (compositing.square_window, with `fom crop`'s margin --increase) is cut out and gets its own animator,
  whose source side (keypoints, encoder features) is computed once;
- with --paste-back, every animated square is resized back into its window and blended into the photo by
  a feathered mask: the output has the photo's size and, outside the windows, the photo's exact pixels.

(The driving video's face is followed by face_tracks.DrivingFollower.)
"""

import time
from dataclasses import dataclass, field

import numpy as np

from fom_cli.compositing import cut, feathered_mask, paste_back, square_window
from fom_cli.drawing import side_by_side
from fom_cli.errors import BadInput
from fom_cli.media.images import resize_uint8, to_uint8

# The longer side of a pasted-back output unless --max-size says otherwise: 1080p's, enough for any
# screen, and it keeps a 50-megapixel phone photo from making every frame a 150 MB copy.
DEFAULT_MAX_SIZE = 1920

# Photos are single detections, so the detector looks at a larger copy than for video frames (as
# `fom crop` does for photos): this many times its usual limit on the working copy's longer side.
PHOTO_DETAIL = 2


def bounded_photo(image, max_size):
    """The photo as uint8, shrunk so its longer side is at most max_size (never enlarged)."""
    height, width = image.shape[:2]
    scale = max_size / max(height, width)
    if scale < 1:
        return resize_uint8(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    return to_uint8(image)


@dataclass
class SourceFace:
    """One face of the source photo: its window in the photo (None: the whole fitted frame), the square the
    model sees, its animator, and the feathered mask it is pasted back with."""

    window: object
    square: np.ndarray  # float32 model-size square
    animator: object = None
    mask: np.ndarray = field(default=None, repr=False)

    def prepare_paste(self, paste):
        if paste:
            self.mask = feathered_mask(self.window.side)


def find_source_faces(photo, detector, all_faces, increase, size, source_name):
    """The faces to animate, most prominent first: all of them with all_faces, else the most prominent."""
    found = detector.detect(photo, max_side=PHOTO_DETAIL * detector.max_side)
    if not found:
        raise BadInput(f"no face found in the source image {source_name}; animate it without --crop-source/"
                       f"--paste-back/--face, or crop it yourself")
    chosen = found if all_faces else found[:1]
    height, width = photo.shape[:2]
    faces = []
    for face in chosen:
        window = square_window(face.box, increase, height, width)
        faces.append(SourceFace(window=window, square=cut(photo, window, size).astype(np.float32) / 255))
    return faces


class Timer:
    """Seconds spent inside `with timer:` blocks, summed (`fom bench animate --paste-back` reports them)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start


def output_frame(faces, predictions, i, driving, photo, show_panels):
    """Frame i of the output: every face's prediction pasted back into the photo (when one is given), or
    the first face's prediction alone; with show_panels (--side-by-side) the model's view below it."""
    frame = None
    if photo is not None:
        frame = photo.copy()
        for face, prediction in zip(faces, predictions):
            paste_back(photo, prediction[i], face.window, face.mask, out=frame)
    if show_panels:
        return panels(faces, driving, predictions, i, frame)
    return frame if frame is not None else predictions[0][i]


def panels(faces, driving, predictions, i, pasted):
    """--side-by-side: a row per face of what the model saw and made (source square | driving square |
    result, keypoints drawn); with --paste-back the rows sit under the pasted frame, scaled to its width."""
    rows = []
    for face, prediction in zip(faces, predictions):
        keypoints = {"source": face.animator.last_keypoints["source"],
                     "driving": face.animator.last_keypoints["driving"][i],
                     "moved": face.animator.last_keypoints["moved"][i]}
        rows.append(to_uint8(side_by_side(face.square, driving, prediction[i], keypoints)))
    strip = np.concatenate(rows, axis=0)
    if pasted is None:
        return strip
    width = pasted.shape[1]
    strip = resize_uint8(strip, (max(1, round(strip.shape[0] * width / strip.shape[1])), width))
    return np.concatenate([pasted, strip], axis=0)
