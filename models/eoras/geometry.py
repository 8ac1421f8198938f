"""Camera geometry of EoRaS: intrinsics from a field of view, the per-track crop and its intrinsics, the BEV grid.

Pixel convention: K maps a camera point (x right, y down, z forward; OpenCV axes) to *continuous* pixel
coordinates, where pixel column i covers [i, i + 1) and its centre is i + 0.5 (the generator's K has
c = (W/2, H/2): the image centre).  A crop box (x0, y0, x1, y1) in the same coordinates resized to S × S maps
x ↦ (x − x0)·S/(x1 − x0), so the crop's intrinsics are ``K_crop = A @ K`` with A = [[sx, 0, −sx·x0],
[0, sy, −sy·y0], [0, 0, 1]], sx = S/(x1 − x0), sy = S/(y1 − y0): focal lengths scale, the principal point
shifts and scales (``crop_intrinsics``).  A feature map of the crop at any stride covers the same extent, so a
projected point (u, v) in crop pixels samples it at ``grid_sample`` coordinates (2u/S − 1, 2v/S − 1) with
``align_corners=False``.  The crop itself is cut with ``roi_align(aligned=True)``, which samples output pixel j at
x0 + (j + 0.5)·(x1 − x0)/S: the same mapping.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from amodal.errors import ConfigError


def intrinsics_from_fov(width: int, height: int, hfov_deg: float) -> torch.Tensor:
    """float32[3, 3] pinhole K of a ``width`` × ``height`` image with horizontal field of view ``hfov_deg``
    (square pixels, principal point at the image centre) — the fallback when a source has no calibration."""
    if width < 1 or height < 1:
        raise ConfigError(f"intrinsics_from_fov: image size must be positive, got {width}x{height}")
    if not 0.0 < hfov_deg < 180.0:
        raise ConfigError(f"intrinsics_from_fov: hfov_deg must be in (0, 180), got {hfov_deg}")
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)


def kubric_to_pixel_intrinsics(K_kubric: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Kubric's normalised K ([[fx/W, 0, −cx/W], [0, −fy/H, −cy/H], [0, 0, −1]], Blender camera axes) → pixel K in
    our convention (OpenCV axes): float32[..., 3, 3]."""
    K = torch.as_tensor(K_kubric, dtype=torch.float32)
    out = torch.zeros_like(K)
    out[..., 0, 0] = K[..., 0, 0] * width
    out[..., 1, 1] = -K[..., 1, 1] * height
    out[..., 0, 2] = -K[..., 0, 2] * width
    out[..., 1, 2] = -K[..., 1, 2] * height
    out[..., 2, 2] = 1.0
    return out


