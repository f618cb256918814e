"""Thin-plate splines: the smooth 2-D warps that carry TPSMM's motion (the paper's Eq. 2).

A thin-plate spline through P control points c_i is an affine map plus radial terms,
    T(z) = A [z; 1] + sum_i w_i U(|z - c_i|),   U(r) = r^2 log r^2,
whose coefficients make T(c_i) equal given targets. TPSMM fits num_tps of them per image pair, each on a
group of 5 keypoints: from driving-frame keypoints (control points) to the matching source keypoints
(targets), so T maps driving-frame coordinates to where they come from in the source.
"""

from typing import NamedTuple

import torch

from fom_cli.models.tpsmm.keypoints import POINTS_PER_TPS

# Added to r^2 inside the logarithm: U(0) is 0 * log(1e-9) = 0 instead of 0 * -inf.
LOG_EPSILON = 1e-9
# Added to the system's diagonal (the original's choice): a smoothing spline, solvable even when
# control points coincide.
REGULARISATION = 0.01


def radial_basis(squared_distance):
    """U as a function of r^2: r^2 log r^2."""
    return squared_distance * torch.log(squared_distance + LOG_EPSILON)


class ThinPlateSpline(NamedTuple):
    """A batch of thin-plate splines: N images, G splines each, P control points per spline."""

    control_points: torch.Tensor  # (N, G, P, 2), (x, y)
    affine: torch.Tensor  # (N, G, 2, 3): [A | b], acting on column vectors (x, y, 1)
    weights: torch.Tensor  # (N, G, P, 2): the radial terms' coefficients

    @classmethod
    def fit(cls, control_points, targets):
        """The splines taking control_points (N, G, P, 2) to targets (N, G, P, 2).

        Solves [[U(|c_i - c_j|), [c_i 1]], [[c_j 1]^T, 0]] + 0.01 I times [w; A^T] = [targets; 0] for
        each spline, as the original does: through the explicit inverse, in the original's order of
        operations, so the flows agree to float32 rounding.
        """
        n, groups, points, _ = control_points.shape
        # |c_i - c_j| squared: the original takes the norm and squares it (not the sum of squares; the
        # two differ in the last bit).
        distances = torch.linalg.vector_norm(control_points.unsqueeze(3) - control_points.unsqueeze(2), dim=-1)
        kernel = radial_basis(distances ** 2)
        homogeneous = torch.cat([control_points, control_points.new_ones(n, groups, points, 1)], dim=3)
        system = torch.cat([torch.cat([kernel, homogeneous], dim=3),
                            torch.cat([homogeneous.transpose(2, 3), control_points.new_zeros(n, groups, 3, 3)], dim=3)],
                           dim=2)
        system = system + REGULARISATION * torch.eye(points + 3, dtype=system.dtype, device=system.device)
        right_hand_side = torch.cat([targets, targets.new_zeros(n, groups, 3, 2)], dim=2)
        solution = torch.matmul(torch.inverse(system), right_hand_side)
        return cls(control_points, affine=solution[:, :, points:].transpose(2, 3), weights=solution[:, :, :points])

    def warp(self, coordinates):
        """Transform (M, 2) points by every spline: (N, G, M, 2)."""
        linear, translation = self.affine[..., :2], self.affine[..., 2:]
        affine_part = torch.matmul(linear, coordinates.transpose(0, 1)) + translation  # (N, G, 2, M)
        squared_distances = ((coordinates.view(1, 1, 1, -1, 2) - self.control_points.unsqueeze(3)) ** 2).sum(-1)
        radial_part = torch.matmul(radial_basis(squared_distances).transpose(2, 3), self.weights)  # (N, G, M, 2)
        return affine_part.transpose(2, 3) + radial_part


def keypoint_splines(kp_driving, kp_source):
    """The splines from driving keypoints (N, 5 * G, 2) to the matching source keypoints (batch 1 or N): one
    spline per group of 5 keypoints, as TPSMM pairs them."""
    n, count, _ = kp_driving.shape
    shape = (n, count // POINTS_PER_TPS, POINTS_PER_TPS, 2)
    return ThinPlateSpline.fit(kp_driving.view(shape), kp_source.expand(n, -1, -1).reshape(shape))
