"""Checks our π0/π0.5 (PyTorch or JAX) against reference fixtures (see shared/reference/README.md).

    uv run scripts/check_reference.py ../shared/reference/pi05_tiny ../shared/reference/pi0_tiny
    uv run scripts/check_reference.py --framework jax ../shared/reference/jax_pi05_tiny ../shared/reference/jax_pi0_tiny

Builds each fixture's model from its config alone and loads its weights: the PyTorch model from the state dict or,
for JAX fixtures, from ``checkpoint/params`` through the converter; the JAX model restores ``checkpoint/params``
directly. Prints the relative error of prefix embeddings, loss and sampled actions. Exits 1 if any exceeds 2e-3.
A π0-FAST fixture (``pi0_fast_tiny``) is compared on logits, per-token NLL, loss, image tokens and the greedy decode
(tokens exact), with the tolerances of its README (``openpi.models.fast_reference_fixture``).
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


def _fast_errors(directory: Path, framework: str) -> tuple[str, dict[str, float], bool]:
    from openpi.models import fast_reference_fixture as fast

    fixture = fast.FastReferenceFixture.load(directory)
    if framework == "jax":
        from openpi.models_jax import fast_reference as jax_fast

        errors = jax_fast.compare(jax_fast.build_model(fixture), fixture)
    else:
        from openpi.conversion import convert
        from openpi.models_pytorch import fast_reference

        state = convert.convert_fast_params_dir(fixture.checkpoint_dir, fixture.config)
        errors = fast_reference.compare(fast_reference.build_model(fixture, state), fixture)
    return "π0-FAST (JAX checkpoint)", errors, fast.passes(errors)


def _errors_and_verdict(directory: Path, framework: str) -> tuple[str, dict[str, float], bool]:
    from openpi.models.fast_reference_fixture import is_fast_fixture

    if is_fast_fixture(directory):
        return _fast_errors(directory, framework)
    fixture = ReferenceFixture.load(directory)
    errors = _errors(fixture, framework)
    kind = ("π0.5" if fixture.config.pi05 else "π0") + (" (JAX checkpoint)" if fixture.is_jax else "")
    return kind, errors, passes(errors)


def main(fixtures: tyro.conf.Positional[list[Path]], framework: Literal["pytorch", "jax"] = "pytorch") -> int:
    """Returns 0 when every fixture passes, 1 otherwise."""
    failed = []
    for directory in fixtures:
        kind, errors, ok = _errors_and_verdict(directory, framework)
        print(f"{directory} [{kind}, {framework} model]: {'PASS' if ok else 'FAIL'}")
        for key, value in errors.items():
            print(f"  {key:28s} {value:.3e}" if "mismatches" not in key else f"  {key:28s} {int(value)}")
        if not ok:
            failed.append(directory)
    if failed:
        print(f"{len(failed)} of {len(fixtures)} fixture(s) exceed their tolerance: {failed}")
        return 1
    print(f"All {len(fixtures)} fixture(s) within tolerance (π0/π0.5: {TOLERANCE}; π0-FAST: its README's)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(tyro.cli(main))
