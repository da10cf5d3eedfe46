"""Checks our PyTorch π0/π0.5 against reference fixtures (see shared/reference/README.md).

    uv run scripts/check_reference.py ../shared/reference/pi05_tiny ../shared/reference/pi0_tiny

Builds each fixture's model from its config alone, loads its weights (converting ``checkpoint/params`` for JAX
fixtures), and prints the relative error of prefix embeddings, loss and sampled actions. Exits 1 if any exceeds 2e-3.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import tyro

from openpi.models_pytorch import reference


def main(fixtures: tyro.conf.Positional[list[Path]]) -> int:
    """Returns 0 when every fixture passes, 1 otherwise."""
    failed = []
    for directory in fixtures:
        fixture = reference.ReferenceFixture.load(directory)
        errors = reference.compare(fixture.build_model(), fixture)
        ok = reference.passes(errors)
        kind = ("π0.5" if fixture.config.pi05 else "π0") + (" (JAX checkpoint)" if fixture.is_jax else "")
        print(f"{directory} [{kind}]: {'PASS' if ok else 'FAIL'}")
        for key, value in errors.items():
            print(f"  {key:28s} {value:.3e}" if "mismatches" not in key else f"  {key:28s} {int(value)}")
        if not ok:
            failed.append(directory)
    if failed:
        print(f"{len(failed)} of {len(fixtures)} fixture(s) exceed the tolerance {reference.TOLERANCE}: {failed}")
        return 1
    print(f"All {len(fixtures)} fixture(s) within {reference.TOLERANCE}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(tyro.cli(main))
