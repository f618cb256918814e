"""The Python API (fom_cli/api.py): the README's example run as written, arrays in and out, streaming, input
checks, silence, and the same frames as the CLI."""

import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import PARITY, SMALL_CHECKPOINT, SMALL_CONFIG, driving_frames, run_cli
from fom_cli.errors import BadInput
from fom_cli.media.video_in import probe
from test_animate import audio_seconds

ROOT = Path(__file__).resolve().parent.parent
SOURCE = PARITY / "small-source.png"


@pytest.fixture(scope="module")
def model():
    import fom_cli as fom

    return fom.load_model(SMALL_CHECKPOINT, device="cpu", config=SMALL_CONFIG)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Python block, executed from a folder holding the samples where the repository has them."""
    block = re.search(r"## From Python.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    shutil.copytree(ROOT / "fom_cli" / "samples", tmp_path / "fom_cli" / "samples")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    info = probe(tmp_path / "out.mp4")
    talk = probe(tmp_path / "fom_cli" / "samples" / "drive-talk.mp4")
    assert info.num_frames == 2 * talk.num_frames and abs(info.fps - 50) < 1e-3 and info.has_audio   # fps=50
    assert abs(audio_seconds(tmp_path / "out.mp4") - talk.duration) <= 1 / talk.fps   # a frame of the driving video
    frames = namespace["frames"]
    assert frames.shape == (12, 128, 128, 3) and frames.dtype == np.uint8
    assert capsys.readouterr().out.count("(128, 128, 3)") == 12   # the stream's loop printed each frame


def test_arrays_in_memory_give_the_frames_the_cli_writes(model, tmp_path, capsys):
    code, _, err = run_cli(["animate", SOURCE, PARITY / "small-driving", "-o", tmp_path / "cli/", "--checkpoint",
                            SMALL_CHECKPOINT, "--config", SMALL_CONFIG, "--quiet"], capsys)
    assert code == 0, err
    written = np.stack([iio.imread(path) for path in sorted((tmp_path / "cli").glob("*.png"))])
    frames = model.animate(iio.imread(SOURCE), driving_frames())
    assert np.array_equal(frames, written)
    # uint8 and float [0, 1] inputs are the same pictures (the Animator once took uint8 as if it were float).
    floats = model.animate(iio.imread(SOURCE).astype(np.float32) / 255, driving_frames().astype(np.float32) / 255)
    assert np.abs(floats.astype(int) - frames).max() <= 1


def test_stream_is_lazy_and_takes_any_iterator(model):
    """An endless generator (a camera, say): the first frames come out without the stream ending."""
    driving = driving_frames()

    def camera():
        while True:
            yield from driving

    stream = model.stream(iio.imread(SOURCE), camera(), fps=25)
    first = [next(stream) for _ in range(10)]
    stream.close()
    assert np.array_equal(np.stack(first[:8]), model.animate(iio.imread(SOURCE), driving))


@pytest.mark.parametrize("source, message", [
    (np.full((64, 64, 3), 2.0, dtype=np.float32), "not in \\[0, 1\\]"),
    (np.zeros((64, 64), dtype=np.uint8), "shape"),
    (np.zeros((64, 64, 3), dtype=np.int64), "uint8 or float"),
])
def test_bad_arrays_are_refused_with_one_clear_error(model, source, message):
    with pytest.raises(BadInput, match=message):
        model.animate(source, driving_frames())


def test_options_that_cannot_work_are_refused_before_any_frame_is_read(model, tmp_path):
    import fom_cli as fom

    with pytest.raises(BadInput, match="--paste-back"):
        fom.animate(model, SOURCE, tmp_path / "missing.mp4", tmp_path / "out.mp4", all_faces=True)
    with pytest.raises(TypeError):
        fom.animate(model, SOURCE, PARITY / "small-driving", tmp_path / "out.mp4", no_such_option=True)
    assert list(tmp_path.iterdir()) == []


def test_the_api_prints_nothing_unless_asked(model, tmp_path, capsys):
    import fom_cli as fom

    fom.animate(model, SOURCE, PARITY / "small-driving", tmp_path / "out.gif")
    model.animate(iio.imread(SOURCE)[:100], driving_frames()[:2])   # not square: fitted, with a note (logged)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    fom.animate(model, SOURCE, PARITY / "small-driving", tmp_path / "again.gif", progress=True)
    assert "again.gif" in capsys.readouterr().err   # the progress bar, asked for


def test_notes_go_to_logging(model, caplog):
    with caplog.at_level("INFO", logger="fom_cli"):
        model.animate(iio.imread(SOURCE)[:100], driving_frames()[:2])
    assert any("fits it to the model's 128x128 frame" in record.getMessage() for record in caplog.records)
