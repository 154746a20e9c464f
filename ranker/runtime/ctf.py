"""The contrast transfer function (CTF) with RELION's conventions.

Lengths and defocus in Angstrom, spatial frequencies in 1/A, acceleration voltage in kV,
spherical aberration in mm, angles in degrees. The CTF at a spatial frequency is
``-sin(gamma)`` with ``gamma`` from :func:`ctf_phase`.
"""

from __future__ import annotations

import math


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic wavelength (A) of electrons accelerated through ``voltage_kV`` kilovolts."""
    volts = voltage_kV * 1e3
    return 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf_phase(kx_per_A, ky_per_A, voltage_kV: float, cs_mm: float, amplitude_contrast: float,
              defocus_u_A: float, defocus_v_A: float, defocus_angle_deg: float = 0.0):
    """The CTF phase ``gamma`` at spatial frequencies ``(kx, ky)`` (1/A; arrays broadcast).

    Defocus ``defocus_u_A`` applies along the direction at ``defocus_angle_deg`` from the x
    axis, ``defocus_v_A`` perpendicular to it (underfocus positive). No phase plate, no
    B-factor. The CTF is ``-sin(gamma)``; ``|gamma| = pi/2`` is its first peak.
    """
    if defocus_angle_deg:
        a = math.radians(defocus_angle_deg)
        kx_per_A, ky_per_A = (math.cos(a) * kx_per_A + math.sin(a) * ky_per_A,
                              math.cos(a) * ky_per_A - math.sin(a) * kx_per_A)
    kx, ky = kx_per_A, ky_per_A
    lam = electron_wavelength_A(voltage_kV)
    q0 = amplitude_contrast
    return (math.pi * lam * (-defocus_u_A * kx * kx - defocus_v_A * ky * ky)
            + (math.pi / 2) * cs_mm * 1e7 * lam ** 3 * (kx * kx + ky * ky) ** 2
            - math.atan(q0 / math.sqrt(1 - q0 * q0)))
