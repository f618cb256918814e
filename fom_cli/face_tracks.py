"""Faces followed through a video: per-frame detections linked into tubes, and the crop clip of a tube
(one fixed window over the tube, or a window that follows the face, smoothed over time)."""

from dataclasses import dataclass

import numpy as np

from fom_cli.compositing import square_window
from fom_cli.faces import iou, union_box

# A detector misses a face now and then (a blink, a turn, motion blur). A tube survives this long without
# a detection, its box carried over, so one miss does not cut a talking head into two short clips.
MAX_MISSING_SECONDS = 0.5

# Smoothed windows follow the face's centre and size through a Gaussian average over time, this wide
# (standard deviation), so detector jitter does not shake the clip.
SMOOTH_SECONDS = 0.2


@dataclass
class Tube:
    """One face followed over time: the frames it was detected in and its box in each of them."""

    frames: list
    boxes: list

    @property
    def first_frame(self):
        return self.frames[0]

    def last_frame(self, detect_every, num_frames):
        """The last frame the tube covers: its last detection's box is carried to the next detection."""
        return min(self.frames[-1] + detect_every - 1, num_frames - 1)

    def leaves_first_box(self, iou_threshold):
        """True when the face moves away from where it started (a box overlapping the first one by
        iou_threshold or less): a fixed window over all its boxes would no longer frame it."""
        return any(iou(box, self.boxes[0]) <= iou_threshold for box in self.boxes[1:])

    def boxes_per_frame(self, last_frame):
        """(frames, 4) boxes for every frame from the first to last_frame: interpolated between detections
        (with --detect-every, or where a detection was missed), the last one carried to the end."""
        frame_indices = np.arange(self.first_frame, last_frame + 1)
        known = np.asarray(self.boxes, dtype=np.float64)
        return np.stack([np.interp(frame_indices, self.frames, known[:, k]) for k in range(4)], axis=1)


def link_tubes(detections, iou_threshold, max_gap, follow_face):
    """Link per-frame detections into tubes, one per face that stays in view.

    detections: (frame index, faces) in frame order. A face joins the tube it overlaps most (IoU above
    iou_threshold), each tube taking at most one face per frame; a face joining none starts a new tube. A
    tube ends when no face has joined it for more than max_gap frames.

    The tube's box a new face is compared with: its first box (follow_face False: as the original, since a
    fixed window can only hold a face that stays near where it started), or its latest box (follow_face
    True: the window moves with the face, so the face may travel anywhere).
    """
    live, ended = [], []
    for frame_index, frame_faces in detections:
        still_live = []
        for tube in live:
            (ended if frame_index - tube.frames[-1] > max_gap else still_live).append(tube)
        live = still_live

        # Best-overlapping pairs first, so two faces near one tube do not fight over it in list order.
        pairs = []
        for tube_number, tube in enumerate(live):
            tube_box = tube.boxes[-1] if follow_face else tube.boxes[0]
            for face_number, face in enumerate(frame_faces):
                overlap = iou(tube_box, face.box)
                if overlap > iou_threshold:
                    pairs.append((overlap, tube_number, face_number))
        taken_tubes, taken_faces = set(), set()
        for _overlap, tube_number, face_number in sorted(pairs, reverse=True):
            if tube_number in taken_tubes or face_number in taken_faces:
                continue
            taken_tubes.add(tube_number)
            taken_faces.add(face_number)
            live[tube_number].frames.append(frame_index)
            live[tube_number].boxes.append(frame_faces[face_number].box)
        for face_number, face in enumerate(frame_faces):
            if face_number not in taken_faces:
                live.append(Tube(frames=[frame_index], boxes=[face.box]))
    return sorted(ended + live, key=lambda tube: (tube.first_frame, tube.boxes[0][0]))


def gaussian_smooth(values, sigma):
    """values (frames, ...) averaged over time with a Gaussian of sigma frames; ends repeat their value."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(3 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    padded = np.pad(values, [(radius, radius)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    return sum(weight * padded[k:k + len(values)] for k, weight in enumerate(weights))


@dataclass
class Clip:
    """One tube to write: its frames, the crop window of each, and the face boxes it was made from."""

    number: int
    first_frame: int
    last_frame: int
    windows: list  # one Window per frame, first to last
    face_box: tuple  # union of the face's boxes over the clip

    def window_at(self, frame_index):
        return self.windows[frame_index - self.first_frame]

    @property
    def bounds(self):
        """The union of the clip's windows: its fixed window, or the area a moving one swept."""
        return tuple(int(value) for value in union_box([window.box for window in self.windows]))


def clip_for_tube(number, tube, last_frame, frame_size, increase, smooth, fps):
    """The clip of a tube: one window over the union of its boxes, or (smooth) a window following it."""
    frame_height, frame_width = frame_size
    boxes = tube.boxes_per_frame(last_frame)
    face_box = union_box(boxes)
    if not smooth:
        windows = [square_window(face_box, increase, frame_height, frame_width)] * len(boxes)
    else:
        # Smooth centre and size rather than the four sides: a face's size changes slower than its place,
        # and a window built from them stays square whatever the smoothing does.
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        track = gaussian_smooth(np.column_stack([centres, sizes]), SMOOTH_SECONDS * fps)
        windows = [square_window((x - size / 2, y - size / 2, x + size / 2, y + size / 2), increase,
                                 frame_height, frame_width)
                   for x, y, size in track]
    return Clip(number=number, first_frame=tube.first_frame, last_frame=last_frame, windows=windows,
                face_box=face_box)
