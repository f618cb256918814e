"""The bad-input corpus: every mistake a user can make that fom can tell them about, in one table.

Each case is a command line run in a folder prepared with the files below; it must exit with the given
code and print exactly one stderr line, starting "fom: error: ", without a traceback, holding the given
words, and leave no file or folder behind that was not there before (and change none that was).
"""

from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, driving_frames, make_clip, run_cli

SOURCE = PARITY / "small-source.png"
DRIVING_DIR = PARITY / "small-driving"
MODEL = ["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"]


def prepare(folder):
    """The files the cases refer to, by name."""
    make_clip(folder / "d.mp4", driving_frames(), fps=12, tone=True)
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    (folder / "a" / "face.png").write_bytes(SOURCE.read_bytes())
    (folder / "b" / "face.png").write_bytes(SOURCE.read_bytes())
    (folder / "frames").mkdir()
    (folder / "frames" / "000000.png").write_bytes(SOURCE.read_bytes())
    (folder / "a-file").write_text("in the way")
    (folder / "page.pth.tar").write_bytes(b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    (folder / "random.pth.tar").write_bytes(np.random.default_rng(0).bytes(10_000))
    (folder / "cut.pth.tar").write_bytes(SMALL_CHECKPOINT.read_bytes()[:50_000])
    (folder / "ok.csv").write_text(f"source,driving,output\n{SOURCE},d.mp4,animated.mp4\n")
    (folder / "same.csv").write_text(f"source,driving,output\n{SOURCE},d.mp4,d.mp4\n")
    (folder / "clash.csv").write_text(f"source,driving,output\n{SOURCE},d.mp4,o.mp4\n{SOURCE},{DRIVING_DIR},o.mp4\n")
    (folder / "noface.png").write_bytes((np.zeros((64, 64, 3), np.uint8) + 128).tobytes())  # not even a PNG


# (name, command line with {names} of the prepared files, exit code, words the error line holds)
CASES = [
    # 1: an output that is an input
    ("animate over its driving video", ["animate", SOURCE, "d.mp4", "-o", "d.mp4", *MODEL], 2, "is the driving video"),
    ("animate over its source image", ["animate", SOURCE, "d.mp4", "-o", SOURCE, *MODEL], 2, "is the source image"),
    ("batch job over its driving video", ["batch", "same.csv", *MODEL], 2, "is the driving video"),
    ("export over its checkpoint", ["export", "cut.pth.tar", "-o", "cut.pth.tar"], 2, "is the checkpoint"),
    # 2: a frames folder that already holds frames
    ("frames folder without --overwrite", ["animate", SOURCE, "d.mp4", "-o", "frames", *MODEL], 2, "--overwrite"),
    # 3: outputs that clash
    ("two sources of one name", ["animate", "a/face.png", "b/face.png", "--driving", "d.mp4", "-o", "out", *MODEL], 2,
     "face__d.mp4"),
    ("batch jobs writing one file", ["batch", "clash.csv", *MODEL], 2, "2 jobs would write"),
    # 5: devices that do not exist
    ("unknown device", ["animate", SOURCE, "d.mp4", "-o", "out.mp4", *MODEL, "--device", "gpu"], 2, "unknown device"),
    ("absent GPU", ["animate", SOURCE, "d.mp4", "-o", "out.mp4", *MODEL, "--device", "cuda:99"], 2, "cuda:99"),
    ("crop on an unknown device", ["crop", SOURCE, "-o", "crops", "--detector", "sfd", "--detector-weights",
                                   "a-file", "--device", "gpu"], 2, "unknown device"),
    ("batch on an unknown device", ["batch", "ok.csv", *MODEL, "--device", "gpu"], 2, "unknown device"),
    ("train on an absent GPU", ["train", "--config", SMALL_CONFIG, "--data", "a", "--batch-size", 4,
                                "--no-perceptual", "--quiet", "--device", "cuda:99"], 2, "cuda:99"),
    # 12: files that are not checkpoints
    ("an HTML page as checkpoint", ["animate", SOURCE, "d.mp4", "-o", "out.mp4", "--checkpoint", "page.pth.tar"], 2,
     "failed download"),
    ("random bytes as checkpoint", ["export", "random.pth.tar", "-o", "slim.pth"], 2, "failed download"),
    ("a cut checkpoint", ["animate", SOURCE, "d.mp4", "-o", "out.mp4", "--checkpoint", "cut.pth.tar"], 2,
     "cut-off checkpoint"),
    # 15: outputs checked before the model (whose checkpoint here is garbage) loads
    ("output folder is a file", ["animate", SOURCE, "d.mp4", "-o", "a-file/out.mp4", "--checkpoint",
                                 "random.pth.tar"], 2, "a-file"),
    ("unknown output kind", ["animate", SOURCE, "d.mp4", "-o", "out.avi", "--checkpoint", "random.pth.tar"], 2,
     "'.avi'"),
    # 17: a failed crop leaves no folder
    ("crop of a broken image", ["crop", "noface.png", "-o", "new/crops"], 2, "noface.png"),
    ("train from a web page", ["train", "--resume", "page.pth.tar", "--quiet"], 2, "failed download"),
    # the rest of the ordinary mistakes
    ("synth over a file", ["synth", "--out", "a-file", "--videos", 1, "--frames", 2, "--quiet"], 2, "a-file"),
    ("crop into a file", ["crop", SOURCE, "-o", "a-file"], 2, "a-file"),
    ("missing source", ["animate", "missing.png", "d.mp4", "-o", "out.mp4", *MODEL], 2, "does not exist"),
    ("zero fps", ["animate", SOURCE, "d.mp4", "-o", "out.mp4", *MODEL, "--fps", "0"], 2, "--fps"),
    ("export into a folder", ["export", SMALL_CHECKPOINT, "-o", "a", "--config", SMALL_CONFIG], 2, "is a directory"),
    ("bad shard", ["batch", "clash.csv", *MODEL, "--shard", "3/2"], 2, "--shard"),
    ("train without data", ["train", "--config", SMALL_CONFIG, "--batch-size", 4, "--no-perceptual", "--quiet"], 2,
     "no training data"),
]


def snapshot(folder):
    """{path: (size, mtime)} of everything under `folder`: what must not change."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in Path(folder).rglob("*")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    prepare(folder)
    return folder


@pytest.mark.parametrize("name, argv, exit_code, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(prepared, monkeypatch, capsys, name, argv, exit_code, words):
    monkeypatch.chdir(prepared)
    before = snapshot(prepared)
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("fom: error: ") and "Traceback" not in err, err
    assert words in lines[0], err
    assert snapshot(prepared) == before, "a file was left behind, removed or changed"
