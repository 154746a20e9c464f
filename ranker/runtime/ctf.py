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
