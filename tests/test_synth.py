"""`fom synth`: the procedural cartoon-face data set."""

import argparse
import re

import imageio.v3 as iio
import numpy as np
import pytest

from fom_cli.errors import FomError
from fom_cli.commands import synth as synth_command
from fom_cli.training import synth
from fom_cli.training import synth_dataset
from fom_cli.training.synth_dataset import write_dataset


def write(path, videos=3, frames=3, size=32, seed=0, test_videos=1):
    return write_dataset(path, videos=videos, frames=frames, size=size, seed=seed,
                               test_videos=test_videos, quiet=True)


def all_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def face(seed, frames=6):
    rng = np.random.default_rng(seed)
    return synth.sample_identity(rng), synth.sample_motion(rng, frames)


def test_same_seed_gives_identical_files(tmp_path):
    write(tmp_path / "a", seed=5)
    write(tmp_path / "b", seed=5)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")


def test_any_number_of_workers_writes_the_same_files(tmp_path):
    write(tmp_path / "one", videos=4, test_videos=2)
    write_dataset(tmp_path / "three", videos=4, frames=3, size=32, seed=0, test_videos=2, quiet=True,
                        workers=3)
    assert len(all_files(tmp_path / "one")) == 18
    assert all_files(tmp_path / "one") == all_files(tmp_path / "three")


def test_different_seed_gives_different_frames(tmp_path):
    write(tmp_path / "a", seed=1)
    write(tmp_path / "b", seed=2)
    first = iio.imread(next((tmp_path / "a" / "train").iterdir()) / "0000000.png")
    second = iio.imread(next((tmp_path / "b" / "train").iterdir()) / "0000000.png")
    assert not np.array_equal(first, second)


def test_layout_names_and_counts(tmp_path):
    summary = write(tmp_path / "data", videos=5, frames=4, size=40, test_videos=2)
    train = sorted((tmp_path / "data" / "train").iterdir())
    test = sorted((tmp_path / "data" / "test").iterdir())
    assert (len(train), len(test)) == (5, 2)
    assert (summary["train_videos"], summary["test_videos"]) == (5, 2)
    for video in train + test:
        assert re.fullmatch(r"id\d{5}#\d{3}", video.name)
        assert [p.name for p in sorted(video.iterdir())] == [f"{t:07d}.png" for t in range(4)]
        frame = iio.imread(video / "0000003.png")
        assert frame.shape == (40, 40, 3) and frame.dtype == np.uint8
    # Nothing else next to the data set: the temporary folder is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_identities_have_several_clips_and_train_test_are_disjoint(tmp_path):
    summary = write(tmp_path / "data", videos=12, frames=2, test_videos=6)
    identities = {split: [p.name.split("#")[0] for p in (tmp_path / "data" / split).iterdir()]
                  for split in ("train", "test")}
    assert len(set(identities["train"])) < len(identities["train"])   # some identity has 2+ clips
    assert not set(identities["train"]) & set(identities["test"])
    assert summary["train_identities"] == len(set(identities["train"]))


def test_consecutive_frames_move():
    identity, motion = face(3, frames=8)
    video = synth.render_video(identity, motion, 64)
    assert video.shape == (8, 64, 64, 3) and video.dtype == np.uint8
    for t in range(7):
        assert np.any(video[t] != video[t + 1])


def test_sub_pixel_motion_changes_the_image():
    # Anti-aliased edges: moving the head by a tenth of a pixel must show.
    identity, motion = face(4, frames=1)
    before = synth.render_frame(identity, motion, 0, 64)
    motion.translation[0, 0] += 0.1 * 2 / 64
    assert np.any(synth.render_frame(identity, motion, 0, 64) != before)


@pytest.mark.parametrize("field", ["blink", "mouth"])
def test_blink_and_mouth_change_the_face(field):
    identity, motion = face(5, frames=1)
    getattr(motion, field)[0] = 0.0
    closed = synth.render_frame(identity, motion, 0, 64)
    getattr(motion, field)[0] = 1.0
    changed = synth.render_frame(identity, motion, 0, 64)
    assert np.abs(closed.astype(int) - changed.astype(int)).sum() > 1000


def test_identities_look_different_with_the_same_motion():
    # Identity A with identity B's motion: the API renders any pair.
    _, motion = face(6)
    first = synth.render_video(face(7)[0], motion, 48)
    second = synth.render_video(face(8)[0], motion, 48)
    assert np.abs(first.astype(float) - second.astype(float)).mean() > 10


def test_motion_is_a_smooth_random_performance():
    motion = synth.sample_motion(np.random.default_rng(0), 200)
    assert motion.num_frames == 200
    assert motion.translation.shape == (200, 2) and motion.gaze.shape == (200, 2)
    assert np.abs(np.diff(motion.rotation)).max() < 0.1           # no jumps between frames
    assert 0 <= motion.blink.min() and motion.blink.max() == 1.0   # it blinks, fully
    assert motion.mouth.min() == 0.0 and motion.mouth.max() > 0.5  # it talks


@pytest.mark.parametrize("change, message", [
    (dict(videos=0), "--videos"),
    (dict(size=16), "--size"),
    (dict(frames=1), "--frames"),
    (dict(test_videos=-1), "--test-videos"),
    (dict(seed=-3), "--seed"),
    (dict(workers=0), "--workers"),
])
def test_bad_arguments(tmp_path, change, message):
    arguments = dict(videos=2, frames=2, size=32, seed=0, test_videos=1) | change
    with pytest.raises(FomError, match=message) as error:
        write_dataset(tmp_path / "data", quiet=True, **arguments)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "data").exists()


def test_refuses_a_non_empty_output_but_fills_an_empty_one(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FomError, match="not empty"):
        write(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty")
    assert (tmp_path / "empty" / "train").is_dir()


def test_a_crash_leaves_no_data_set(tmp_path, monkeypatch):
    real_render = synth.render_video
    calls = []

    def render_then_fail(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args)

    monkeypatch.setattr(synth_dataset, "render_video", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_command.configure_parser(parser)
    args = parser.parse_args(["--out", str(tmp_path / "data"), "--videos", "2", "--frames", "2",
                              "--size", "32", "--seed", "1", "--test-videos", "1"])
    assert synth_command.run(args) == 0
    assert "wrote 2 train and 1 test videos" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "train").iterdir())) == 2


def test_command_is_registered():
    from fom_cli.cli import COMMANDS, command_module

    assert "synth" in COMMANDS and command_module("synth") is synth_command
