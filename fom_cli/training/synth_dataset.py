"""A `fom synth` data set on disk: every video planned, rendered (in several processes) and written as
folders of PNG frames, DIR/train/id<identity>#<clip>/0000000.png ..., in the layout the original FOMM
reads. The same seed gives the same bytes for any number of workers."""

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fom_cli.errors import BadOutput, FomError
from fom_cli.media.files import AtomicOutput
from fom_cli.training.synth import IDENTITY_STREAM, MOTION_STREAM, PLAN_STREAM, render_video, sample_identity, \
    sample_motion


@dataclass
class _PlannedVideo:
    split: str        # "train" or "test"
    name: str         # id<identity>#<clip>
    identity: int
    clip: int


def _plan_videos(num_train, num_test, seed):
    """Name every video. Each identity gets 1-3 clips; identity numbers keep counting from train into
    test, so the two splits never share a face."""
    rng = np.random.default_rng([seed, PLAN_STREAM])
    plan = []
    identity = 0
    for split, count in (("train", num_train), ("test", num_test)):
        made = 0
        while made < count:
            clips = min(int(rng.integers(1, 4)), count - made)
            plan += [_PlannedVideo(split, f"id{identity:05d}#{clip:03d}", identity, clip) for clip in range(clips)]
            made += clips
            identity += 1
    return plan


def _check_arguments(out_dir, videos, frames, size, seed, test_videos):
    if videos < 1:
        raise FomError(f"--videos must be at least 1, got {videos}")
    if test_videos < 0:
        raise FomError(f"--test-videos must be 0 or more, got {test_videos}")
    if frames < 2:
        raise FomError(f"--frames must be at least 2 (a video needs motion), got {frames}")
    if size < 32:
        raise FomError(f"--size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise FomError(f"--seed must be 0 or more, got {seed}")
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOutput(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise BadOutput(f"{out_dir} already exists and is not empty; choose another --out or delete it")


def _write_video(folder, video, frames, size, seed):
    """Render one planned video into `folder` (already created). Its randomness comes from its own
    streams, so videos can be rendered in any order, in any process, with the same bytes."""
    from fom_cli.media.images import write_encoded_image

    identity = sample_identity(np.random.default_rng([seed, IDENTITY_STREAM, video.identity]))
    motion = sample_motion(np.random.default_rng([seed, MOTION_STREAM, video.identity, video.clip]), frames)
    for t, frame in enumerate(render_video(identity, motion, size)):
        write_encoded_image(folder / f"{t:07d}.png", frame)


def render_all(jobs, workers, quiet):
    """Render every planned video, in `workers` processes, with a progress bar."""
    from fom_cli.progress import progress_bar

    progress = progress_bar(total=len(jobs), desc="synth", unit="video", disable=quiet)
    if workers == 1:
        for job in jobs:
            _write_video(*job)
            progress.update()
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
        try:
            for done in as_completed([pool.submit(_write_video, *job) for job in jobs]):
                done.result()   # a worker's error stops the run here
                progress.update()
        finally:
            # After an error or Ctrl-C, drop the videos not started rather than render them all first.
            pool.shutdown(cancel_futures=True)
    progress.close()


def default_workers():
    return max(1, min(8, os.cpu_count() or 1))


def write_dataset(out_dir, videos, frames, size, seed, test_videos=None, quiet=False, workers=1):
    """Render `videos` training and `test_videos` test clips (default: one per 8 training clips, at
    least 1) of `frames` frames of size x size pixels into out_dir, in `workers` processes. Returns a
    summary dict.

    Everything is written into a hidden folder next to out_dir first and renamed into place at the end,
    so a crash or Ctrl-C never leaves a half data set that looks complete.
    """
    out_dir = Path(out_dir)
    if test_videos is None:
        test_videos = max(1, videos // 8)
    _check_arguments(out_dir, videos, frames, size, seed, test_videos)
    if workers < 1:
        raise FomError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    plan = _plan_videos(videos, test_videos, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with AtomicOutput(out_dir, directory=True) as output:
        partial = Path(output.temporary)
        (partial / "train").mkdir()
        (partial / "test").mkdir()
        jobs = []
        for video in plan:
            folder = partial / video.split / video.name
            folder.mkdir()
            jobs.append((folder, video, frames, size, seed))
        render_all(jobs, workers, quiet)

    splits = {split: [v for v in plan if v.split == split] for split in ("train", "test")}
    return {
        "out_dir": str(out_dir),
        "train_videos": len(splits["train"]),
        "test_videos": len(splits["test"]),
        "train_identities": len({v.identity for v in splits["train"]}),
        "test_identities": len({v.identity for v in splits["test"]}),
        "frames": frames,
        "size": size,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
