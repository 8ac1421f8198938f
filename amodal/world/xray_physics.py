"""Dual-energy X-ray physics for the synthetic baggage world.

Beer–Lambert per pixel and energy channel E ∈ {low, high}:
    A_E(x, y) = Σ_parts μ_m(E) · t_part(x, y)        (attenuation; overlapping material ADDS)
    T_E = exp(−A_E)                                   (transmission, 1 = nothing in the beam)
Effective energies 50 keV (low) and 80 keV (high).  μ are linear attenuation coefficients in 1/mm from
NIST XCOM-like mass attenuation × density (rounded): the low/high ratio R = μ_low/μ_high rises with Z_eff
(organics ≈ 1.2–1.3, light inorganics ≈ 1.8–2.2, metals ≈ 3.3) and is what scanners use to colour materials.
Detector: Gaussian PSF on T, then photon noise (N0 photons per pixel, Gaussian approximation of Poisson),
floor 1/N0.  Display: the usual pseudo-colour (orange organic, green mixed, blue metal; darker = more
attenuation, black when the beam does not get through).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["MATERIALS", "Detector", "Material", "measure", "pseudo_colour", "transmission_to_uint16"]


@dataclass(frozen=True, slots=True)
class Material:
    name: str
    mu_low_per_mm: float  # at the low effective energy (50 keV)
    mu_high_per_mm: float  # at the high effective energy (80 keV)

    @property
    def ratio(self) -> float:
        return self.mu_low_per_mm / self.mu_high_per_mm


MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material("fabric", 0.0068, 0.0055),  # cotton/polyester layers, effective density ~0.3 g/cm³
        Material("wood", 0.0136, 0.0110),
        Material("plastic", 0.0220, 0.0184),  # ABS / polypropylene, ρ ≈ 1.05
        Material("rubber", 0.0260, 0.0212),
        Material("water", 0.0227, 0.0184),  # liquids, gels, food
        Material("pcb", 0.0620, 0.0320),  # glass-fibre board with copper layers
        Material("glass", 0.0880, 0.0490),
        Material("aluminium", 0.0994, 0.0545),
        Material("battery", 0.3500, 0.1150),  # Li-ion cell: steel can, Cu/Al foils, oxide cathode
        Material("steel", 1.5410, 0.4684),
        Material("brass", 2.2000, 0.6450),
        Material("copper", 2.3410, 0.6832),
        Material("lead", 9.1300, 2.7460),
    )
}


@dataclass(frozen=True, slots=True)
class Detector:
    """Photon counts per pixel (low, high channels) and PSF width in pixels; ``noise=False`` is ideal."""

    photons_low: float = 6000.0
    photons_high: float = 15000.0
    psf_sigma_px: float = 0.5
    noise: bool = True


def measure(atten_low: np.ndarray, atten_high: np.ndarray, detector: Detector, rng: np.random.Generator):
    """float32[H, W] attenuations → measured transmissions (low, high), float32 in (0, 1]."""
    out = []
    for atten, photons in ((atten_low, detector.photons_low), (atten_high, detector.photons_high)):
        t = np.exp(-atten.astype(np.float64))
        if detector.psf_sigma_px > 0:
            t = ndimage.gaussian_filter(t, detector.psf_sigma_px, mode="nearest")
        if detector.noise:
            t = t + np.sqrt(t / photons) * rng.standard_normal(t.shape)
        out.append(np.clip(t, 1.0 / photons, 1.0).astype(np.float32))
    return out[0], out[1]


_ORANGE = np.array([1.00, 0.62, 0.16])
_GREEN = np.array([0.36, 0.78, 0.26])
_BLUE = np.array([0.16, 0.38, 0.96])


def pseudo_colour(t_low: np.ndarray, t_high: np.ndarray) -> np.ndarray:
    """Measured transmissions float[H, W] → uint8[H, W, 3] scanner display.

    Hue from R = −log T_low / −log T_high (≤ 1.5 orange → ≈ 2.1 green → ≥ 2.8 blue), saturation from the
    total attenuation (thin material stays pale), brightness T_high^0.6 (dense objects go dark/black).
    """
    a_low = -np.log(np.clip(t_low, 1e-6, 1.0))
    a_high = -np.log(np.clip(t_high, 1e-6, 1.0))
    ratio = a_low / np.maximum(a_high, 1e-3)
    w_green = np.clip((ratio - 1.5) / 0.6, 0.0, 1.0)
    w_blue = np.clip((ratio - 2.1) / 0.7, 0.0, 1.0)
    hue = (1 - w_green)[..., None] * _ORANGE + (w_green * (1 - w_blue))[..., None] * _GREEN
    hue = hue + (w_green * w_blue)[..., None] * _BLUE
    sat = (1.0 - np.exp(-a_high / 0.25))[..., None]
    rgb = (1.0 - sat) + sat * hue
    rgb = rgb * (np.clip(t_high, 0.0, 1.0) ** 0.6)[..., None]
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def transmission_to_uint16(t: np.ndarray) -> np.ndarray:
    """float transmission in [0, 1] → uint16 raw detector value (65535 = open beam)."""
    return np.clip(np.round(t * 65535.0), 0, 65535).astype(np.uint16)
