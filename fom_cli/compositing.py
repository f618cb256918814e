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


def square_window(box, increase, frame_height, frame_width):
    """The crop window for a face box, as the original crop-video.py draws it, kept inside the frame.

    The box grows by `increase` of its size on each side and becomes a square around its centre (side:
    (1 + 2 * increase) times the box's longer side). A square reaching past the frame's edge slides back
    in rather than shrinking, so the face keeps its margin and the crop its aspect ratio; only a square
    larger than the frame itself reaches past it (covering the whole frame, black beyond).
    """
    left, top, right, bottom = box
    side = max(1, round((1 + 2 * increase) * max(right - left, bottom - top)))

    def place(centre, frame_extent):
        start = round(centre - side / 2)
        # For a square that fits, starts from 0 to extent - side keep it inside; for one that does not,
        # starts from extent - side to 0 keep the frame inside it. Either way: clamp to that range.
        lowest, highest = sorted((0, frame_extent - side))
        return min(max(start, lowest), highest)

    return Window(left=place((left + right) / 2, frame_width), top=place((top + bottom) / 2, frame_height), side=side)


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
# sits in the middle of the window (square_window's margin), where the mask is 1.
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
