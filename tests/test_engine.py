"""Every option with every other: the combination matrix of the engine (fom_cli/engine.py).

Each pair of a face mode {whole frames, --face, --crop-source, --paste-back, --all-faces} and a variation
{another --fps, --start/--duration, --best-frame, --find-best-frame, --side-by-side, PNG frames, GIF},
for both families: it either works (the output lasts as long as the driving frames used, to within a
frame, and the sound as long as the video, to within a frame) or is refused in one line before any work.
Through the API (the model loaded once per family), and a share of the same through `fom animate` and
`fom batch` columns.
"""

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

from conftest import SMALL_CHECKPOINT, SMALL_CONFIG, TPSMM_PARITY, carphone_path, make_clip, run_cli
from fom_cli.engine import AnimationOptions
from fom_cli.errors import BadInput
from fom_cli.media.video_in import probe
from test_animate import audio_seconds

FPS = 25
FRAMES = 4  # the driving clip: 0.16 s at 25 fps, a real face talking, with sound

FACE_MODES = {
    "whole": {},
    "face": {"face": True},
    "crop_source": {"crop_source": True},
    "paste_back": {"paste_back": True},
    "all_faces": {"all_faces": True, "paste_back": True},
}
# name -> (options, output file name, driving frames used, output frame rate)
VARIATIONS = {
    "fps": ({"fps": 10}, "out.mp4", FRAMES, 10),
    "start_duration": ({"start": 0.04, "duration": 0.08}, "out.mp4", 2, FPS),   # frames 1 and 2
    "best_frame": ({"best_frame": 2}, "out.mp4", FRAMES, FPS),
    "find_best_frame": ({"find_best_frame": True}, "out.mp4", FRAMES, FPS),
    "side_by_side": ({"side_by_side": True}, "out.mp4", FRAMES, FPS),
    "png": ({}, "frames/", FRAMES, FPS),
    "gif": ({}, "out.gif", FRAMES, FPS),
}
# What cannot work yet: the best frame is looked for on whole driving frames, not on a followed face.
REFUSED = {("face", "find_best_frame")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    talking = iio.imread(carphone_path())[:FRAMES]
    driving = make_clip(folder / "talk.mp4", talking, fps=FPS, tone=True)
    photo = folder / "photo.png"
    iio.imwrite(photo, data.astronaut()[::2, ::2])   # 256x256, one face
    return photo, driving, audio_seconds(driving)


@pytest.fixture(scope="module")
def models(small_tpsmm_checkpoint):
    import fom_cli as fom

    return {"fomm": fom.load_model(SMALL_CHECKPOINT, device="cpu", config=SMALL_CONFIG),
            "tpsmm": fom.load_model(small_tpsmm_checkpoint, device="cpu", config=TPSMM_PARITY / "small.yaml")}


def count_frames(output):
    if output.is_dir():
        return len(list(output.glob("*.png")))
    return probe(output).num_frames


def check_output(output, used_frames, fps, sound=None, start=0.0):
    """Lasts as long as the driving frames used, within a frame; with `sound` (the driving video's, in
    seconds) the output's as long as the video, within a frame, where the driving video's lasts that long
    (the 0.16 s clip's AAC track ends at 0.139 s: whole AAC frames of 23 ms)."""
    frames = count_frames(output)
    assert frames == math.ceil(used_frames * fps / FPS), (output, frames)
    if output.suffix == ".mp4":
        info = probe(output)
        assert abs(info.fps - fps) < 1e-3
        assert abs(frames / fps - used_frames / FPS) <= 1 / fps
        assert info.has_audio == (sound is not None)
        if sound is not None:
            assert abs(audio_seconds(output) - min(frames / fps, sound - start)) <= 1 / fps


@pytest.mark.parametrize("family", ["fomm", "tpsmm"])
@pytest.mark.parametrize("variation", VARIATIONS)
@pytest.mark.parametrize("face_mode", FACE_MODES)
def test_every_face_mode_with_every_variation(models, inputs, tmp_path, family, face_mode, variation):
    import fom_cli as fom

    photo, driving, sound = inputs
    options, name, used, fps = VARIATIONS[variation]
    options = {**FACE_MODES[face_mode], **options, "batch_size": 3}   # two batches for 4 frames
    output = tmp_path / name
    if (face_mode, variation) in REFUSED:
        with pytest.raises(BadInput) as refusal:
            fom.animate(models[family], photo, driving, output, **options)
        assert "\n" not in str(refusal.value)
        assert list(tmp_path.iterdir()) == []
        return
    fom.animate(models[family], photo, driving, output, **options)
    check_output(output, used, fps, sound if output.suffix == ".mp4" else None, options.get("start", 0.0))
    frame = iio.imread(sorted(output.glob("*.png"))[0]) if output.is_dir() else iio.imread(output, index=0)
    if AnimationOptions(**FACE_MODES[face_mode]).paste_back:
        assert frame.shape[:2][1] == 256   # the photo's own size (panels go below it with --side-by-side)
    else:
        assert frame.shape[:2] == (128, 3 * 128 if variation == "side_by_side" else 128)


def test_the_refused_combination_is_one_line_from_the_cli_before_the_model_loads(inputs, tmp_path, capsys):
    photo, driving, _ = inputs
    code, out, err = run_cli(["animate", photo, driving, "-o", tmp_path / "out.mp4", "--checkpoint",
                              tmp_path / "not-loaded.pth", "--face", "--find-best-frame"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--find-best-frame" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["fomm", "tpsmm"])
def test_the_cli_and_batch_columns_run_the_same_combinations(inputs, small_tpsmm_checkpoint, tmp_path, capsys, family):
    photo, driving, sound = inputs
    model = (["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG] if family == "fomm" else
             ["--checkpoint", small_tpsmm_checkpoint, "--config", TPSMM_PARITY / "small.yaml"])
    code, _, err = run_cli(["animate", photo, driving, "-o", tmp_path / "cli.mp4", *model, "--face", "--fps", "10",
                            "--quiet"], capsys)
    assert code == 0, err
    check_output(tmp_path / "cli.mp4", FRAMES, 10, sound)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("source,driving,output,face,fps,start,duration,paste_back,all_faces,side_by_side,best_frame\n"
                    f"{photo},{driving},a.mp4,true,10,,,,,,\n"
                    f"{photo},{driving},b.mp4,,,0.04,0.08,true,,,\n"
                    f"{photo},{driving},c.gif,,,,,true,true,true,\n"
                    f"{photo},{driving},d.mp4,,50,,,,,,2\n")
    code, _, err = run_cli(["batch", jobs, *model, "--quiet"], capsys)
    assert code == 0, err
    check_output(tmp_path / "a.mp4", FRAMES, 10, sound)
    check_output(tmp_path / "b.mp4", 2, FPS, sound, start=0.04)
    check_output(tmp_path / "c.gif", FRAMES, FPS)
    check_output(tmp_path / "d.mp4", FRAMES, 50, sound)
    assert np.array_equal(iio.imread(tmp_path / "a.mp4", index=1), iio.imread(tmp_path / "cli.mp4", index=1))


# The matrix's options as `fom batch` columns (a frames folder is an output without an extension).
BATCH_COLUMNS = ("face", "crop_source", "paste_back", "all_faces", "fps", "start", "duration", "best_frame",
                 "find_best_frame", "side_by_side")


@pytest.mark.parametrize("family", ["fomm", "tpsmm"])
def test_the_matrix_through_batch_columns(inputs, small_tpsmm_checkpoint, tmp_path, capsys, family):
    """Every combination that works, as one `fom batch` file: the model loaded once, one row per pair."""
    photo, driving, sound = inputs
    model = (["--checkpoint", SMALL_CHECKPOINT, "--config", SMALL_CONFIG] if family == "fomm" else
             ["--checkpoint", small_tpsmm_checkpoint, "--config", TPSMM_PARITY / "small.yaml"])
    rows, expected = [], []
    for face_mode, face_options in FACE_MODES.items():
        for variation, (options, name, used, fps) in VARIATIONS.items():
            if (face_mode, variation) in REFUSED:
                continue
            output = f"{face_mode}-{variation}" + ("" if name.endswith("/") else Path(name).suffix)
            cells = {**face_options, **options}
            rows.append(",".join([str(photo), str(driving), output] +
                                 [str(cells.get(column, "")).lower() for column in BATCH_COLUMNS]))
            expected.append((tmp_path / output, used, fps, options.get("start", 0.0)))
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(",".join(("source", "driving", "output") + BATCH_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    code, _, err = run_cli(["batch", jobs, *model, "--batch-size", "3", "--quiet"], capsys)
    assert code == 0, err
    for output, used, fps, start in expected:
        check_output(output, used, fps, sound if output.suffix == ".mp4" else None, start)


def test_batch_refuses_a_row_that_cannot_work_before_the_model_loads(inputs, tmp_path, capsys):
    photo, driving, _ = inputs
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"source,driving,output,face,find_best_frame\n{photo},{driving},a.mp4,true,true\n")
    code, _, err = run_cli(["batch", jobs, "--checkpoint", tmp_path / "not-loaded.pth"], capsys)
    assert code == 2 and "job 1" in err and "--find-best-frame" in err and len(err.strip().splitlines()) == 1


def test_options_are_data_with_one_check():
    assert AnimationOptions(face=True).paste_back and AnimationOptions(paste_back=True).crop_source
    for bad in ({"all_faces": True}, {"fps": 0.5}, {"mode": "sideways"}, {"best_frame": 2, "find_best_frame": True},
                {"face": True, "find_best_frame": True}, {"batch_size": 0}, {"start": -1}):
        with pytest.raises(BadInput):
            AnimationOptions(**bad)
