"""Training and test videos in the layouts the original FOMM reads (its frames_dataset.py), and its
augmentations (augmentation.py), re-written for reproducible randomness.

Layout. `root/train/<video>` and `root/test/<video>`, as vox-png, mgif, taichi and `fom synth` output.
The original splits a root without train/ and test/ at random (with scikit-learn); here such a root is
all training data, and asking it for test videos is an error that says where to put them. A root with
test/ but no train/ is an error too. A video is any of:
  - a folder of frames (.png/.jpg/.jpeg/.bmp), in the order of their names;
  - an .mp4, .mov or .gif file;
  - a .png or .jpg strip: the frames side by side, so the image is T frames wide and one frame high.
    Frames have the aspect of frame_shape (square for the usual 256x256): T = width / frame width.
Frames whose size differs from frame_shape are resized to it. Hidden files and files of other types are
ignored. A video that cannot be decoded is skipped with one warning naming it, and another is read in
its place, so a bad file never stops an epoch.

Randomness. Sample `index` of epoch `epoch` draws from a numpy Generator seeded by (random_seed, epoch,
repeat, index) and nothing else, so it is the same with 0 or 8 DataLoader workers, in any order. Call
`dataset.set_epoch(epoch)` before each epoch's DataLoader iterator is created (the workers get a copy
of the dataset at that moment; with persistent_workers=True they would keep the first epoch's).
"""

import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fom_cli.errors import BadConfig, BadInput

VIDEO_EXTENSIONS = (".mp4", ".mov", ".gif")
STRIP_EXTENSIONS = (".png", ".jpg", ".jpeg")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# What each augmentation of the original's augmentation_params accepts.
AUGMENTATION_KEYS = {
    "flip_param": ("horizontal_flip", "time_flip"),
    "rotation_param": ("degrees",),
    "resize_param": ("ratio", "interpolation"),
    "crop_param": ("size",),
    "jitter_param": ("brightness", "contrast", "saturation", "hue"),
}


class UnreadableVideoWarning(UserWarning):
    """A video was skipped because it could not be decoded."""


class _VideoError(Exception):
    """This one video cannot be used (the dataset skips it); not a user error that stops the run."""


# ----------------------------------------------------------------------------------------------------
# Reading frames: every reader returns float32 (T, H, W, 3) in [0, 1], resized to frame_shape.

def _as_rgb_float(image):
    """Any image imageio returns (gray, RGB, RGBA; 8 or 16 bit) as float32 RGB in [0, 1]."""
    from skimage.util import img_as_float32

    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return img_as_float32(image[..., :3])


def _resize(frames, height, width, order=1):
    """Resize every frame of (T, H, W, 3) to (height, width); order 1 bilinear, 0 nearest."""
    from skimage.transform import resize

    if frames.shape[1:3] == (height, width):
        return frames
    shrinking = height < frames.shape[1] or width < frames.shape[2]
    return np.stack([resize(frame, (height, width), order=order, anti_aliasing=shrinking and order > 0,
                            preserve_range=True).astype(np.float32) for frame in frames])


