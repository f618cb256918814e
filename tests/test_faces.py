"""Face detectors on real photos (shipped inside scikit-image and matplotlib), and detector selection."""

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from skimage import color, data

from fom_cli import faces
from fom_cli.media.images import resize_uint8
from fom_cli.errors import BadInput


# Where the astronaut's face is in skimage.data.astronaut() (512x512), as a face detector boxes it.
ASTRONAUT_FACE = (175, 66, 272, 170)


def grace_hopper():
    import imageio.v3 as imageio

    return imageio.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


@pytest.fixture(scope="module")
def dlib_detector():
    return faces.make_detector("dlib")


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it, so no detector or landmark weights are found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


# --- dlib on real photos ---------------------------------------------------------------------------------

def test_dlib_finds_the_astronaut(dlib_detector):
    found = dlib_detector.detect(data.astronaut())
    assert found, "no face found in skimage's astronaut"
    assert faces.iou(found[0].box, ASTRONAUT_FACE) > 0.6
    assert found[0].score > 0.5


def test_dlib_finds_grace_hopper(dlib_detector):
    photo = grace_hopper()
    found = dlib_detector.detect(photo)
    assert len(found) == 1
    left, top, right, bottom = found[0].box
    # Her face is in the upper middle of the portrait, and a good part of it.
    assert 120 < (left + right) / 2 < 400 and 100 < (top + bottom) / 2 < 350
    assert 120 < right - left < 300


def test_dlib_accepts_float_and_gray_images(dlib_detector):
    gray = (color.rgb2gray(data.astronaut()) * 255).round().astype(np.uint8)
    as_float = data.astronaut().astype(np.float32) / 255
    for image in (gray, as_float):
        found = dlib_detector.detect(image)
        assert found and faces.iou(found[0].box, ASTRONAUT_FACE) > 0.6


def test_dlib_finds_a_40_pixel_face(dlib_detector):
    """Small frames are enlarged so that faces of ~40 px fill dlib's 80 px window."""
    scale = 0.42  # the astronaut's ~95 px face becomes ~40 px
    small = resize_uint8(data.astronaut(), (round(512 * scale), round(512 * scale)))
    found = dlib_detector.detect(small)
    assert found
    expected = tuple(value * scale for value in ASTRONAUT_FACE)
    assert faces.iou(found[0].box, expected) > 0.5


def test_boxes_come_back_in_the_pixels_of_a_large_image(dlib_detector):
    """A 1536 px image is detected on a smaller working copy; the box is mapped back to the full size."""
    large = resize_uint8(data.astronaut(), (3 * 512, 3 * 512))
    found = dlib_detector.detect(large)
    assert found
    expected = tuple(value * 3 for value in ASTRONAUT_FACE)
    assert faces.iou(found[0].box, expected) > 0.6


def test_no_face_in_a_photo_without_one(dlib_detector):
    assert dlib_detector.detect(data.coffee()) == []
    assert dlib_detector.detect(data.chelsea()) == []  # a cat is not a (human) face


def test_two_faces_are_found_and_ranked_by_size(dlib_detector):
    small_astronaut = resize_uint8(data.astronaut(), (256, 256))
    canvas = np.full((600, 800, 3), 128, dtype=np.uint8)
    canvas[:, 250:762] = grace_hopper()
    canvas[300:556, 0:256] = small_astronaut
    found = dlib_detector.detect(canvas)
    big_faces = [face for face in found if face.width > 30]
    assert len(big_faces) >= 2
    assert big_faces[0].box[0] > 250  # Grace Hopper's face is the larger one: first
    assert big_faces[1].box[0] < 256 and big_faces[1].box[1] > 300


# --- box arithmetic --------------------------------------------------------------------------------------

def test_iou():
    assert faces.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert faces.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert faces.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_overlapping_boxes_keep_the_best_score():
    weak = faces.Face(box=(0, 0, 10, 10), score=0.2)
    strong = faces.Face(box=(1, 1, 11, 11), score=0.9)
    elsewhere = faces.Face(box=(50, 50, 60, 60), score=0.1)
    assert faces.keep_best_of_overlapping([weak, strong, elsewhere]) == [strong, elsewhere]


def test_most_prominent_is_the_largest_then_the_surest():
    small_sure = faces.Face(box=(0, 0, 10, 10), score=2.0)
    large = faces.Face(box=(20, 20, 60, 60), score=0.5)
    large_surer = faces.Face(box=(100, 20, 140, 60), score=0.9)
    assert faces.most_prominent([small_sure, large, large_surer]) == large_surer
    assert faces.most_prominent([]) is None


# --- choosing a detector ---------------------------------------------------------------------------------

def test_sfd_without_weights_says_which_file_to_put_where(empty_torch_home):
    with pytest.raises(BadInput) as error:
        faces.make_detector("sfd")
    message = str(error.value)
    assert "\n" not in message
    assert faces.SFD_WEIGHTS_FILE in message
    assert str(empty_torch_home / "hub" / "checkpoints" / faces.SFD_WEIGHTS_FILE) in message
    assert not (empty_torch_home / "hub").exists(), "nothing may be created, let alone downloaded"


def test_sfd_with_missing_weights_path(tmp_path):
    with pytest.raises(BadInput, match="s3fd-619a316812.pth"):
        faces.make_detector("sfd", weights=tmp_path / "nowhere.pth")


def test_auto_falls_back_to_dlib_without_sfd_weights(empty_torch_home):
    assert faces.make_detector("auto").name == "dlib"


