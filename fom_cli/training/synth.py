"""Render a procedural data set of moving cartoon faces, in the layout the original FOMM reads.

    fom synth --out data/faces --videos 64 --frames 32 --size 64 --seed 0

writes DIR/train/<video>/0000000.png ... and DIR/test/<video>/... (one folder of PNG frames per video, as
the original vox-png data). Each face turns, sways, zooms, blinks, looks around and talks. It is meant for
tests, smoke training and the small demo model: a data set anyone can rebuild offline, byte for byte.

Video names follow the original's id_sampling convention `id<identity>#<clip>` (e.g. `id00012#003`):
clips of one identity share a face and differ in motion, and no identity is in both train and test.

A face is two independent parts, so a later feature can render "identity A with identity B's motion":
an `Identity` (what the face looks like) and a `Motion` (head pose, blinks, mouth and gaze per frame).
"""

import colorsys
import functools
from dataclasses import dataclass

import numpy as np

# Every video draws its randomness from its own stream, keyed by (seed, purpose, identity, clip), so a
# video does not change when others are added and identity A's face does not depend on its motion.
PLAN_STREAM, IDENTITY_STREAM, MOTION_STREAM = 0, 1, 2

# Colours are RGB in [0, 1].
SKIN_TONES = [(0.98, 0.85, 0.74), (0.94, 0.76, 0.62), (0.85, 0.65, 0.49), (0.72, 0.52, 0.37),
              (0.55, 0.38, 0.26), (0.38, 0.26, 0.18)]
HAIR_COLOURS = [(0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.28, 0.14), (0.85, 0.70, 0.40),
                (0.70, 0.30, 0.12), (0.70, 0.70, 0.72)]
IRIS_COLOURS = [(0.30, 0.18, 0.08), (0.20, 0.40, 0.70), (0.25, 0.50, 0.30), (0.45, 0.40, 0.30)]
SCLERA = (0.97, 0.97, 0.95)
PUPIL = (0.04, 0.04, 0.05)
MOUTH_INSIDE = (0.35, 0.07, 0.10)
BLUSH = (0.95, 0.45, 0.45)


# ----------------------------------------------------------------------------------------------------
# What a face looks like, and how it moves

@dataclass(frozen=True)
class Identity:
    """The appearance of one cartoon face. Lengths are in image units: the frame spans [-1, 1] in x
    and y (y points down); features are placed relative to the head centre, before the head moves."""

    head_width: float          # the head is an ellipse with these semi-axes
    head_height: float
    skin: tuple
    has_hair: bool             # False: bald
    hair: tuple
    hair_width: float          # hair behind the head: an ellipse centred `hair_rise` above the head
    hair_height: float         # centre, cut off below y = hair_bottom (short hair high, long hair low)
    hair_rise: float
    hair_bottom: float
    fringe_y: float            # hair over the forehead: above the curve y = fringe_y + fringe_curve * x^2
    fringe_curve: float
    ear_y: float
    ear_width: float
    ear_height: float
    eye_x: float               # eyes sit at (+-eye_x, eye_y)
    eye_y: float
    eye_width: float
    eye_height: float
    iris_radius: float
    iris: tuple
    brow_y: float
    brow_width: float
    brow_thickness: float
    brow_tilt: float           # radians; positive lowers the outer ends
    nose_y: float
    nose_width: float
    nose_length: float
    mouth_y: float
    mouth_width: float
    lip_thickness: float
    mouth_open_height: float   # how far the lips part when Motion.mouth is 1
    smile: float               # the mouth follows y = mouth_y - smile * x^2 (positive: corners up)
    lips: tuple
    blush: float               # opacity of the cheeks' blush, 0 for none
    shirt: tuple               # shoulders below the head
    background_top: tuple      # a linear gradient between two colours, along background_angle
    background_bottom: tuple
    background_angle: float


@dataclass
class Motion:
    """Everything that changes from frame to frame; arrays with one row per frame."""

    translation: np.ndarray    # (T, 2) head centre (x, y) in image units
    rotation: np.ndarray       # (T,) radians; positive turns the head clockwise on screen
    scale: np.ndarray          # (T,) multiplies every length of the identity
    blink: np.ndarray          # (T,) 0: eyes open, 1: closed
    mouth: np.ndarray          # (T,) 0: closed, 1: wide open
    gaze: np.ndarray           # (T, 2) iris offset (x, y), as a fraction of how far it can move

    @property
    def num_frames(self):
        return len(self.rotation)


