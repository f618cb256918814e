"""Augmentation, as the original's augmentation_params configure it (its augmentation.py), re-written for
reproducible randomness. Every function takes a clip (T, H, W, 3) float32 in [0, 1] and draws its
parameters once from the generator it is given, so all frames of a sample (source and driving) change the
same way.
"""

import numpy as np

from fom_cli.errors import BadConfig
from fom_cli.media.images import resize

# What each augmentation of the original's augmentation_params accepts.
AUGMENTATION_KEYS = {
    "flip_param": ("horizontal_flip", "time_flip"),
    "rotation_param": ("degrees",),
    "resize_param": ("ratio", "interpolation"),
    "crop_param": ("size",),
    "jitter_param": ("brightness", "contrast", "saturation", "hue"),
}


def random_flip(clip, rng, horizontal_flip=False, time_flip=False):
    """Each enabled flip happens with probability 1/2: mirror left-right, and/or play backwards."""
    if time_flip and rng.uniform() < 0.5:
        clip = clip[::-1]
    if horizontal_flip and rng.uniform() < 0.5:
        clip = clip[:, :, ::-1]
    return clip


def random_rotation(clip, rng, degrees):
    """Rotate by an angle uniform in [-degrees, degrees] (or [low, high]); corners repeat the edge."""
    from skimage.transform import rotate

    low, high = (-degrees, degrees) if np.isscalar(degrees) else degrees
    angle = rng.uniform(low, high)
    return np.stack([rotate(frame, angle, mode="edge", preserve_range=True).astype(np.float32) for frame in clip])


def random_resize(clip, rng, ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
    """Zoom by a factor uniform in ratio; the frame size changes (crop_param brings it back)."""
    factor = rng.uniform(ratio[0], ratio[1])
    height, width = clip.shape[1:3]
    size = (max(1, int(height * factor)), max(1, int(width * factor)))
    return np.stack([resize(frame, size, nearest=interpolation == "nearest") for frame in clip])


def random_crop(clip, rng, size):
    """Cut a window of size (h, w) at a random place, after padding (repeating edges) when smaller."""
    height, width = (size, size) if np.isscalar(size) else size
    pad_y, pad_x = max(0, height - clip.shape[1]), max(0, width - clip.shape[2])
    if pad_y or pad_x:   # centred, as the original
        clip = np.pad(clip, ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)),
                      mode="edge")
    top = rng.integers(clip.shape[1] - height + 1)
    left = rng.integers(clip.shape[2] - width + 1)
    return clip[:, top:top + height, left:left + width]


def _gray(clip):
    """Luma (ITU-R 601, as torchvision's rgb_to_grayscale), shape (..., 1)."""
    return clip @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]


def colour_jitter(clip, rng, brightness=0, contrast=0, saturation=0, hue=0):
    """torchvision's ColorJitter with one draw for the whole clip: factors uniform in
    [max(0, 1 - x), 1 + x] for brightness, contrast and saturation, a hue shift uniform in [-hue, hue]
    (a fraction of the colour wheel), applied in a random order, as the original does."""
    from skimage.color import hsv2rgb, rgb2hsv

    def adjust_brightness(clip, factor):
        return clip * factor

    def adjust_contrast(clip, factor):   # towards each frame's mean gray
        mean = _gray(clip).mean(axis=(1, 2, 3), keepdims=True)
        return mean + factor * (clip - mean)

    def adjust_saturation(clip, factor):   # towards each pixel's gray
        gray = _gray(clip)
        return gray + factor * (clip - gray)

    def adjust_hue(clip, shift):
        hsv = rgb2hsv(clip)
        hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
        return hsv2rgb(hsv).astype(np.float32)

    adjustments = []
    for strength, adjust in ((brightness, adjust_brightness), (contrast, adjust_contrast),
                             (saturation, adjust_saturation)):
        if strength > 0:
            adjustments.append((adjust, rng.uniform(max(0.0, 1 - strength), 1 + strength)))
    if hue > 0:
        adjustments.append((adjust_hue, rng.uniform(-hue, hue)))
    for position in rng.permutation(len(adjustments)):
        adjust, amount = adjustments[position]
        clip = np.clip(adjust(clip, np.float32(amount)), 0.0, 1.0).astype(np.float32)
    return clip