def frame_files(folder):
    """The frame images of a frames folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith("."))


def read_video(path, frame_shape, frame_indices=None):
    """Frames of one video (a folder, a video file or a strip) as float32 (T, H, W, 3) in [0, 1].

    frame_indices: which frames to return (None: all). For a folder only those files are read.
    Raises _VideoError, or whatever the decoder raises, when the video cannot be read.
    """
    import imageio.v3 as iio

    path = Path(path)
    height, width = frame_shape[:2]
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise _VideoError("no frames in the folder")
        chosen = range(len(files)) if frame_indices is None else frame_indices
        frames = np.stack([_as_rgb_float(iio.imread(files[i])) for i in chosen])
        return _resize(frames, height, width)

    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        frames = np.stack([_as_rgb_float(frame) for frame in iio.imread(path, index=None)])
    elif suffix in STRIP_EXTENSIONS:
        strip = _as_rgb_float(iio.imread(path))
        strip_height, strip_width = strip.shape[:2]
        # Frames keep frame_shape's aspect, so a 64 px high strip of 256x256 frames has 64 px wide ones.
        frame_width = max(1, round(strip_height * width / height))
        if strip_width % frame_width:
            raise _VideoError(f"a strip {strip_width} px wide is not a whole number of {frame_width} px frames")
        frames = strip.reshape(strip_height, strip_width // frame_width, frame_width, 3).transpose(1, 0, 2, 3)
    else:
        raise _VideoError(f"unknown video type {suffix!r}")
    if frame_indices is not None:
        frames = frames[np.asarray(frame_indices)]
    return _resize(frames, height, width)


def _is_video(path):
    if path.name.startswith("."):
        return False
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS + STRIP_EXTENSIONS


def _split_folder(root_dir, is_train):
    """The folder that holds the requested split's videos; see the module docstring for the rules."""
    root = Path(root_dir)
    if not root.exists():
        raise BadInput(f"data directory {root} does not exist")
    if not root.is_dir():
        raise BadInput(f"data directory {root} is not a directory")
    train, test = root / "train", root / "test"
    if not train.is_dir() and test.is_dir():
        raise BadInput(f"{root} has test/ but no train/ folder; put the training videos in {train}")
    if is_train:
        return train if train.is_dir() else root
    if not test.is_dir():
        raise BadInput(f"{root} has no test/ folder; put the test videos in {test} "
                       f"(and the training videos in {train})")
    return test


# ----------------------------------------------------------------------------------------------------
# Augmentation, as the original's augmentation_params configure it. Every function takes a clip
# (T, H, W, 3) float32 in [0, 1] and draws its parameters once, so all frames of a sample (source and
# driving) change the same way.

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
    order = 0 if interpolation == "nearest" else 1
    return _resize(clip, max(1, int(height * factor)), max(1, int(width * factor)), order=order)


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


# ----------------------------------------------------------------------------------------------------
# The datasets

