"""scripts/estimate_flops.py: the table per part of the model and the JSON line, for registered configs."""

from __future__ import annotations

import json

import pytest

from openpi.cli import estimate_flops
from openpi.models import flops
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.training import config as _config


def test_the_last_line_is_the_json_summary_and_a_budget_prunes(capsys):
    unpruned = estimate_flops.main(estimate_flops.Args("pi05_libero_pytorch"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == unpruned and set(printed) == {
        "prefix_gflops",
        "denoise_gflops",
        "sample_gflops",
        "train_step_gflops",
    }
    assert printed["sample_gflops"] == pytest.approx(printed["prefix_gflops"] + printed["denoise_gflops"])
    pruned = estimate_flops.main(estimate_flops.Args("pi05_libero_pytorch", token_prune_keep_ratio=0.1))
    assert pruned["sample_gflops"] < 0.4 * unpruned["sample_gflops"]
    model = Pi0Config(pi05=True, action_horizon=10, discrete_state_input=False)
    expected = flops.sample_flops(model, flops.Workload(prompt_tokens=32)).total / 1e9
    assert unpruned["sample_gflops"] == pytest.approx(expected), "a 20-token prompt runs as 32 trimmed columns"


def test_bad_budgets_are_named():
    with pytest.raises(ValueError, match="not both"):
        estimate_flops.model_config(
            estimate_flops.Args("pi05_libero_pytorch", token_prune_keep_ratio=0.1, token_prune_keep_tokens=8)
        )
    with pytest.raises(ValueError, match="--token-prune-keep-tokens"):
        estimate_flops.model_config(estimate_flops.Args("pi05_pick_place_pytorch_pruning"))


def test_a_fast_config_counts_its_decoding(capsys):
    unpruned = estimate_flops.main(estimate_flops.Args("pi0_fast_libero", decode_steps=30))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == unpruned
    expected_config = Pi0FastConfig(action_dim=7, action_horizon=10, max_token_len=180)
    expected = flops.decode_flops(expected_config, flops.Workload(prompt_tokens=180, num_steps=30))
    assert unpruned["sample_gflops"] == pytest.approx(expected.total / 1e9), "the untrimmed 180 columns"
    assert unpruned["decode_pass_gflops"] == pytest.approx(expected.per_decode_pass / 1e9)
    recipe = _config.get_config("pi0_fast_libero")
    workload = flops.Workload(prompt_tokens=180, batch_size=recipe.batch_size)
    train = flops.fast_train_flops(expected_config, workload, recipe.gradient_checkpointing)
    assert unpruned["train_step_gflops"] == pytest.approx(train.total / 1e9), "the recipe's batch and checkpointing"
    pruned = estimate_flops.main(estimate_flops.Args("pi0_fast_libero", decode_steps=30, token_prune_keep_ratio=0.1))
    assert pruned["sample_gflops"] < 0.45 * unpruned["sample_gflops"]