def _number(section, key, value, low=0.0, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or \
            (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise BadConfig(f"augmentation_params.{section}.{key} must be a number {limits}, got {value!r}")
    return float(value)


def _pair(section, key, value, cast=float, positive=True):
    if np.isscalar(value) or value is None or len(value) != 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive)
                    for v in value):
        kind = "positive numbers" if positive else "numbers"
        raise BadConfig(f"augmentation_params.{section}.{key} must be two {kind}, got {value!r}")
    return tuple(cast(v) for v in value)


class Augmentation:
    """The original's AllAugmentationTransform, configured by the same dict (a YAML config's
    augmentation_params), e.g. vox: {flip_param: {horizontal_flip: true, time_flip: true},
    jitter_param: {brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0.1}}, or mgif:
    {flip_param: ..., crop_param: {size: [256, 256]}, resize_param: {ratio: [0.9, 1.1]}, jitter_param: {hue: 0.5}}.
    Applied in the original's order: flip, rotation, resize, crop, colour jitter."""

    def __init__(self, params=None):
        params = dict(params or {})
        for section, options in params.items():
            if section not in AUGMENTATION_KEYS:
                raise BadConfig(f"augmentation_params: unknown key {section!r} "
                                f"(known: {', '.join(AUGMENTATION_KEYS)})")
            if options is not None and not isinstance(options, dict):
                raise BadConfig(f"augmentation_params.{section} must be a mapping, got {options!r}")
            for key in options or {}:
                if key not in AUGMENTATION_KEYS[section]:
                    raise BadConfig(f"augmentation_params.{section}: unknown key {key!r} "
                                    f"(known: {', '.join(AUGMENTATION_KEYS[section])})")
        # An empty section (`flip_param:` in YAML) turns that augmentation off.
        self.flip = params.get("flip_param") or None
        self.rotation = params.get("rotation_param") or None
        self.resize = params.get("resize_param") or None
        self.crop = params.get("crop_param") or None
        self.jitter = params.get("jitter_param") or None
        self._check_values()

    def _check_values(self):
        if self.flip:
            for key, value in self.flip.items():
                if not isinstance(value, bool):
                    raise BadConfig(f"augmentation_params.flip_param.{key} must be true or false, got {value!r}")
        if self.rotation:
            degrees = self.rotation.get("degrees")
            if degrees is None:
                raise BadConfig("augmentation_params.rotation_param needs degrees")
            if np.isscalar(degrees):
                degrees = _number("rotation_param", "degrees", degrees, 0.0, 180.0)
            else:
                degrees = _pair("rotation_param", "degrees", degrees, positive=False)
            self.rotation = {"degrees": degrees}
        if self.resize:
            self.resize = dict(self.resize)
            if "ratio" in self.resize:
                self.resize["ratio"] = _pair("resize_param", "ratio", self.resize["ratio"])
            if self.resize.get("interpolation", "bilinear") not in ("nearest", "bilinear"):
                raise BadConfig("augmentation_params.resize_param.interpolation must be nearest or bilinear, "
                                f"got {self.resize['interpolation']!r}")
            if not self.crop:   # otherwise frames of different sizes would meet in one batch
                raise BadConfig("augmentation_params: resize_param changes the frame size; "
                                "add crop_param: {size: [H, W]} to bring it back")
        if self.crop:
            size = self.crop.get("size")
            if size is None:
                raise BadConfig("augmentation_params.crop_param needs size")
            if np.isscalar(size):
                size = (size, size)
            self.crop = {"size": _pair("crop_param", "size", size, cast=int)}
        if self.jitter:
            self.jitter = {key: _number("jitter_param", key, value, 0.0, 0.5 if key == "hue" else None)
                           for key, value in self.jitter.items()}

    def __call__(self, clip, rng):
        if self.flip:
            clip = random_flip(clip, rng, **self.flip)
        if self.rotation:
            clip = random_rotation(clip, rng, **self.rotation)
        if self.resize:
            clip = random_resize(clip, rng, **self.resize)
        if self.crop:
            clip = random_crop(clip, rng, **self.crop)
        if self.jitter:
            clip = colour_jitter(clip, rng, **self.jitter)
        return clip
