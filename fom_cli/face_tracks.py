"""Faces followed through a video: per-frame detections linked into tubes, and the crop clip of a tube
(one fixed window over the tube, or a window that follows the face, smoothed over time)."""

import dataclasses
import itertools
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from fom_cli.compositing import cut, face_window, face_window_over
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
    if sigma <= 0 or len(values) < 2:  # nothing to average (and scipy would divide by a zero sigma)
        return values
    # The Gaussian reaches 3 sigma on each side (truncate), and the ends repeat their value ("nearest").
    return gaussian_filter1d(np.asarray(values, dtype=np.float64), sigma, axis=0, mode="nearest", truncate=3.0)


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
    """The clip of a tube: one window holding the face in every frame, or (smooth) a window following it.

    Either way every frame's window comes from compositing's face rule (face_window), the same one
    `fom crop` cuts photos with and `fom animate --face` cuts photos and driving videos with.
    """
    frame_height, frame_width = frame_size
    boxes = tube.boxes_per_frame(last_frame)
    if not smooth:
        windows = [face_window_over(boxes, frame_height, frame_width, increase)] * len(boxes)
    else:
        # Smooth centre and size rather than the four sides: a face's size changes slower than its place,
        # and face_window needs no more (it squares the box by its longer side anyway).
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        track = gaussian_smooth(np.column_stack([centres, sizes]), SMOOTH_SECONDS * fps)
        windows = [face_window(square_box(x, y, size), frame_height, frame_width, increase) for x, y, size in track]
    return Clip(number=number, first_frame=tube.first_frame, last_frame=last_frame, windows=windows,
                face_box=union_box(boxes))


def square_box(centre_x, centre_y, size):
    """The (left, top, right, bottom) box of side `size` around a centre: a smoothed track's box."""
    return (centre_x - size / 2, centre_y - size / 2, centre_x + size / 2, centre_y + size / 2)


# --- the driving face of `fom animate --crop-driving`, followed as a stream -------------------------------

# The follower detects this often (per second of video) and interpolates between: the window is smoothed
# over SMOOTH_SECONDS anyway, so more detections would cost time and change nothing visible.
DETECTIONS_PER_SECOND = 10
# Live (a camera), a frame cannot wait for later ones: the window follows the face through an exponential
# moving average with this time constant instead, and between detections it keeps the last box.
LIVE_SMOOTH_SECONDS = 0.1

# The detector's working copy of a driving frame is at most this long: a phone video's face is large, and
# detection must stay a small share of the animation's time. (Small videos are still enlarged for dlib.)
DRIVING_MAX_SIDE = 640

# Between two detections a face moves less than its size, so the follower first looks for it only in a
# region around where it was (NEAR_REGION times its size), shrunk so that the face spans NEAR_FACE_SIDE
# pixels: big enough for dlib's 80 px window, and a fraction of the cost of searching the whole frame
# (a 1080p phone video: about 20 ms instead of 190). Only a miss there searches the whole frame.
NEAR_REGION = 2.5
NEAR_FACE_SIDE = 120

# The scale of that region is kept from detection to detection, and set again only when the face's size
# has changed by more than this factor. dlib's boxes come in steps of about 1.2 times (its image pyramid):
# with a scale set anew from each box, each box came out a step larger or smaller than the one before,
# so the window of a face holding still kept growing and shrinking (the astronaut photo held still: 17
# different windows in two seconds, their sides up to 7% apart). At one scale a still face keeps its box.
NEAR_RESCALE = 1.5


