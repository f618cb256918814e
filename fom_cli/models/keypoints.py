"""KeypointDetector: image -> K keypoints, each with a value (x, y) and a local affine jacobian.

An hourglass predicts one heatmap per keypoint; a softmax turns each into a probability map whose mean
position is the keypoint (the paper's "soft-argmax"). The jacobian of each keypoint is the average of a
predicted 2x2 field, weighted by the same probability map.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import ConvexHull, QhullError
from torch import nn

from fom_cli.models.blocks import AntiAliasInterpolation2d, Hourglass, make_coordinate_grid, output_head


class KeypointDetector(nn.Module):
    def __init__(self, block_expansion, num_kp, num_channels, max_features, num_blocks, temperature,
                 estimate_jacobian=False, scale_factor=1, single_jacobian_map=False, pad=0):
        super().__init__()
        self.predictor = Hourglass(block_expansion, in_features=num_channels, max_features=max_features,
                                   num_blocks=num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=(7, 7), padding=pad)

        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps,
                                      kernel_size=(7, 7), padding=pad)
            # Start from the identity: every keypoint moves rigidly until training says otherwise.
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1, 0, 0, 1] * self.num_jacobian_maps, dtype=torch.float32))
        else:
            self.jacobian = None

        self.num_kp = num_kp
        self.temperature = temperature
        self.scale_factor = scale_factor
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def forward(self, image):
        """(N, C, H, W) in [0, 1] -> {'value': (N, K, 2), 'jacobian': (N, K, 2, 2) when estimated}."""
        if self.scale_factor != 1:
            image = self.down(image)
        feature_map = self.predictor(image)

        logits = output_head(self.kp, feature_map)
        n, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(n, k, -1) / self.temperature, dim=2).view(n, k, h, w)

        grid = make_coordinate_grid(h, w, heatmap.device, heatmap.dtype)
        keypoints = {"value": (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))}

        if self.jacobian is not None:
            jacobian_map = output_head(self.jacobian, feature_map).reshape(n, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(n, k, 4, -1).sum(dim=-1)
            keypoints["jacobian"] = jacobian.view(n, k, 2, 2)
        return keypoints


# The size of a keypoint cloud, for relative motion's adapt-scale (FOMM's and TPSMM's).
def convex_hull_area(points):
    """Area of the convex hull of (M, 2) points, as the original demo computes it (scipy's ConvexHull).
    0 for a degenerate set: fewer than 3 distinct points, or all of them on one line."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:  # Qhull needs 3 (and for none at all raises ValueError, not QhullError)
        return 0.0
    try:
        return float(ConvexHull(points).volume)  # a 2-D hull's "volume" is its area
    except QhullError:  # points all on one line or one point: Qhull refuses a flat set instead of answering 0
        return 0.0
