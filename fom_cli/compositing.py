"""Crop windows: the square of a frame the model sees around a face, and cutting it out.

fom crop writes these squares as files; animation with face cropping feeds them to the model.
"""

from dataclasses import dataclass

import numpy as np

from fom_cli.media.images import resize, to_uint8


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
    return to_uint8(resize(visible, (size, size)))
