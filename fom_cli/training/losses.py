"""The training losses of the paper (Sec. 3.3), computed as the original FOMM code computes them.

  reconstruction   multi-scale perceptual loss: L1 between VGG19 features of the prediction and of the
                   driving frame, on every level of an image pyramid (or, without VGG weights, L1
                   between the pyramid images themselves: `--no-perceptual`)
  equivariance     the keypoints of a randomly warped frame, warped back, must be the frame's keypoints
                   (values), and the jacobians must compose to the identity
  adversarial      least-squares GAN with the multi-scale discriminator, plus feature matching on the
                   discriminator's intermediate maps (the -adv configs)

Two modules hold them, as in the original: GeneratorFullModel (everything that trains the keypoint
detector and the generator) and DiscriminatorFullModel (the discriminator's own loss). Each is one
forward pass, so DistributedDataParallel can wrap each of them whole.

Loss names and weights follow train_params.loss_weights: perceptual (one weight per VGG layer),
generator_gan, discriminator_gan, feature_matching (one weight per discriminator block),
equivariance_value, equivariance_jacobian.
"""

import contextlib
from pathlib import Path

import torch
from torch import nn

from fom_cli.errors import FomError
from fom_cli.models.blocks import AntiAliasInterpolation2d, grid_sample, make_coordinate_grid
from fom_cli.models.discriminator import scale_key

VGG19_FILE = "vgg19-dcbb9e9d.pth"   # torchvision's ImageNet weights, as its cache names them
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"


# --- the image pyramid --------------------------------------------------------------------------------------

class ImagePyramid(nn.Module):
    """The image at several scales (1, 1/2, 1/4, ...), each blurred before it is subsampled.

    Returns {'prediction_<scale>': image}, the keys the discriminator reads (str(scale): 1, 0.5, ...).
    """

    def __init__(self, scales, num_channels):
        super().__init__()
        self.scales = list(scales)
        self.downs = nn.ModuleDict({scale_key(s): AntiAliasInterpolation2d(num_channels, s) for s in self.scales})

    def forward(self, image):
        return {f"prediction_{s}": self.downs[scale_key(s)](image) for s in self.scales}


# --- VGG19 for the perceptual loss --------------------------------------------------------------------------

class Vgg19(nn.Module):
    """VGG19's convolutional part, cut after relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1.

    Frozen: its weights are ImageNet's and never train. Inputs are [0, 1] images; the ImageNet mean and
    standard deviation are applied here.
    """

    # features[a:b] for each slice, as the original cuts torchvision's vgg19().features
    SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))

    def __init__(self, features_state_dict=None):
        import torchvision

        super().__init__()
        # Up to relu5_1: the deeper layers are not used.
        features = torchvision.models.vgg19(weights=None).features[:self.SLICES[-1][1]]
        if features_state_dict is not None:
            used = {key: value for key, value in features_state_dict.items() if int(key.split(".")[0]) < len(features)}
            features.load_state_dict(used)
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in self.SLICES)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, image):
        out = (image - self.mean) / self.std
        feature_maps = []
        for part in self.slices:
            out = part(out)
            feature_maps.append(out)
        return feature_maps


