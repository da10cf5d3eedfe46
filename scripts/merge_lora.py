"""Folds a LoRA fine-tune's adapters into its base weights: a plain checkpoint that any config of the base variants
loads and serves (e.g. pi05_libero_pytorch for pi05_libero_low_mem_finetune_pytorch), with the same outputs.

    uv run scripts/merge_lora.py --config pi05_libero_low_mem_finetune_pytorch \\
        --checkpoint checkpoints/pi05_libero_low_mem_finetune_pytorch/run/30000 --output checkpoints/merged

Copies the checkpoint's assets (norm stats) beside the merged ``model.safetensors``.
"""

import logging

import tyro

from openpi.cli import merge_lora, user_errors

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    user_errors.run(lambda: merge_lora.merge(tyro.cli(merge_lora.Args)))
