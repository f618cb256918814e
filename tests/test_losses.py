"""The training losses against the original FOMM code (tests/fixtures/fomm-parity, "Training parts").

Every deterministic piece: the image pyramid, the random warp given its saved parameters (frame, warped
coordinates, jacobians), and the four generator losses plus the discriminator's, on the `small` model in
both grid_sample conventions. Losses must agree within 1e-5 relative.
"""

import numpy as np
import pytest
import torch

from conftest import SMALL_CHECKPOINT, SMALL_CONFIG
from fom_cli.checkpoint import load_state, read_checkpoint
from fom_cli.config import load_config
from fom_cli.errors import FomError
from fom_cli.models import build_discriminator, build_generator, build_keypoint_detector
from fom_cli.training.losses import (DiscriminatorFullModel, GeneratorFullModel, ImagePyramid, RandomTransform,
                                     Vgg19, load_vgg19)

TOLERANCE = 1e-5



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def nchw(image):
    return torch.tensor(np.asarray(image, dtype=np.float32)[None]).permute(0, 3, 1, 2)


def assert_close(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE, what=""):
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


def fixture_transform(data, align_corners):
    return RandomTransform.from_parameters(torch.tensor(data["transform_theta"]),
                                           torch.tensor(data["transform_control_points"]),
                                           torch.tensor(data["transform_control_params"]), align_corners)


@pytest.fixture(scope="module")
def networks():
    """The fixture's three networks with the original's weights, in eval mode (as the fixture used)."""
    config = load_config(SMALL_CONFIG)
    checkpoint = read_checkpoint(SMALL_CHECKPOINT)
    built = {}
    for align_corners in (False, True):
        kp_detector = build_keypoint_detector(config["model_params"])
        generator = build_generator(config["model_params"], align_corners=align_corners)
        discriminator = build_discriminator(config["model_params"])
        for name, module in (("kp_detector", kp_detector), ("generator", generator), ("discriminator", discriminator)):
            load_state(module, checkpoint[name], name, SMALL_CHECKPOINT)
            module.eval()
        built[align_corners] = (kp_detector, generator, discriminator)
    return config, built


def test_image_pyramid(reference):
    data = reference[False]
    pyramid = ImagePyramid([1, 0.5, 0.25, 0.125], 3)(nchw(data["source"]))
    for scale in ("1", "0.5", "0.25", "0.125"):
        assert_close(pyramid[f"prediction_{scale}"], data[f"pyramid_{scale}"], atol=1e-6, what=scale)


def test_seeded_transform_draws_what_the_original_draws_after_manual_seed(reference):
    data = reference[False]
    transform = RandomTransform(1, sigma_affine=0.05, sigma_tps=0.005, points_tps=5,
                                generator=torch.Generator().manual_seed(7))
    assert torch.equal(transform.theta, torch.tensor(data["transform_theta"]))
    # torch draws 16 or more normal numbers with a vectorised Box-Muller transform where the CPU has AVX2
    # or AVX-512 and a scalar one elsewhere (ATEN_CPU_CAPABILITY=default): the same numbers to the last
    # bit or two.
    params, expected = transform.control_params, torch.tensor(data["transform_control_params"])
    assert (params - expected).abs().max() <= 4 * torch.finfo(torch.float32).eps * expected.abs().max()
    assert torch.equal(transform.control_points, torch.tensor(data["transform_control_points"]).view(1, -1, 2))


@pytest.mark.parametrize("align_corners", [False, True], ids=["align_corners_false", "align_corners_true"])
def test_transform_frame_coordinates_and_jacobians(reference, align_corners):
    data = reference[align_corners]
    transform = fixture_transform(data, align_corners)
    frame = transform.transform_frame(nchw(data["driving"][0]))
    assert_close(frame, data["transform_frame_driving0"], rtol=0, what="transformed frame")
    keypoints = torch.tensor(data["kp_driving_value"][0])[None]
    assert_close(transform.warp_coordinates(keypoints), data["transform_warp_kp_driving0"], what="warped")
    assert_close(transform.jacobian(keypoints), data["transform_jacobian_kp_driving0"], what="jacobian")


