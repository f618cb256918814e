"""Crop windows: the square of a frame the model sees around a face, and cutting it out.

fom crop writes these squares as files; animation with face cropping feeds them to the model.
"""

from dataclasses import dataclass

import numpy as np

from fom_cli.media.images import resize, resize_uint8, to_uint8


@dataclass(frozen=True)
class Window:
    """A square crop window in frame pixels; it may reach past the frame, where the crop is black."""

    left: int
    top: int
    side: int

    @property
    def box(self):
        return (self.left, self.top, self.left + self.side, self.top + self.side)


# --- the face window: the one square cut around a face -------------------------------------------------
#
# `fom crop` (photos, and videos with a fixed or a following window) and `fom animate --face` (the
# photo's faces and the driving video's) all cut faces by face_window: a face is framed the same way
# wherever it is cut.
#
# The released vox checkpoints were trained on VoxCeleb crops: the whole head inside the square, hair
# included, with a little room above it; the face (forehead to chin) filling about the middle half of the
# side, its centre a little below the square's centre; the neck and collar below the chin. A detector's
# box (S3FD's, or dlib's grown to that size by faces.DLIB_TO_WIDER_FACE_SCALE) spans about forehead to
# chin, and the rest of the head is found from it. Measured by hand on matplotlib's grace_hopper.jpg and
# skimage's astronaut (HEAD_POINTS in tests/test_crop.py): the top of the head (Grace Hopper's cap, the
# astronaut's hair) lies 0.94 and 0.99 box sides above the box's centre, the chin 0.44 and 0.51 below.
# So the head's square is HEAD_SCALE box sides, centred HEAD_RISE box sides above the box's centre: from
# the top of the head to below the chin. --increase adds its margin around that square (0.1 of its side
# on each side, the margin the original crop-video.py put around its boxes). On the two photos the head's
# top then lies 5 and 6% of the window's side below its top edge, the chin at 77 and 85%, and the box
# spans from about 30% to 82% of the side: the face a little below the middle, the neck below it.
#
# The previous rule, the box plus --increase (1.2 box sides, centred on the box), cut the top of the head
# off both photos (Grace Hopper's cap by 75 px, the astronaut's hair by 42 px).
HEAD_SCALE = 1.6
HEAD_RISE = 0.15
# --increase's default, in `fom crop` and (fom_cli/options.py) `fom animate`: one window for both.
INCREASE = 0.1


def face_square(box, increase=INCREASE):
    """(centre x, centre y, side) of the face window of a detector's box, before it is fitted into a frame.

    Only the box's centre and its longer side count, so a box and the square box with its centre and
    longer side give the same window (the smoothed followers build such square boxes).
    """
    left, top, right, bottom = box
    size = max(right - left, bottom - top)
    side = (1 + 2 * increase) * HEAD_SCALE * size
    return (left + right) / 2, (top + bottom) / 2 - HEAD_RISE * size, side


def face_window(box, frame_height, frame_width, increase=INCREASE):
    """The window cut around a face: its head with a margin, as the training data frames it (see above)."""
    return fitted_window(*face_square(box, increase), frame_height, frame_width)


def face_window_over(boxes, frame_height, frame_width, increase=INCREASE):
    """One fixed window for a face seen in several boxes (a clip's frames): the smallest square holding
    the face window of every box, so the head keeps its margin wherever it goes. (Growing the union of
    the boxes instead would multiply the face's movement by the window's scale as well.)"""
    squares = np.array([face_square(box, increase) for box in boxes], dtype=np.float64)
    centre_x, centre_y, side = squares[:, 0], squares[:, 1], squares[:, 2]
    left, right = (centre_x - side / 2).min(), (centre_x + side / 2).max()
    top, bottom = (centre_y - side / 2).min(), (centre_y + side / 2).max()
    return fitted_window((left + right) / 2, (top + bottom) / 2, max(right - left, bottom - top),
                         frame_height, frame_width)