def enlarged_crop_boxes(boxes_xyxy: torch.Tensor, image_width: int, image_height: int,
                        enlarge: float = 2.0) -> torch.Tensor:
    """float32[N, 4] integer-valued crop boxes (x0, y0, x1, y1), x1 exclusive: ``enlarge`` × the visible box about
    its centre, clipped to the image, at least one pixel."""
    b = boxes_xyxy.to(torch.float32)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    half_w = (b[:, 2] - b[:, 0]).clamp(min=1.0) * enlarge / 2
    half_h = (b[:, 3] - b[:, 1]).clamp(min=1.0) * enlarge / 2
    x0 = torch.floor(cx - half_w).clamp(0, image_width - 1)
    y0 = torch.floor(cy - half_h).clamp(0, image_height - 1)
    x1 = torch.maximum(torch.ceil(cx + half_w).clamp(max=image_width), x0 + 1)
    y1 = torch.maximum(torch.ceil(cy + half_h).clamp(max=image_height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def crop_intrinsics(K: torch.Tensor, crop_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """float32[N, 3, 3] intrinsics of the crops: K float[N, 3, 3] (or [3, 3], shared) of the image, crop boxes
    float[N, 4] (x0, y0, x1, y1) resized to ``size`` × ``size`` (see the module docstring)."""
    boxes = crop_boxes.to(torch.float32)
    n = boxes.shape[0]
    K = torch.as_tensor(K, dtype=torch.float32, device=boxes.device)
    K = K.expand(n, 3, 3) if K.ndim == 2 else K
    sx = size / (boxes[:, 2] - boxes[:, 0])
    sy = size / (boxes[:, 3] - boxes[:, 1])
    A = torch.zeros(n, 3, 3, dtype=torch.float32, device=boxes.device)
    A[:, 0, 0], A[:, 0, 2] = sx, -sx * boxes[:, 0]
    A[:, 1, 1], A[:, 1, 2] = sy, -sy * boxes[:, 1]
    A[:, 2, 2] = 1.0
    return A @ K


def crop_images(images: torch.Tensor, image_index: torch.Tensor, crop_boxes: torch.Tensor, size: int,
                sampling_ratio: int = 1) -> torch.Tensor:
    """float[N, C, size, size] bilinear crops of ``images`` float[B, C, H, W]: crop n cut from image
    ``image_index[n]`` at ``crop_boxes[n]`` (x0, y0, x1, y1)."""
    rois = torch.cat([image_index.to(images.dtype)[:, None], crop_boxes.to(images.dtype)], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio,
                     aligned=True)


def paste_masks(probs: torch.Tensor, crop_boxes: torch.Tensor, image_width: int, image_height: int,
                threshold: float = 0.5) -> torch.Tensor:
    """bool[N, H, W]: mask probabilities float[N, S, S] of the crops resized back into their boxes and thresholded;
    pixels outside a box are background."""
    out = torch.zeros(probs.shape[0], image_height, image_width, dtype=torch.bool, device=probs.device)
    for n, (x0, y0, x1, y1) in enumerate(crop_boxes.round().to(torch.int64).tolist()):
        w, h = max(x1 - x0, 1), max(y1 - y0, 1)
        resized = F.interpolate(probs[n][None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        region = resized > threshold
        out[n, y0:y0 + h, x0:x0 + w] = region[: image_height - y0, : image_width - x0]
    return out


def bev_grid_points(width_m: tuple[float, float], height_m: tuple[float, float], depth_m: tuple[float, float],
                    width_bins: int, height_bins: int, depth_bins: int, pitch_rad: float = 0.0) -> torch.Tensor:
    """float32[3, Wb·Hb·Db] cell centres (x, y, z) of the BEV grid in camera axes, ordered width-major then height,
    then depth (the official layout), rotated about the x axis by ``pitch_rad``."""
    def centres(lo_hi: tuple[float, float], n: int) -> torch.Tensor:
        lo, hi = lo_hi
        step = (hi - lo) / n
        return torch.linspace(lo + step / 2, hi - step / 2, n, dtype=torch.float64)

    X, Y, Z = torch.meshgrid(centres(width_m, width_bins), centres(height_m, height_bins),
                             centres(depth_m, depth_bins), indexing="ij")
    points = torch.stack([X, Y, Z], dim=3).reshape(-1, 3).T
    if pitch_rad:
        c, s = math.cos(pitch_rad), math.sin(pitch_rad)
        R = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
        points = R @ points
    return points.to(torch.float32)


def project_to_grid(K: torch.Tensor, points: torch.Tensor, size: int, projection: str = "crop") -> torch.Tensor:
    """float[B, P, 2] ``grid_sample`` coordinates of camera points float[3, P] under K float[B, 3, 3].

    ``crop``: K gives pixels of the ``size``² crop; coordinates 2u/size − 1 (``align_corners=False``).
    ``image_normalised``: K gives [0, 1]² coordinates (the official code's Kubric K); coordinates 2(u − 0.5)
    (``align_corners=True``, as the official code). Points at or behind the camera (z ≤ 1e-6 after K) get
    coordinates far outside [−1, 1], i.e. zero features."""
    proj = K.to(points.dtype) @ points  # [B, 3, P]
    z = proj[:, 2:3]
    valid = z.abs() > 1e-6
    if projection == "crop":
        valid = valid & (z > 0)
    uv = proj[:, :2] / torch.where(valid, z, torch.ones_like(z))
    if projection == "crop":
        grid = 2.0 * uv / size - 1.0
    elif projection == "image_normalised":
        grid = 2.0 * (uv - 0.5)
    else:
        raise ConfigError(f"project_to_grid: unknown projection {projection!r}")
    grid = torch.where(valid, grid, torch.full_like(grid, -4.0))
    return grid.transpose(1, 2)