def test_auto_takes_sfd_when_its_weights_file_is_there(empty_torch_home):
    """A file at the cached path makes auto choose sfd; a file that is not S3FD's weights is a clear error."""
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / faces.SFD_WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(BadInput, match="is not S3FD face detector weights"):
        faces.make_detector("auto", device="cpu")


def test_a_bad_device_or_a_failing_library_is_not_blamed_on_the_weights_file(tmp_path, monkeypatch):
    from face_alignment.detection.sfd import sfd_detector

    from fom_cli.errors import FomError

    weights = tmp_path / faces.SFD_WEIGHTS_FILE
    weights.write_bytes(b"placeholder: these tests never get as far as reading it")
    import torch

    absent = [("gpu", "unknown device"), ("cuda:99", "cuda:99")]
    if not torch.backends.mps.is_available():
        absent.append(("mps", "MPS is not available"))
    for device, expected in absent:
        with pytest.raises(FomError, match=expected) as error:
            faces.make_detector("sfd", weights=weights, device=device)
        assert "not S3FD" not in str(error.value)

    def fails_on_the_device(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(sfd_detector, "SFDDetector", fails_on_the_device)
    with pytest.raises(BadInput) as error:
        faces.make_detector("sfd", weights=weights, device="cpu")
    message = str(error.value)
    assert "could not load the S3FD face detector" in message and "illegal memory access" in message
    assert "not S3FD" not in message and "delete" not in message


def test_unknown_detector():
    with pytest.raises(BadInput, match="unknown face detector"):
        faces.make_detector("haar")


def test_weight_file_names_match_face_alignment():
    """The names written out in faces.py are the ones face-alignment downloads to."""
    from face_alignment.detection.sfd.sfd_detector import models_urls

    assert models_urls["s3fd"] == faces.SFD_WEIGHTS_URL
    assert os.path.basename(models_urls["s3fd"]) == faces.SFD_WEIGHTS_FILE
    fan_weights, sfd_weights = faces.landmark_weights_paths()
    assert fan_weights.name.startswith("2DFAN4") and sfd_weights.name == faces.SFD_WEIGHTS_FILE


@pytest.mark.parametrize("variables", [{"TORCH_HOME": "torch-home"}, {"XDG_CACHE_HOME": "xdg-cache"}, {}])
def test_hub_directory_is_the_one_torch_uses(variables, tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, str(tmp_path / value))
    assert faces.torch_hub_checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"


# --- landmarks for animate --find-best-frame -------------------------------------------------------------

def test_no_landmark_model_without_cached_weights(empty_torch_home):
    assert faces.landmark_model() is None
    assert not (empty_torch_home / "hub").exists(), "nothing may be downloaded"


def test_no_landmark_model_with_only_the_detector_weights(empty_torch_home):
    """Both files are needed: FaceAlignment would download the missing landmark weights."""
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / faces.SFD_WEIGHTS_FILE).write_bytes(b"placeholder")
    assert faces.landmark_model() is None
    assert sorted(path.name for path in checkpoints.iterdir()) == [faces.SFD_WEIGHTS_FILE]


# --- the sfd and landmark code paths, with randomly initialised networks -----------------------------------
# The real weights are downloads, which tests may not make. Networks of the right shape with random
# weights, saved where face-alignment keeps its downloads, run every line of our code on the way to
# face-alignment and back: the results are meaningless, their types and shapes are not.

@pytest.fixture(scope="module")
def random_weights_torch_home(tmp_path_factory):
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    torch_home = tmp_path_factory.mktemp("random-weights-torch-home")
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(s3fd().state_dict(), checkpoints / faces.SFD_WEIGHTS_FILE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        fan_file = faces.landmark_weights_paths()[0].name
    torch.save(FAN(4).state_dict(), checkpoints / fan_file)
    yield torch_home
    for path in checkpoints.iterdir():  # ~180 MB: do not leave them in pytest's kept temporary folders
        path.unlink()


def test_sfd_detector_runs_with_weights_of_the_right_shape(random_weights_torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(random_weights_torch_home))
    detector = faces.make_detector("auto", device="cpu")
    assert detector.name == "sfd"
    # Random weights score every box near chance: keep them all, so there are boxes to check.
    detector.network.filter_threshold = 0.0
    image = resize_uint8(data.astronaut(), (96, 96))
    found = detector.detect(image, max_side=48)  # a working copy of half the size
    raw = detector.network.detect_from_image(resize_uint8(image, (48, 48)))
    assert len(found) == len(raw) > 0
    assert all(isinstance(face, faces.Face) and np.isfinite(face.box).all() for face in found)
    # Boxes come back in the image's pixels: twice those found on the working copy.
    assert sorted(tuple(np.round(face.box, 3)) for face in found) == \
        sorted(tuple(np.round(np.asarray(row[:4], dtype=float) * 2, 3)) for row in raw)
    assert [face.area for face in found] == sorted((face.area for face in found), reverse=True)


def test_landmark_model_runs_with_weights_of_the_right_shape(random_weights_torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(random_weights_torch_home))
    model = faces.landmark_model(device="cpu")
    assert model is not None
    model.detector.network.filter_threshold = 0.0  # random weights: keep every box, so a face is "found"
    points = model.landmarks(resize_uint8(data.astronaut(), (64, 64)))
    assert points is not None and points.shape == (68, 2) and points.dtype == np.float32
    assert np.isfinite(points).all()