def fitted_window(centre_x, centre_y, side, frame_height, frame_width):
    """The square of `side` pixels around a centre, in whole pixels, slid inside the frame.

    A square reaching past the frame's edge slides back in rather than shrinking, so the face keeps its
    margin and the crop its aspect ratio; only a square larger than the frame itself reaches past it
    (covering the whole frame, black beyond).
    """
    side = max(1, round(side))

    def place(centre, frame_extent):
        start = round(centre - side / 2)
        # For a square that fits, starts from 0 to extent - side keep it inside; for one that does not,
        # starts from extent - side to 0 keep the frame inside it. Either way: clamp to that range.
        lowest, highest = sorted((0, frame_extent - side))
        return min(max(start, lowest), highest)

    return Window(left=place(centre_x, frame_width), top=place(centre_y, frame_height), side=side)


def square_window(box, increase, frame_height, frame_width):
    """face_window with the arguments in their earlier order (fom_cli/face_animation.py calls it so)."""
    return face_window(box, frame_height, frame_width, increase)


def cut(frame, window, size):
    """The window's square of the frame (black beyond the frame), resized to size x size."""
    frame_height, frame_width = frame.shape[:2]
    left, top, right, bottom = window.box
    visible = frame[max(top, 0):min(bottom, frame_height), max(left, 0):min(right, frame_width)]
    if visible.shape[:2] != (window.side, window.side):
        square = np.zeros((window.side, window.side, 3), dtype=frame.dtype)
        square[max(-top, 0):max(-top, 0) + visible.shape[0], max(-left, 0):max(-left, 0) + visible.shape[1]] = visible
        visible = square
    return resize_uint8(visible, (size, size))


# --- paste-back: animated squares back into the photo -------------------------------------------------

# The outer share of a window's side over which a pasted face fades into the photo. FOMM's frames move
# the background near the crop's border a little too, and a wide fade hides that seam; the face itself
# sits in the middle of the window (face_window's margin), where the mask is 1.
FEATHER = 0.15


def feathered_mask(side, feather=FEATHER):
    """(side, side) float32 blending weights: 1 in the middle, falling smoothly to 0 at the border.

    Each axis ramps with a smoothstep over the outer `feather` of the side, measured from the pixel
    centres, and the mask is the product of the two ramps (so the corners round off). The outermost ring
    of pixels is exactly 0: a pasted window shows no hard edge, however its content differs from the photo.
    """
    ramp_width = max(1.0, feather * side)
    # Distance of each pixel centre from the nearer edge, 0 for the outermost pixels.
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float64)
    t = np.clip(distance / ramp_width, 0.0, 1.0)
    ramp = t * t * (3 - 2 * t)  # smoothstep: flat at both ends, so no kink where the fade begins
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(photo, face, window, mask, out=None):
    """The photo with `face` (an animated square, any size) resized into `window` and blended by `mask`.

    photo: HxWx3 uint8; mask: (window.side, window.side) weights from feathered_mask. Where the window
    reaches past the photo only its visible part is pasted. Pixels outside the window are the photo's,
    exactly (they are copied, never recomputed). `out`: an array to write the result into (the photo
    itself to paste several faces one after the other); default a new copy.
    """
    if out is None:
        out = photo.copy()
    height, width = photo.shape[:2]
    left, top, right, bottom = window.box
    visible = (slice(max(top, 0), min(bottom, height)), slice(max(left, 0), min(right, width)))
    inside = (slice(visible[0].start - top, visible[0].stop - top),
              slice(visible[1].start - left, visible[1].stop - left))
    if visible[0].start >= visible[0].stop or visible[1].start >= visible[1].stop:
        return out  # the window lies wholly outside the photo
    square = resize(face, (window.side, window.side))[inside]
    weight = mask[inside][..., None]
    below = out[visible].astype(np.float32) / 255
    out[visible] = to_uint8(below + weight * (square - below))
    return out