class DrivingFollower:
    """The face of a driving video followed through it as a stream, and its face window (compositing's
    face_window, as `fom crop` cuts) cut out of each frame.

    The face is detected every few frames (DETECTIONS_PER_SECOND): near where it was (NEAR_REGION), and
    on a downscaled copy of the whole frame only where it is not found there. Between detections its box
    is interpolated, and where the detector misses it the last box is carried. The window's centre
    and size are smoothed with the same Gaussian as `fom crop --smooth` (SMOOTH_SECONDS), computed as a
    stream: each frame waits only for the 3 sigma of frames after it, so the look-ahead, and memory, is
    bounded (about 0.6 s of frames) whatever the video's length. The face followed is the most prominent
    one at the start; it is kept by nearness from detection to detection, and given up for the most
    prominent face only after it has been missing for MAX_MISSING_SECONDS.

    `causal` (live input): no look-ahead at all. Between detections the last box is kept rather than
    interpolated toward the next one, and the track is smoothed by an exponential moving average
    (LIVE_SMOOTH_SECONDS) over the frames before, so each frame is cut as soon as it arrives.
    """

    def __init__(self, reader, detector, increase, size, detect_every=None, causal=False):
        self.reader = reader
        self.causal = causal
        self.detector = detector
        self.increase = increase
        self.size = size
        fps = reader.fps
        self.detect_every = detect_every or max(1, round(fps / DETECTIONS_PER_SECOND))
        self.max_missing = max(self.detect_every, round(MAX_MISSING_SECONDS * fps))
        sigma = SMOOTH_SECONDS * fps
        # gaussian_smooth's kernel written out: the stream cuts it at the ends (see smoothed), scipy's filter cannot.
        self.radius = int(3 * sigma + 0.5)
        offsets = np.arange(-self.radius, self.radius + 1)
        weights = np.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else (offsets == 0).astype(float)
        self.weights = weights / weights.sum()
        self.first_box = None
        self.near_scale_side = None  # the face size the near search's scale is set for (NEAR_RESCALE)
        self.seconds = 0.0  # time spent detecting, smoothing and cutting (fom bench reads it)

    def detect(self, frame):
        return self.detector.detect(frame, max_side=DRIVING_MAX_SIDE)

    def detect_near(self, frame, box):
        """Faces found in the region around box (see NEAR_REGION), boxes in the frame's pixels."""
        height, width = frame.shape[:2]
        side = max(box[2] - box[0], box[3] - box[1])
        centre_x, centre_y, reach = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, NEAR_REGION * side / 2
        left, top = max(0, int(centre_x - reach)), max(0, int(centre_y - reach))
        right, bottom = min(width, int(centre_x + reach) + 1), min(height, int(centre_y + reach) + 1)
        if right - left < 2 or bottom - top < 2:
            return []
        region = frame[top:bottom, left:right]
        if self.near_scale_side is None or not 1 / NEAR_RESCALE < side / self.near_scale_side < NEAR_RESCALE:
            self.near_scale_side = side
        found = self.detector.detect(region, max_side=max(region.shape[:2]) * NEAR_FACE_SIDE / self.near_scale_side)
        return [dataclasses.replace(face, box=(face.box[0] + left, face.box[1] + top, face.box[2] + left,
                                               face.box[3] + top)) for face in found]

    def find_face(self, start=0, stop=None):
        """Find the face to follow: the most prominent in the first detection that sees one. BadInput when
        no frame from start to stop shows a face (so nothing is animated or written)."""
        from fom_cli.errors import BadInput

        for offset, frame in enumerate(self.reader.frames(start, stop)):
            if offset % self.detect_every == 0:
                started = time.perf_counter()
                found = self.detect(frame)
                self.seconds += time.perf_counter() - started
                if found:
                    self.first_box = found[0].box
                    return self.first_box
        raise BadInput(f"no face found in the driving video {self.reader.path}; animate it without "
                       f"--crop-driving/--face, or give a video showing a face")

    def crops(self, start=0, stop=None):
        """(square, window) for every frame from start to stop: the model-size float32 square of the
        followed face, and its Window in the frame."""
        if self.first_box is None:
            self.find_face(start, stop)
        for frame, (x, y, side) in self.smoothed(self.boxes(self.reader.frames(start, stop))):
            started = time.perf_counter()
            height, width = frame.shape[:2]
            window = face_window(square_box(x, y, side), height, width, self.increase)
            square = cut(frame, window, self.size).astype(np.float32) / 255
            self.seconds += time.perf_counter() - started
            yield square, window

    def boxes(self, frames):
        """(frame, box) for every frame: detected every detect_every frames, interpolated between, the last
        box carried over misses and past the last detection."""
        box, missing = self.first_box, 0
        waiting = []  # frames since the latest detection, waiting for the next one to interpolate their boxes
        for index, frame in enumerate(frames):
            if index % self.detect_every:
                if self.causal:
                    yield frame, box
                else:
                    waiting.append(frame)
                continue
            started = time.perf_counter()
            found = self.follow(self.detect_near(frame, box), box, missing)
            if found is None:
                found = self.follow(self.detect(frame), box, missing)
            self.seconds += time.perf_counter() - started
            missing = 0 if found is not None else missing + self.detect_every
            new_box = found if found is not None else box
            for k, between in enumerate(waiting, start=1):
                t = k / (len(waiting) + 1)
                yield between, tuple((1 - t) * a + t * b for a, b in zip(box, new_box))
            waiting = []
            box = new_box
            yield frame, box
        for between in waiting:
            yield between, box

    def follow(self, found, box, missing):
        """The box of the followed face among the faces found, or None for a miss."""
        if not found:
            return None
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        reach = max(box[2] - box[0], box[3] - box[1])  # no face moves farther than its size between detections

        def distance(face):
            return np.hypot((face.box[0] + face.box[2]) / 2 - centre[0], (face.box[1] + face.box[3]) / 2 - centre[1])

        nearest = min(found, key=distance)
        if distance(nearest) <= reach:
            return nearest.box
        if missing >= self.max_missing:  # the followed face is gone: take the most prominent one there is
            return found[0].box
        return None

    def smoothed(self, boxed):
        """(frame, (centre x, centre y, size)) with the track smoothed by the Gaussian of gaussian_smooth,
        holding only the `radius` frames after each one.

        Near the ends, where fewer than `radius` frames lie on one side, the Gaussian is cut to the same
        reach on both sides (none at the very first and last frame) rather than repeating the end value as
        gaussian_smooth does: a face moving at the start or end is then followed where it is, not held back
        toward where it was.
        """
        if self.causal:
            yield from self.averaged(boxed)
            return
        radius = self.radius
        past = deque(maxlen=radius)  # the track of the latest frames handed out
        ahead = deque()  # (frame, track) not handed out yet: the current one and up to radius after it

        def hand_out():
            started = time.perf_counter()
            frame, value = ahead.popleft()
            reach = min(radius, len(past), len(ahead))
            after = [track for _frame, track in itertools.islice(ahead, reach)]
            before = list(past)[len(past) - reach:]
            weights = self.weights[radius - reach:radius + reach + 1]
            smooth = np.tensordot(weights / weights.sum(), np.array(before + [value] + after), axes=1)
            past.append(value)
            self.seconds += time.perf_counter() - started
            return frame, tuple(smooth)

        for frame, box in boxed:
            # Centre and size rather than sides, as clip_for_tube: the window stays square.
            ahead.append((frame, np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2,
                                           max(box[2] - box[0], box[3] - box[1])])))
            if len(ahead) > radius:
                yield hand_out()
        while ahead:
            yield hand_out()

    def averaged(self, boxed):
        """(frame, (centre x, centre y, size)) smoothed causally: an exponential moving average."""
        weight = 1 - np.exp(-1 / max(LIVE_SMOOTH_SECONDS * self.reader.fps, 1e-6))
        state = None
        for frame, box in boxed:
            value = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])])
            state = value if state is None else state + weight * (value - state)
            yield frame, tuple(state)
