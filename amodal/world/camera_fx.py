"""What a real camera does to a street world frame: lens blur, motion blur, colour response, vignetting, sensor
noise and H.264 compression (a PyAV libx264 encode/decode round trip at the scene's CRF).  None of it moves a
pixel's ownership: masks stay those of the sharp, noise-free render.

Images are float32[H, W, 3] in [0, 1] unless said otherwise; everything is deterministic given its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True, slots=True)
class CameraFX:
    """One scene's camera: ``background_blur_px`` (defocus of everything behind the objects, sigma),
    ``blur_px`` (whole-frame lens blur, sigma), ``shake_px``/``shake_angle`` (camera motion blur length and
    direction), ``exposure_frames`` (object motion blur: image displacement during one exposure, in frames),
    white balance gains, ``gamma``, ``contrast``, ``saturation``, ``vignette`` (corner darkening),
    ``noise_std``/``chroma_noise_std`` (sensor noise), ``soften`` (down-up resampling factor ≥ 1),
    ``crf`` (libx264 quality; 0 = no compression)."""

    background_blur_px: float = 0.0
    blur_px: float = 0.0
    shake_px: float = 0.0
    shake_angle: float = 0.0
    exposure_frames: float = 0.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    vignette: float = 0.0
    noise_std: float = 0.0
    chroma_noise_std: float = 0.0
    soften: float = 1.0
    crf: int = 0


def sample_fx(rng: np.random.Generator) -> CameraFX:
    """A random camera, from clean to poor (domain randomisation over what surveillance and hand-held cameras do)."""
    wb = np.exp(rng.normal(0, 0.07, 3))
    return CameraFX(
        background_blur_px=float(rng.choice([0.0, rng.uniform(0.5, 1.5), rng.uniform(1.5, 4.0)], p=[0.5, 0.3, 0.2])),
        blur_px=float(rng.choice([0.0, rng.uniform(0.3, 1.2)], p=[0.5, 0.5])),
        shake_px=float(rng.choice([0.0, rng.uniform(1.0, 4.0)], p=[0.8, 0.2])),
        shake_angle=float(rng.uniform(0, np.pi)),
        exposure_frames=float(rng.choice([0.0, rng.uniform(0.2, 0.8)], p=[0.4, 0.6])),
        white_balance=tuple(float(x) for x in wb / wb.mean()),  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.8, 1.25)),
        contrast=float(rng.uniform(0.75, 1.2)),
        saturation=float(rng.uniform(0.55, 1.15)),
        vignette=float(rng.uniform(0.0, 0.35)),
        noise_std=float(rng.uniform(0.003, 0.03)),
        chroma_noise_std=float(rng.uniform(0.0, 0.015)),
        soften=float(rng.choice([1.0, rng.uniform(1.2, 2.2)], p=[0.6, 0.4])),
        crf=int(rng.choice([0, int(rng.integers(20, 40))], p=[0.25, 0.75])),
    )


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")


def line_blur(img: np.ndarray, length_px: float, angle: float) -> np.ndarray:
    """Motion blur of ``length_px`` along the image axis nearest to ``angle`` (a box filter: cheap, and at these
    lengths indistinguishable from the oblique one)."""
    n = int(round(length_px))
    if n < 2:
        return img
    axis = 1 if abs(np.cos(angle)) >= abs(np.sin(angle)) else 0
    return ndimage.uniform_filter1d(img, size=n, axis=axis, mode="nearest")


def soften(img: np.ndarray, factor: float) -> np.ndarray:
    """Down- and up-sample by ``factor`` (bilinear): the softness of a low-resolution sensor or a digital zoom."""
    from PIL import Image

    h, w = img.shape[:2]
    small = (max(2, round(w / factor)), max(2, round(h / factor)))
    chans = [Image.fromarray(np.ascontiguousarray(img[..., c])).resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
             for c in range(img.shape[2])]
    return np.stack([np.asarray(c, np.float32) for c in chans], axis=-1)


def apply_lens_and_response(img: np.ndarray, fx: CameraFX) -> np.ndarray:
    """Whole-frame lens blur, camera shake, resampling softness, white balance, gamma, contrast, saturation
    and vignetting."""
    out = gaussian_blur(img, fx.blur_px)
    if fx.shake_px >= 1.0:
        out = line_blur(out, fx.shake_px, fx.shake_angle)
    if fx.soften > 1.05:
        out = soften(out, fx.soften)
    out = out * np.asarray(fx.white_balance, np.float32)
    out = np.clip(out, 0, 1) ** fx.gamma
    out = (out - 0.5) * fx.contrast + 0.5
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * fx.saturation
    if fx.vignette > 0:
        h, w = out.shape[:2]
        yy = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
        xx = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
        r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) * 2
        out = out * (1 - fx.vignette * r2)[..., None]
    return out.astype(np.float32)


def sensor_noise(img: np.ndarray, fx: CameraFX, rng: np.random.Generator) -> np.ndarray:
    """Signal-dependent luminance noise plus chroma noise."""
    h, w = img.shape[:2]
    lum = rng.normal(0, 1, (h, w, 1)).astype(np.float32) * fx.noise_std * (0.5 + np.sqrt(np.clip(img, 0, 1)))
    chroma = rng.normal(0, fx.chroma_noise_std, (h, w, 3)).astype(np.float32) if fx.chroma_noise_std > 0 else 0.0
    return img + lum + chroma


def h264_roundtrip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """uint8[H, W, 3] after a libx264 intra encode at ``crf`` (yuv420p, one thread: deterministic) and a decode."""
    if crf <= 0:
        return rgb
    import av

    h, w = rgb.shape[:2]
    even = rgb[: h - h % 2, : w - w % 2]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = even.shape[1], even.shape[0], "yuv420p"
    enc.options = {"crf": str(int(crf)), "preset": "ultrafast", "tune": "zerolatency", "threads": "1"}
    enc.thread_count = 1
    packets = list(enc.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(even), format="rgb24")))
    packets += list(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count = 1
    frames = []
    for p in packets:
        frames += dec.decode(p)
    frames += dec.decode(None)
    out = rgb.copy()
    out[: even.shape[0], : even.shape[1]] = frames[-1].to_ndarray(format="rgb24")
    return out