class FramesDataset(Dataset):
    """Videos of one split, as the original FramesDataset.

    Training (is_train=True): item i is {'source', 'driving'}: two frames of video i, float32 (3, H, W)
    in [0, 1], drawn with replacement and put in time order (source first), augmented alike, plus
    {'name'}: the video's file or folder name. With id_sampling, item i is identity i instead (the part
    of a video name before '#', e.g. id00012 in id00012#003.mp4) and one of its clips is drawn at random,
    so identities with many clips are not seen more often.
    Test (is_train=False): item i is {'video': float32 (3, T, H, W), 'name'}, all frames, no augmentation.
    pairs_list (a CSV of source/driving names for evaluation) is only kept, as the original does, for
    whoever builds evaluation pairs.
    """

    def __init__(self, root_dir, frame_shape=(256, 256, 3), id_sampling=False, is_train=True,
                 random_seed=0, pairs_list=None, augmentation_params=None):
        self.frame_shape = tuple(int(n) for n in frame_shape)
        if len(self.frame_shape) != 3 or self.frame_shape[2] != 3 or min(self.frame_shape) < 1:
            raise BadConfig(f"frame_shape must be [height, width, 3], got {list(frame_shape)}")
        if isinstance(random_seed, bool) or not isinstance(random_seed, (int, np.integer)) or random_seed < 0:
            raise BadConfig(f"random_seed must be a whole number, 0 or more, got {random_seed!r}")
        self.root_dir = _split_folder(root_dir, is_train)
        self.is_train = is_train
        self.id_sampling = id_sampling and is_train
        self.random_seed = int(random_seed)
        self.pairs_list = pairs_list
        self.augment = Augmentation(augmentation_params) if is_train else None
        self.epoch = 0

        # Sorted: directory listings come in no particular order, and item i must mean the same video
        # everywhere.
        self.videos = sorted(p.name for p in self.root_dir.iterdir() if _is_video(p))
        if not self.videos:
            raise BadInput(f"no videos in {self.root_dir} (expected folders of frames, "
                           f".mp4/.mov/.gif files or .png/.jpg strips)")
        # identity -> its clips; with id_sampling the dataset's items are the identities.
        self.clips = {}
        for name in self.videos:
            self.clips.setdefault(name.split("#")[0], []).append(name)
        self.identities = sorted(self.clips)
        self._unreadable = set()   # paths already warned about (per process: each worker warns once)

    def __len__(self):
        return len(self.identities) if self.id_sampling else len(self.videos)

    def set_epoch(self, epoch):
        """Draw different frames and augmentations in each epoch (see the module docstring)."""
        self.epoch = int(epoch)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.get(index)

    def get(self, index, repeat=0):
        """Item `index`; `repeat` tells DatasetRepeater's passes apart, so each draws different frames.

        If the video cannot be read, videos are tried in a random order until one can. Each try has its
        own generator, so what an index returns depends only on the seeds and on which files are bad,
        never on what this process has read before."""
        key = [self.random_seed, self.epoch, repeat, index]
        for attempt, position in enumerate(self._positions_to_try(index, key)):
            rng = np.random.default_rng(key + [1, attempt])
            name = self._pick_video(position, rng)
            path = self.root_dir / name
            if path in self._unreadable:
                continue
            try:
                frames = self._read(path, rng)
            except Exception as error:   # decoders raise all sorts; one bad file must not end an epoch
                self._skip(path, error)
                continue
            return self._to_item(frames, name, rng)
        raise BadInput(f"none of the videos in {self.root_dir} can be read")

    def _positions_to_try(self, index, key):
        """The item's own video first; only if that fails, all of them in a random order."""
        yield index
        yield from np.random.default_rng(key + [0]).permutation(len(self))

    def _pick_video(self, position, rng):
        if self.id_sampling:
            clips = self.clips[self.identities[position]]
            return clips[rng.integers(len(clips))]
        return self.videos[position]

    def _read(self, path, rng):
        if not self.is_train:
            return read_video(path, self.frame_shape)
        # Two frames, with replacement and in time order, as the original draws them.
        if path.is_dir():   # count the files and read only the two frames we need
            num_frames = len(frame_files(path))
            if num_frames == 0:
                raise _VideoError("no frames in the folder")
            chosen = np.sort(rng.choice(num_frames, size=2))
            return read_video(path, self.frame_shape, frame_indices=chosen)
        video = read_video(path, self.frame_shape)
        return video[np.sort(rng.choice(len(video), size=2))]

    def _skip(self, path, error):
        self._unreadable.add(path)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1][:200] if lines else type(error).__name__
        warnings.warn(f"skipping unreadable video {path}: {reason}", UnreadableVideoWarning, stacklevel=3)

    def _to_item(self, frames, name, rng):
        if self.augment is not None:
            frames = self.augment(frames, rng)
        # (T, H, W, C) -> channels first; contiguous, because flips leave negative strides that torch
        # cannot take.
        if self.is_train:
            return {"source": np.ascontiguousarray(frames[0].transpose(2, 0, 1), dtype=np.float32),
                    "driving": np.ascontiguousarray(frames[1].transpose(2, 0, 1), dtype=np.float32),
                    "name": name}
        return {"video": np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32), "name": name}


class DatasetRepeater(Dataset):
    """Pass over a dataset num_repeats times per epoch, as the original does to make epochs of a small
    data set long enough to amortise the DataLoader's start-up. Item i is item i % len(dataset); a
    FramesDataset is also told which pass it is, so every pass draws other frames."""

    def __init__(self, dataset, num_repeats=100):
        if isinstance(num_repeats, bool) or not isinstance(num_repeats, (int, np.integer)) or num_repeats < 1:
            raise BadConfig(f"num_repeats must be a whole number, 1 or more, got {num_repeats!r}")
        self.dataset = dataset
        self.num_repeats = int(num_repeats)

    def __len__(self):
        return self.num_repeats * len(self.dataset)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        repeat, position = divmod(index, len(self.dataset))
        if isinstance(self.dataset, FramesDataset):
            return self.dataset.get(position, repeat=repeat)
        return self.dataset[position]

    def set_epoch(self, epoch):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
