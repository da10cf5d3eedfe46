"""Checks our π0/π0.5 (PyTorch or JAX) against reference fixtures (see shared/reference/README.md).

    uv run scripts/check_reference.py ../shared/reference/pi05_tiny ../shared/reference/pi0_tiny
    uv run scripts/check_reference.py --framework jax ../shared/reference/jax_pi05_tiny ../shared/reference/jax_pi0_tiny

Builds each fixture's model from its config alone and loads its weights: the PyTorch model from the state dict or,
for JAX fixtures, from ``checkpoint/params`` through the converter; the JAX model restores ``checkpoint/params``
directly. Prints the relative error of prefix embeddings, loss and sampled actions. Exits 1 if any exceeds 2e-3.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal

import tyro

from openpi.models.reference_fixture import TOLERANCE, ReferenceFixture, passes


def _errors(fixture: ReferenceFixture, framework: str) -> dict[str, float]:
    if framework == "jax":
        from openpi.models_jax import reference as jax_reference

        return jax_reference.compare(jax_reference.build_model(fixture), fixture)
    from openpi.conversion import convert
    from openpi.models_pytorch import reference

    state = convert.convert_params_dir(fixture.checkpoint_dir, fixture.config) if fixture.is_jax else None
    return reference.compare(reference.build_model(fixture, state), fixture)


def main(fixtures: tyro.conf.Positional[list[Path]], framework: Literal["pytorch", "jax"] = "pytorch") -> int:
    """Returns 0 when every fixture passes, 1 otherwise."""
    failed = []
    for directory in fixtures:
        fixture = ReferenceFixture.load(directory)
        errors = _errors(fixture, framework)
        ok = passes(errors)
        kind = ("π0.5" if fixture.config.pi05 else "π0") + (" (JAX checkpoint)" if fixture.is_jax else "")
        print(f"{directory} [{kind}, {framework} model]: {'PASS' if ok else 'FAIL'}")
        for key, value in errors.items():
            print(f"  {key:28s} {value:.3e}" if "mismatches" not in key else f"  {key:28s} {int(value)}")
        if not ok:
            failed.append(directory)
    if failed:
        print(f"{len(failed)} of {len(fixtures)} fixture(s) exceed the tolerance {TOLERANCE}: {failed}")
        return 1
    print(f"All {len(fixtures)} fixture(s) within {TOLERANCE}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(tyro.cli(main))
