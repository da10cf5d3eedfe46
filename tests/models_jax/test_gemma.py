"""The JAX Gemma's rotary angles: upstream divides positions by the timescales in IEEE float32."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from openpi.models_jax import gemma


@pytest.mark.parametrize("head_dim", [16, 256])
def test_rotary_angles_are_ieee_quotients(head_dim):
    positions = np.arange(2048, dtype=np.int32).reshape(2, 1024)
    half = head_dim // 2
    timescale = (gemma.ROPE_BASE ** (np.arange(half) * 2.0 / head_dim)).astype(np.float32)
    expected = positions.astype(np.float32)[..., None] / timescale  # numpy divides exactly
    for angles in (
        gemma.rotary_angles(positions, head_dim),
        jax.jit(gemma.rotary_angles, static_argnums=1)(positions, head_dim),
    ):
        np.testing.assert_array_equal(np.asarray(angles), expected)
