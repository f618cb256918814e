"""Training and test videos in the layouts the original FOMM reads (its frames_dataset.py), re-written for
reproducible randomness (augmentations: training/augmentation.py).

Layout. `root/train/<video>` and `root/test/<video>`, as vox-png, mgif, taichi and `fom synth` output.
The original splits a root without train/ and test/ at random (with scikit-learn); here such a root is
all training data, and asking it for test videos is an error that says where to put them. A root with
test/ but no train/ is an error too. A video is any of:
  - a folder of frames (.png/.jpg/.jpeg/.webp/.bmp), in the order of their names (numbers compared as
    numbers, as `fom animate` reads frame folders);
  - a video file (.mp4, .mov, .mkv, .avi, .webm, .gif);
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
from fom_cli.media.images import frame_files, read_image, resize, to_float_rgb
from fom_cli.media.video_in import VIDEO_EXTENSIONS, VideoReader
from fom_cli.training.augmentation import Augmentation

# A picture as a video: the frames side by side.
STRIP_EXTENSIONS = (".png", ".jpg", ".jpeg")


class UnreadableVideoWarning(UserWarning):
    """A video was skipped because it could not be decoded."""


class _VideoError(Exception):
    """This one video cannot be used (the dataset skips it); not a user error that stops the run."""


# ----------------------------------------------------------------------------------------------------
# Reading frames: every reader returns float32 (T, H, W, 3) in [0, 1], resized to frame_shape, through
# the same functions as animation (one frame order, one alpha policy, one resize).

def _resized(frames, height, width):
    return np.stack([resize(frame, (height, width)) for frame in frames])


def read_video(path, frame_shape, frame_indices=None):
    """Frames of one video (a folder, a video file or a strip) as float32 (T, H, W, 3) in [0, 1].

    frame_indices: which frames to return (None: all). For a folder only those files are read.
    Raises _VideoError, or whatever the decoder raises, when the video cannot be read.
    """
    path = Path(path)
    height, width = frame_shape[:2]
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise _VideoError("no frames in the folder")
        chosen = range(len(files)) if frame_indices is None else frame_indices
        return _resized([read_image(files[i]) for i in chosen], height, width)

    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        frames = np.stack([to_float_rgb(frame) for frame in VideoReader(path).frames()])
    elif suffix in STRIP_EXTENSIONS:
        strip = read_image(path)
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
    return _resized(frames, height, width)


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