def default_vgg19_path():
    """Where torchvision caches the ImageNet VGG19 weights: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def load_vgg19(weights_path=None):
    """A frozen Vgg19 with ImageNet weights, from `weights_path` or torchvision's cache.

    Never downloads: without a file, stops with a message that says which file to put where.
    """
    path = Path(weights_path) if weights_path else default_vgg19_path()
    if not path.is_file():
        if weights_path:
            raise FomError(f"--vgg-weights {path} does not exist; give the path of torchvision's {VGG19_FILE} "
                           f"({VGG19_URL})")
        raise FomError(f"the perceptual loss needs VGG19's ImageNet weights: download {VGG19_URL} to {path} "
                       "(or pass --vgg-weights PATH), or train with --no-perceptual (pixel L1 on the image "
                       "pyramid instead)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FomError(f"cannot read VGG19 weights from {path} ({type(error).__name__}); "
                       f"download {VGG19_URL} again") from None
    # torchvision's file holds the whole classifier too: keep the convolutional part.
    features = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    try:
        return Vgg19(features)
    except (RuntimeError, ValueError):
        raise FomError(f"{path} does not hold torchvision's VGG19 weights; download {VGG19_URL}") from None


# --- the random warp of the equivariance losses -------------------------------------------------------------

class RandomTransform:
    """A random smooth warp of the plane: an affine map plus a thin-plate spline (Sec. 3.3).

    Coordinates z = (x, y) in [-1, 1] (the keypoints' system) map to
        T(z) = A z + b + sum_k w_k U(|z - p_k|_1),   U(r) = r^2 log(r),
    with A, b = identity + N(0, sigma_affine) noise, control points p_k on a points_tps x points_tps
    grid and weights w_k ~ N(0, sigma_tps). The spline term moves x and y by the same amount and uses
    the L1 distance: the original's choices, kept for parity.

    Draws come from `generator` in the original's order (theta, then the spline weights), so
    torch.manual_seed(s) before the original's Transform and torch.Generator().manual_seed(s) here
    give the same warp.
    """

    def __init__(self, batch_size, sigma_affine, sigma_tps=None, points_tps=None, generator=None,
                 device="cpu", align_corners=True):
        # Drawn on the CPU, so a seed means the same warp on every device.
        noise = torch.randn(batch_size, 2, 3, generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3).view(1, 2, 3)).to(device)
        self.spline = sigma_tps is not None and points_tps is not None
        if self.spline:
            self.control_points = make_coordinate_grid(points_tps, points_tps, device).view(1, -1, 2)
            params = torch.randn(batch_size, 1, points_tps ** 2, generator=generator) * sigma_tps
            self.control_params = params.to(device)
        self.batch_size = batch_size
        self.align_corners = align_corners

    @classmethod
    def from_parameters(cls, theta, control_points=None, control_params=None, align_corners=True):
        """A given warp (e.g. the original's saved parameters)."""
        transform = cls.__new__(cls)
        transform.theta = theta
        transform.spline = control_points is not None
        if transform.spline:
            transform.control_points = control_points.reshape(1, -1, 2)
            transform.control_params = control_params
        transform.batch_size = theta.shape[0]
        transform.align_corners = align_corners
        return transform

    def _spline_distances(self, coordinates):
        """Per-axis offsets from every control point (N, P, C, 2) and their L1 norms (N, P, C)."""
        offsets = coordinates.unsqueeze(2) - self.control_points.unsqueeze(1).to(coordinates.dtype)
        return offsets, offsets.abs().sum(-1)

    def warp_coordinates(self, coordinates):
        """(N, P, 2) points -> T(points)."""
        theta = self.theta.to(coordinates.dtype).unsqueeze(1)
        warped = (theta[..., :2] @ coordinates.unsqueeze(-1) + theta[..., 2:]).squeeze(-1)
        if self.spline:
            _, distances = self._spline_distances(coordinates)
            # 1e-6 keeps log finite at a control point (where r^2 makes the term 0 anyway).
            radial = distances ** 2 * torch.log(distances + 1e-6)
            shift = (radial * self.control_params.to(coordinates.dtype)).sum(dim=2)
            warped = warped + shift.unsqueeze(-1)
        return warped

    def jacobian(self, coordinates):
        """(N, P, 2, 2): dT/dz at each point; row i is the gradient of T's i-th coordinate.

        Written out rather than taken with autograd (as the original does): the same values, with no
        need for gradients to be enabled. d|z - p|_1 / dz = sign(z - p), as autograd takes it.
        """
        theta = self.theta.to(coordinates.dtype)
        jacobian = theta[:, :, :2].unsqueeze(1).expand(-1, coordinates.shape[1], 2, 2)
        if self.spline:
            offsets, distances = self._spline_distances(coordinates)
            radial_slope = 2 * distances * torch.log(distances + 1e-6) + distances ** 2 / (distances + 1e-6)
            weights = (radial_slope * self.control_params.to(coordinates.dtype)).unsqueeze(-1)
            gradient = (weights * torch.sign(offsets)).sum(dim=2)   # (N, P, 2), the same for both rows
            jacobian = jacobian + gradient.unsqueeze(2)
        return jacobian

    def transform_frame(self, frame):
        """Warp images (N, C, H, W): output pixel z shows input pixel T(z), edges reflected."""
        n, _, h, w = frame.shape
        grid = make_coordinate_grid(h, w, frame.device, frame.dtype).view(1, h * w, 2).expand(n, -1, -1)
        grid = self.warp_coordinates(grid).view(n, h, w, 2)
        return grid_sample(frame, grid, self.align_corners, padding_mode="reflection")


# --- the two full models ------------------------------------------------------------------------------------

def detach_keypoints(keypoints):
    return {name: value.detach() for name, value in keypoints.items()}


@contextlib.contextmanager
def frozen(module):
    """Run `module` without recording gradients for its own weights (inputs still get theirs).

    The generator's GAN losses go through the discriminator, but its weights train in their own step:
    freezing them here spares that work and keeps the discriminator's DistributedDataParallel hooks
    out of the generator's backward pass.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in trainable:
            p.requires_grad_(True)


def loss_weights(train_params):
    """The original's loss_weights, with absent entries as 0."""
    weights = dict(train_params.get("loss_weights", {}))
    for name in ("generator_gan", "discriminator_gan", "equivariance_value", "equivariance_jacobian"):
        weights.setdefault(name, 0)
    for name in ("perceptual", "feature_matching"):
        weights[name] = list(weights.get(name) or [])
    return weights


class GeneratorFullModel(nn.Module):
    """Keypoint detector + generator and every loss that trains them, in one forward pass.

    forward(source, driving, discriminator, transform) -> (losses, generated): losses maps a name to
    its weighted scalar, generated holds the prediction and what the visualisation shows.
    `discriminator` is passed per call (not a submodule) because it trains in its own step.
    `vgg`: a Vgg19 for the perceptual loss, or None for pixel L1 on the pyramid (`--no-perceptual`).
    """

    def __init__(self, kp_detector, generator, train_params, vgg=None):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.weights = loss_weights(train_params)
        self.transform_params = train_params.get("transform_params", {})
        self.pyramid = ImagePyramid(train_params.get("scales", [1]), generator.num_channels)
        self.vgg = vgg

    def forward(self, source, driving, discriminator=None, transform=None):
        """transform: the equivariance warp (a RandomTransform); None draws one from torch's global
        generator, as the original does."""
        kp_source = self.kp_detector(source)
        kp_driving = self.kp_detector(driving)
        generated = self.generator(source, kp_source=kp_source, kp_driving=kp_driving)
        generated.update(kp_source=kp_source, kp_driving=kp_driving)

        pyramid_real = self.pyramid(driving)
        pyramid_generated = self.pyramid(generated["prediction"])
        losses = {}
        if sum(self.weights["perceptual"]) != 0:
            losses.update(self.reconstruction_loss(pyramid_real, pyramid_generated))
        if self.weights["generator_gan"] != 0:
            losses.update(self.gan_losses(discriminator, pyramid_real, pyramid_generated, kp_driving))
        if self.weights["equivariance_value"] + self.weights["equivariance_jacobian"] != 0:
            losses.update(self.equivariance_losses(driving, kp_driving, transform, generated))
        return losses, generated

    def reconstruction_loss(self, pyramid_real, pyramid_generated):
        weights = self.weights["perceptual"]
        total = 0
        if self.vgg is None:
            # Without VGG: the same pyramid, compared pixel by pixel, each scale weighted by the sum of
            # the layer weights (what one scale of the perceptual loss weighs in total).
            for key in pyramid_real:
                total = total + sum(weights) * (pyramid_generated[key] - pyramid_real[key]).abs().mean()
            return {"pixel_l1": total}
        for key in pyramid_real:
            features_generated, features_real = self.vgg(pyramid_generated[key]), self.vgg(pyramid_real[key])
            for weight, generated, real in zip(weights, features_generated, features_real):
                total = total + weight * (generated - real.detach()).abs().mean()
        return {"perceptual": total}

    def gan_losses(self, discriminator, pyramid_real, pyramid_generated, kp_driving):
        """Least squares: the discriminator should take generated frames for real (1); and its feature maps
        of generated and real frames should match."""
        kp = detach_keypoints(kp_driving)
        with frozen(discriminator):
            maps_generated = discriminator(pyramid_generated, kp=kp)
            maps_real = discriminator(pyramid_real, kp=kp)
        total = 0
        for scale in discriminator.scales:
            prediction_map = maps_generated[f"prediction_map_{scale}"]
            total = total + self.weights["generator_gan"] * ((1 - prediction_map) ** 2).mean()
        losses = {"gen_gan": total}

        if sum(self.weights["feature_matching"]) != 0:
            total = 0
            for scale in discriminator.scales:
                real_maps = maps_real[f"feature_maps_{scale}"]
                generated_maps = maps_generated[f"feature_maps_{scale}"]
                for weight, real, generated in zip(self.weights["feature_matching"], real_maps, generated_maps):
                    if weight != 0:
                        total = total + weight * (real - generated).abs().mean()
            losses["feature_matching"] = total
        return losses

    def equivariance_losses(self, driving, kp_driving, transform, generated):
        """Keypoints must move with the image: detect them on a randomly warped copy of the driving frame,
        warp them back, and compare."""
        weights = self.weights
        if transform is None:
            transform = RandomTransform(driving.shape[0], **self.transform_params, device=driving.device,
                                        align_corners=self.generator.align_corners)
        transformed_frame = transform.transform_frame(driving)
        transformed_kp = self.kp_detector(transformed_frame)
        generated.update(transformed_frame=transformed_frame, transformed_kp=transformed_kp)
        losses = {}

        if weights["equivariance_value"] != 0:
            warped_back = transform.warp_coordinates(transformed_kp["value"])
            difference = (kp_driving["value"] - warped_back).abs().mean()
            losses["equivariance_value"] = weights["equivariance_value"] * difference

        # Zero-order models (no jacobians) have nothing to compare: skip, where the original fails.
        if weights["equivariance_jacobian"] != 0 and "jacobian" in kp_driving:
            # J_driving^-1 (dT J_transformed) must be the identity.
            jacobian_transformed = transform.jacobian(transformed_kp["value"]) @ transformed_kp["jacobian"]
            product = torch.inverse(kp_driving["jacobian"]) @ jacobian_transformed
            identity = torch.eye(2, dtype=product.dtype, device=product.device).view(1, 1, 2, 2)
            difference = (identity - product).abs().mean()
            losses["equivariance_jacobian"] = weights["equivariance_jacobian"] * difference
        return losses


class DiscriminatorFullModel(nn.Module):
    """The discriminator's least-squares GAN loss: real frames towards 1, generated ones towards 0."""

    def __init__(self, discriminator, train_params, num_channels=3):
        super().__init__()
        self.discriminator = discriminator
        self.weights = loss_weights(train_params)
        self.pyramid = ImagePyramid(discriminator.scales, num_channels)

    def forward(self, driving, prediction, kp_driving):
        kp = detach_keypoints(kp_driving)
        maps_generated = self.discriminator(self.pyramid(prediction.detach()), kp=kp)
        maps_real = self.discriminator(self.pyramid(driving), kp=kp)
        total = 0
        for scale in self.discriminator.scales:
            key = f"prediction_map_{scale}"
            value = (1 - maps_real[key]) ** 2 + maps_generated[key] ** 2
            total = total + self.weights["discriminator_gan"] * value.mean()
        return {"disc_gan": total}
