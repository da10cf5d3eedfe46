"""Fits a FAST action tokenizer on a config's dataset and writes the tokenizer folder.

    uv run scripts/train_fast_tokenizer.py --config-name pi0_fast_libero --output-dir assets/fast_libero

Prints the held-out round-trip error (max and mean |decoded - original| in normalised units) and tokens per chunk.
"""

import logging

import tyro

from openpi.training import fast_tokenizer_fit

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    print(tyro.cli(fast_tokenizer_fit.main))