def test_jacobian_is_the_derivative_of_the_warp():
    """The written-out jacobian equals autograd's, as the original computes it, at random points."""
    transform = RandomTransform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(3))
    points = (torch.rand(2, 30, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1)
    points.requires_grad_(True)
    warped = transform.warp_coordinates(points)
    rows = [torch.autograd.grad(warped[..., i].sum(), points, retain_graph=True)[0] for i in range(2)]
    torch.testing.assert_close(transform.jacobian(points), torch.stack(rows, dim=-2))


@pytest.mark.parametrize("align_corners", [False, True], ids=["align_corners_false", "align_corners_true"])
def test_generator_and_discriminator_losses(reference, networks, align_corners):
    data = reference[align_corners]
    config, built = networks
    kp_detector, generator, discriminator = built[align_corners]
    train_params = config["train_params"]
    source, driving = nchw(data["source"]), nchw(data["driving"][0])

    # The fixture seeded torch with 7 right before the original's forward: the same warp, drawn here.
    transform = RandomTransform(1, **train_params["transform_params"], generator=torch.Generator().manual_seed(7),
                                align_corners=align_corners)
    full = GeneratorFullModel(kp_detector, generator, train_params)
    losses, generated = full(source, driving, discriminator=discriminator, transform=transform)

    assert set(losses) == {"gen_gan", "feature_matching", "equivariance_value", "equivariance_jacobian"}
    assert_close(generated["prediction"], data["train_generated_prediction"], rtol=0, what="prediction")
    assert_close(generated["transformed_kp"]["value"], data["train_transformed_kp_value"], rtol=0)
    assert_close(generated["transformed_kp"]["jacobian"], data["train_transformed_kp_jacobian"], rtol=0)
    for name in losses:
        assert_close(losses[name], data[f"loss_{name}"], atol=0, what=name)

    disc_losses = DiscriminatorFullModel(discriminator, train_params)(driving, generated["prediction"],
                                                                      generated["kp_driving"])
    assert_close(disc_losses["disc_gan"], data["loss_disc_gan"], atol=0, what="disc_gan")


def test_losses_backpropagate_into_the_trainable_networks_only(networks):
    config, built = networks
    kp_detector, generator, discriminator = built[False]
    full = GeneratorFullModel(kp_detector, generator, config["train_params"])
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    losses, _ = full(image, image.flip(-1), discriminator=discriminator)
    sum(losses.values()).backward()
    assert kp_detector.kp.weight.grad is not None and generator.final.weight.grad is not None
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())   # unfrozen afterwards
    for module in (kp_detector, generator):
        module.zero_grad(set_to_none=True)


def test_zero_order_models_skip_the_jacobian_loss():
    config = load_config(SMALL_CONFIG)
    model_params = config["model_params"]
    model_params["common_params"] = dict(model_params["common_params"], estimate_jacobian=False)
    torch.manual_seed(0)
    full = GeneratorFullModel(build_keypoint_detector(model_params), build_generator(model_params),
                              config["train_params"])
    image = torch.rand(1, 3, 128, 128)
    losses, _ = full(image, image, discriminator=build_discriminator(model_params))
    assert "equivariance_value" in losses and "equivariance_jacobian" not in losses


def test_pixel_pyramid_replaces_the_perceptual_loss_without_vgg():
    config = load_config(SMALL_CONFIG)
    train_params = dict(config["train_params"], loss_weights={"perceptual": [1, 2, 3, 4, 0]})
    torch.manual_seed(0)
    full = GeneratorFullModel(build_keypoint_detector(config["model_params"]),
                              build_generator(config["model_params"]), train_params)
    image = torch.rand(1, 3, 128, 128)
    losses, generated = full(image, image)
    real, fake = full.pyramid(image), full.pyramid(generated["prediction"])
    expected = 10 * sum((real[key] - fake[key]).abs().mean() for key in real)
    assert set(losses) == {"pixel_l1"}
    torch.testing.assert_close(losses["pixel_l1"], expected)


def test_perceptual_loss_with_vgg_weights_from_a_file(tmp_path):
    """--vgg-weights: torchvision's file layout (features.* keys); the loss is the weighted feature L1."""
    torch.manual_seed(0)
    random_vgg = Vgg19()
    path = tmp_path / "vgg.pth"
    torch.save({f"features.{key}": value for key, value in
                torch.nn.Sequential(*[layer for part in random_vgg.slices for layer in part]).state_dict().items()},
               path)
    vgg = load_vgg19(path)
    for ours, theirs in zip(vgg.parameters(), random_vgg.parameters()):
        assert torch.equal(ours, theirs) and not ours.requires_grad

    config = load_config(SMALL_CONFIG)
    train_params = dict(config["train_params"], scales=[1, 0.5], loss_weights={"perceptual": [1, 1, 1, 1, 1]})
    full = GeneratorFullModel(build_keypoint_detector(config["model_params"]),
                              build_generator(config["model_params"]), train_params, vgg=vgg)
    image = torch.rand(1, 3, 64, 64)
    losses, generated = full(image, image)
    real, fake = full.pyramid(image), full.pyramid(generated["prediction"])
    expected = sum((a - b).abs().mean() for key in real for a, b in zip(vgg(fake[key]), vgg(real[key])))
    torch.testing.assert_close(losses["perceptual"], expected)


def test_missing_vgg_weights_say_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FomError) as error:
        load_vgg19()
    message = str(error.value)
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message and "--no-perceptual" in message
    with pytest.raises(FomError, match="--vgg-weights"):
        load_vgg19(tmp_path / "nowhere.pth")