def _pick(rng, palette, jitter):
    """One colour of a palette, shifted a little so that no two faces share it exactly."""
    colour = np.array(palette[rng.integers(len(palette))]) + rng.uniform(-jitter, jitter, size=3)
    return tuple(float(c) for c in np.clip(colour, 0.0, 1.0))


def _random_colour(rng, saturation, value):
    """A colour of any hue, with saturation and value drawn from the given (low, high) ranges."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(float(c) for c in rgb)


def sample_identity(rng):
    """Draw the appearance of a random face from a numpy Generator."""
    head_height = rng.uniform(0.48, 0.62)
    head_width = head_height * rng.uniform(0.70, 0.92)   # aspect: from long faces to round ones

    # Mostly human skin tones; now and then a cartoon green, blue or purple.
    skin = _pick(rng, SKIN_TONES, 0.04) if rng.uniform() < 0.85 else _random_colour(rng, (0.25, 0.5), (0.6, 0.9))
    hair = _pick(rng, HAIR_COLOURS, 0.05) if rng.uniform() < 0.8 else _random_colour(rng, (0.5, 0.9), (0.4, 0.9))

    eye_y = -head_height * rng.uniform(0.05, 0.25)
    eye_height = head_height * rng.uniform(0.08, 0.13)
    mouth_y = head_height * rng.uniform(0.45, 0.62)
    background_top = _random_colour(rng, (0.15, 0.6), (0.45, 0.95))
    background_bottom = _random_colour(rng, (0.15, 0.6), (0.3, 0.9))
    return Identity(
        head_width=head_width, head_height=head_height, skin=skin,
        has_hair=bool(rng.uniform() < 0.85), hair=hair,
        hair_width=head_width * rng.uniform(1.04, 1.25), hair_height=head_height * rng.uniform(1.0, 1.2),
        hair_rise=head_height * rng.uniform(0.05, 0.2), hair_bottom=head_height * rng.uniform(-0.2, 1.1),
        fringe_y=-head_height * rng.uniform(0.55, 0.85), fringe_curve=rng.uniform(0.0, 1.5),
        ear_y=eye_y + head_height * rng.uniform(0.05, 0.2),
        ear_width=head_width * rng.uniform(0.12, 0.2), ear_height=head_height * rng.uniform(0.15, 0.25),
        eye_x=head_width * rng.uniform(0.32, 0.48), eye_y=eye_y,
        eye_width=head_width * rng.uniform(0.15, 0.24), eye_height=eye_height,
        iris_radius=eye_height * rng.uniform(0.6, 0.9), iris=_pick(rng, IRIS_COLOURS, 0.05),
        brow_y=eye_y - eye_height - head_height * rng.uniform(0.06, 0.14),
        brow_width=head_width * rng.uniform(0.16, 0.26), brow_thickness=head_height * rng.uniform(0.025, 0.05),
        brow_tilt=rng.uniform(-0.35, 0.35),
        nose_y=head_height * rng.uniform(0.1, 0.25), nose_width=head_width * rng.uniform(0.06, 0.12),
        nose_length=head_height * rng.uniform(0.08, 0.16),
        mouth_y=mouth_y, mouth_width=head_width * rng.uniform(0.25, 0.45),
        lip_thickness=head_height * rng.uniform(0.025, 0.05),
        mouth_open_height=head_height * rng.uniform(0.12, 0.2), smile=rng.uniform(-0.6, 1.6),
        lips=tuple(float(c) for c in np.clip(np.array(skin) * [0.85, 0.5, 0.5] + [0.1, 0.0, 0.0], 0, 1)),
        blush=float(rng.uniform(0.0, 0.45)), shirt=_random_colour(rng, (0.2, 0.8), (0.2, 0.9)),
        background_top=background_top, background_bottom=background_bottom,
        background_angle=rng.uniform(0.0, 2 * np.pi),
    )


def _wave(rng, num_frames, amplitude, shortest_period, longest_period, components=2):
    """A smooth random signal within +-amplitude: a few sinusoids with random periods (in frames)."""
    frames = np.arange(num_frames)
    weights = rng.uniform(0.5, 1.0, size=components)
    weights /= weights.sum()
    signal = np.zeros(num_frames)
    for weight in weights:
        period = rng.uniform(shortest_period, longest_period)
        signal += weight * np.sin(2 * np.pi * frames / period + rng.uniform(0, 2 * np.pi))
    return amplitude * signal


def _blinks(rng, num_frames):
    """Eyelid closure per frame: quick blinks (4-7 frames) every 15-60 frames, as people do at 25 fps."""
    frames = np.arange(num_frames)
    closure = np.zeros(num_frames)
    onset = rng.uniform(-6, 30)       # a clip may start in the middle of a blink
    while onset < num_frames:
        duration = rng.uniform(4, 7)
        phase = np.clip((frames - onset) / duration, 0, 1)
        # A sine bump, clipped so that the eyes stay fully shut for a moment at the middle.
        closure = np.maximum(closure, np.minimum(1.0, 1.4 * np.sin(np.pi * phase)))
        onset += duration + rng.uniform(15, 60)
    return closure


def sample_motion(rng, num_frames):
    """Draw a random performance of num_frames frames from a numpy Generator. Speeds are in frames,
    not in clip lengths, so a long clip is not a slowed-down short one."""
    centre = rng.uniform(-0.08, 0.08, size=2)
    translation = centre + np.stack([_wave(rng, num_frames, 0.10, 30, 90),
                                     _wave(rng, num_frames, 0.06, 30, 90)], axis=1)
    rotation = rng.uniform(-0.08, 0.08) + _wave(rng, num_frames, 0.22, 30, 100)
    scale = rng.uniform(0.9, 1.1) * (1.0 + _wave(rng, num_frames, 0.07, 40, 120))
    # Talking: the mouth opens and closes every few frames, and rests closed part of the time.
    mouth = np.clip(_wave(rng, num_frames, 0.9, 6, 20, components=3) + rng.uniform(-0.3, 0.2), 0.0, 1.0)
    gaze = np.stack([_wave(rng, num_frames, 0.8, 20, 60), _wave(rng, num_frames, 0.5, 20, 60)], axis=1)
    return Motion(translation=translation, rotation=rotation, scale=scale, blink=_blinks(rng, num_frames),
                  mouth=mouth, gaze=gaze)


# ----------------------------------------------------------------------------------------------------
# Drawing: every shape is a coverage map (how much of each pixel it covers, in [0, 1]), computed for all
# pixels at once and blended over the image. Coverage is anti-aliased analytically from a distance to the
# outline, so a shape that moves by a tenth of a pixel changes the image a little: the model can learn
# sub-pixel motion, and one pass at the final size is enough (no drawing at 4x and shrinking).

@functools.lru_cache(maxsize=8)
def _pixel_centres(size):
    """Image coordinates (x, y) of every pixel centre, each (size, size) float32, spanning [-1, 1]."""
    ticks = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - np.float32(1.0)
    x, y = np.meshgrid(ticks, ticks)
    x.flags.writeable = False    # shared between calls through the cache
    y.flags.writeable = False
    return x, y


def _ellipse(x, y, centre_x, centre_y, radius_x, radius_y, pixel, angle=0.0):
    """Coverage of an ellipse, optionally turned by `angle`, on the grid of coordinates (x, y).

    f = u^2 + v^2 - 1 (u, v: offsets in radii) is negative inside; f / |grad f| is close to the signed
    distance to the outline, and a pixel `pixel` wide is covered by 0.5 - distance / pixel of it. An
    ellipse thinner than a pixel (a closing eye) gets at most its thickness in pixels, or a line of
    full coverage would stay on screen after the eye has shut.
    """
    dx = x - np.float32(centre_x)
    dy = y - np.float32(centre_y)
    if angle:
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
    u = dx * np.float32(1.0 / radius_x)
    v = dy * np.float32(1.0 / radius_y)
    f = u * u + v * v - np.float32(1.0)
    gradient = np.sqrt((u * np.float32(1.0 / radius_x)) ** 2 + (v * np.float32(1.0 / radius_y)) ** 2)
    distance = f / (np.float32(2.0) * gradient + np.float32(1e-6))
    coverage = np.clip(np.float32(0.5) - distance * np.float32(1.0 / pixel), 0.0, 1.0)
    return coverage * np.float32(min(1.0, 2.0 * min(radius_x, radius_y) / pixel))


def _above(y, line_y, pixel):
    """Coverage of everything above (smaller y than) the line y = line_y; line_y may vary per pixel."""
    return np.clip(np.float32(0.5) - (y - line_y) * np.float32(1.0 / pixel), 0.0, 1.0)


def _paint(image, coverage, colour, opacity=1.0):
    """Blend a colour over the image (H, W, 3) in place, where the coverage map says."""
    alpha = coverage[..., None] if opacity == 1.0 else coverage[..., None] * np.float32(opacity)
    image += alpha * (np.asarray(colour, dtype=np.float32) - image)


def render_frame(identity, motion, t, size):
    """Draw frame t of `motion` performed by `identity`: a (size, size, 3) uint8 RGB image.

    Painted back to front: the background, the body (which follows the head's translation only), then
    the head and its features, drawn in the face's own frame."""
    pixel_x, pixel_y = _pixel_centres(size)
    image = _background(identity, pixel_x, pixel_y)
    head_x, head_y = float(motion.translation[t, 0]), float(motion.translation[t, 1])
    _draw_body(image, identity, pixel_x, pixel_y, head_x, head_y, size)

    # Move every pixel into the face's own frame (undo the head's translation, rotation and scale), so
    # that features are drawn at fixed places. A pixel there is 2 / size / scale wide.
    scale = float(motion.scale[t])
    cos, sin = np.float32(np.cos(motion.rotation[t]) / scale), np.float32(np.sin(motion.rotation[t]) / scale)
    dx = pixel_x - np.float32(head_x)
    dy = pixel_y - np.float32(head_y)
    x = cos * dx + sin * dy
    y = cos * dy - sin * dx
    pixel = 2.0 / size / scale

    _draw_head(image, identity, x, y, pixel)
    _draw_eyes(image, identity, motion, t, x, y, pixel)
    _draw_mouth_and_fringe(image, identity, float(motion.mouth[t]), x, y, pixel)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _background(face, pixel_x, pixel_y):
    """A gradient that stays put while the head moves over it: a new (H, W, 3) float32 image."""
    direction = np.cos(face.background_angle) * pixel_x + np.sin(face.background_angle) * pixel_y
    ramp = np.clip(0.5 + 0.5 * direction, 0.0, 1.0)[..., None]
    top = np.asarray(face.background_top, dtype=np.float32)
    return top + ramp * (np.asarray(face.background_bottom, dtype=np.float32) - top)


def _draw_body(image, face, pixel_x, pixel_y, head_x, head_y, size):
    """Shoulders and neck sit below the head and follow its translation, but neither turn nor zoom with it.
    They are drawn in image coordinates, where a pixel is 2 / size wide."""
    shoulders = _ellipse(pixel_x, pixel_y, 0.5 * head_x, 0.5 * head_y + face.head_height * 2.1,
                         face.head_width * 2.0, face.head_height * 1.1, 2.0 / size)
    _paint(image, shoulders, face.shirt)
    neck = _ellipse(pixel_x, pixel_y, head_x, head_y + face.head_height * 0.95, face.head_width * 0.42,
                    face.head_height * 0.6, 2.0 / size)
    _paint(image, neck, np.array(face.skin) * 0.8)


def _draw_head(image, face, x, y, pixel):
    """The hair behind the head, ears, head, cheeks and nose, in the face's frame (x, y)."""
    # The face is symmetric: drawing at |x| puts each paired feature (eyes, ears, brows) on both sides.
    mirrored_x = np.abs(x)
    if face.has_hair:   # the part of the hair behind the head
        hair_back = _ellipse(x, y, 0.0, -face.hair_rise, face.hair_width, face.hair_height, pixel)
        _paint(image, hair_back * _above(y, face.hair_bottom, pixel), face.hair)
    ears = _ellipse(mirrored_x, y, face.head_width * 0.97, face.ear_y, face.ear_width, face.ear_height, pixel)
    _paint(image, ears, np.array(face.skin) * 0.88)
    _paint(image, _ellipse(x, y, 0.0, 0.0, face.head_width, face.head_height, pixel), face.skin)
    if face.blush > 0:   # soft-edged: a wide "pixel" blurs the outline
        cheeks = _ellipse(mirrored_x, y, face.eye_x, face.nose_y + face.nose_length,
                          face.eye_width * 0.9, face.eye_width * 0.6, pixel * 8)
        _paint(image, cheeks, BLUSH, opacity=face.blush)
    _paint(image, _ellipse(x, y, 0.0, face.nose_y, face.nose_width, face.nose_length, pixel),
           np.array(face.skin) * 0.8)


def _draw_eyes(image, face, motion, t, x, y, pixel):
    """Eyes and brows. The white shrinks vertically as the lid closes, and clips the iris and pupil; a
    dark lash line fades in so that a shut eye is still a visible line."""
    mirrored_x = np.abs(x)
    blink = float(motion.blink[t])
    white = _ellipse(mirrored_x, y, face.eye_x, face.eye_y, face.eye_width,
                     face.eye_height * max(1.0 - blink, 0.02), pixel)
    _paint(image, white, SCLERA)
    # Both irises move the same way on screen, so mirror around the gaze offset instead of around 0.
    gaze_x = float(motion.gaze[t, 0]) * (face.eye_width - face.iris_radius)
    gaze_y = float(motion.gaze[t, 1]) * face.eye_height * 0.3
    iris_x = np.abs(x - np.float32(gaze_x))
    iris = _ellipse(iris_x, y, face.eye_x, face.eye_y + gaze_y, face.iris_radius, face.iris_radius, pixel)
    _paint(image, iris * white, face.iris)
    pupil_radius = face.iris_radius * 0.5
    pupil = _ellipse(iris_x, y, face.eye_x, face.eye_y + gaze_y, pupil_radius, pupil_radius, pixel)
    _paint(image, pupil * white, PUPIL)
    if blink > 0:
        lashes = _ellipse(mirrored_x, y, face.eye_x, face.eye_y, face.eye_width * 1.05,
                          face.head_height * 0.02, pixel)
        _paint(image, lashes, PUPIL, opacity=blink)

    brow_colour = np.array(face.hair) * 0.7 if face.has_hair else np.array(face.skin) * 0.45
    brows = _ellipse(mirrored_x, y, face.eye_x, face.brow_y, face.brow_width, face.brow_thickness, pixel,
                     angle=face.brow_tilt)
    _paint(image, brows, brow_colour)


def _draw_mouth_and_fringe(image, face, mouth, x, y, pixel):
    """Mouth: lips, and the dark inside that appears as they part (mouth: 0 shut to 1 open). Bending y by
    smile * x^2 curves both. Then the fringe, over everything above it."""
    opening = mouth * face.mouth_open_height
    curved_y = y + np.float32(face.smile) * x * x
    lips = _ellipse(x, curved_y, 0.0, face.mouth_y, face.mouth_width, face.lip_thickness + opening, pixel)
    _paint(image, lips, face.lips)
    if opening > 0:
        inside = _ellipse(x, curved_y, 0.0, face.mouth_y, face.mouth_width * 0.85, opening, pixel)
        _paint(image, inside, MOUTH_INSIDE)

    if face.has_hair:   # the fringe: the top of the head, above a curve that bends down at the sides
        top_of_head = _ellipse(x, y, 0.0, 0.0, face.head_width * 1.03, face.head_height * 1.03, pixel)
        fringe_line = np.float32(face.fringe_y) + np.float32(face.fringe_curve) * x * x
        _paint(image, top_of_head * _above(y, fringe_line, pixel), face.hair)


def render_video(identity, motion, size):
    """All frames of `motion` performed by `identity`: (T, size, size, 3) uint8."""
    return np.stack([render_frame(identity, motion, t, size) for t in range(motion.num_frames)])
