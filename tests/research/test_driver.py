"""The closed-loop pruning experiment (research/lightvla): its arms, its resumable training plan and its report's
statistics."""

import dataclasses
import json

import pytest
import torch

from openpi.evaluation import closed_loop
from openpi.models import variants
from openpi.models_pytorch import weights
from openpi.models_pytorch.siglip import SiglipVisionTower
from openpi.training import config as _config
from openpi.training import trainer
from openpi.training.config import LIGHTVLA_PRUNING
from research.lightvla import arms, driver, report


def test_comparison_table_says_which_arm_is_ahead_only_when_the_interval_excludes_zero():
    results = {
        "union": [{"seed": s, "success_rate": r} for s, r in enumerate((0.92, 0.85, 0.54))],
        "union_random_k": [{"seed": s, "success_rate": r} for s, r in enumerate((0.68, 0.48, 0.23))],
        "unpruned": [{"seed": s, "success_rate": r} for s, r in enumerate((0.98, 0.96, 0.99))],
    }
    table = [line for line in report.comparison_table(results) if line.startswith("| ")][1:]  # below the header
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table}
    assert set(rows) == {"union − unpruned", "union − union_random_k"}
    assert rows["union − union_random_k"].endswith("+0.31 [+0.15, +0.47] | union ahead |")
    assert rows["union − unpruned"].endswith("| not shown |")


def test_vision_gap_kept_pools_the_seeds_that_have_both_controls_and_names_them():
    def runs(*rates):
        return [{"seed": s, "successes": round(r * 100), "episodes": 100} for s, r in enumerate(rates)]

    results = {"blind": runs(0.2, 0.2), "unpruned": runs(1.0, 0.8, 0.9), "pruned": runs(0.6, 0.8, 0.0)}
    # Seeds 0 and 1: pruned 0.7, unpruned 0.9, blind 0.2 pooled -> (0.7 - 0.2) / (0.9 - 0.2); seed 2 has no blind arm.
    assert report.vision_gap_kept(results, "pruned") == f"{0.5 / 0.7:.2f} (seeds 0, 1)"
    results["blind"] = runs(0.2, 0.2, 0.2)
    assert report.vision_gap_kept(results, "pruned") == f"{(1.4 / 3 - 0.2) / (0.9 - 0.2):.2f}"
    assert report.vision_gap_kept({**results, "blind": runs(1.0)}, "pruned") == "–"  # no gap to keep


def test_camera_table_lists_only_the_results_that_carry_the_breakdown():
    older = {"seed": 0, "success_rate": 0.99, "target_recall": 0.38}
    newer = {
        "seed": 1,
        "success_rate": 0.97,
        "target_recall": 0.5,
        "target_pixel_recall": 0.7,
        "kept_share_image": 0.75,
        "target_patches_image": 3.5,
        "target_recall_image": 0.9,
        "kept_share_wrist_image": 0.25,
        "target_in_view_wrist_image": 0.4,
        "target_patches_wrist_image": None,
        "target_recall_wrist_image": None,
        "target_far_share": 0.6,
        "target_hit_rate_near": 1.0,
        "target_hit_rate_far": 0.25,
        "target_recall_far": 0.2,
    }
    assert report.camera_table({"union": [older]}) == []
    rows = [line for line in report.camera_table({"union": [older, newer]}) if line.startswith("| union")]
    assert rows == [
        "| union | 1 | 0.97 | 0.50 | 0.70 | 0.75 | 3.5 | 0.90 | 0.25 | 0.40 | – | – | 0.60 | 1.00 | 0.25 | 0.20 |"
    ]
    without_pixels = {key: value for key, value in newer.items() if key != "target_pixel_recall"}
    assert "| 0.50 | – | 0.75 |" in report.camera_table({"union": [without_pixels]})[-2]


def test_default_arm_trains_what_the_lightvla_config_trains():
    """The arm the results call the default pruner is the pruner ``pi05_shapes_lightvla`` ships with."""
    args = driver.Args()
    default = driver.train_config(arms.DEFAULT_ARM, 0, args).model
    assert default == dataclasses.replace(driver.train_config("union", 0, args).model, **LIGHTVLA_PRUNING)
    assert default == _config.get_config("pi05_shapes_lightvla").model


def test_union_arms_pin_the_union_selection():
    for arm, spec in arms.TRAINING_ARMS.items():
        if spec.config == "pi05_shapes_lightvla" and arm.startswith("union"):
            model = driver.train_config(arm, 0, driver.Args()).model
            assert not model.token_prune_budget_training and model.token_prune_keep_ratio is None, arm


def test_every_evaluation_arm_is_runnable_as_written():
    """Each evaluation arm reads weights some training arm writes, as a training arm's config, with options the
    package's closed-loop evaluation has (a typo would surface only after hours of training)."""
    eval_fields = {field.name for field in dataclasses.fields(closed_loop.Args)}
    for arm, spec in arms.EVAL_ARMS.items():
        assert spec.weights in arms.TRAINING_ARMS and spec.config in arms.TRAINING_ARMS, arm
        assert set(spec.options) <= eval_fields, arm
        assert spec.withhold_target in (None, "always", "far"), arm
        closed_loop.Args(**spec.options)


def test_every_training_arm_builds_its_config_from_fields_the_package_has(tmp_path):
    """An arm that named a removed ``token_prune_*`` field would fail here, not after hours of training; each warm
    start names a training arm."""
    args = driver.Args(work_dir=tmp_path)
    for arm, spec in arms.TRAINING_ARMS.items():
        config = driver.train_config(arm, 0, args)
        assert {key: getattr(config.model, key) for key in spec.model} == spec.model, arm
        assert spec.warm_start is None or spec.warm_start in arms.TRAINING_ARMS, arm


def test_the_action_space_reaches_the_training_data_and_the_evaluation_env():
    """The evaluation builds its env from the trained config's ``data.spec.task``."""
    assert driver.train_config("unpruned", 0, driver.Args()).data.spec.task.action_space == "delta"
    position = driver.train_config(arms.DEFAULT_ARM, 0, driver.Args(action_space="position")).data.spec
    assert position.task.action_space == "position" and position.folder_name.endswith("_position")


LOCAL_VISION = "hidden_size=32,num_hidden_layers=0,num_attention_heads=2,intermediate_size=64,image_size=112"


def test_the_vision_variant_reaches_every_arms_model():
    """The evaluation builds its policy from the same ``train_config``, so it gets the trained tower."""
    assert driver.train_config("unpruned", 0, driver.Args()).model.vision_variant == "tiny_112"
    for arm in ("unpruned", "blind", arms.DEFAULT_ARM):
        assert (
            driver.train_config(arm, 0, driver.Args(vision_variant=LOCAL_VISION)).model.vision_variant == LOCAL_VISION
        )


def test_a_bad_vision_variant_is_refused_before_any_training():
    with pytest.raises(ValueError, match="num_hidden_layer"):
        driver.Args(vision_variant="hidden_size=32,num_hidden_layer=0")


def test_a_vision_tower_without_layers_keeps_each_patch_token_to_its_own_pixels():
    """What the local-vision arm relies on: repainting one patch changes that patch's token and no other."""
    torch.manual_seed(0)
    tower = SiglipVisionTower(variants.get_siglip_config(LOCAL_VISION)).eval()
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    repainted = pixels.clone()
    repainted[:, :, 14:28, 28:42] = 1.0  # patch (row 1, column 2) of the 8×8 grid
    changed = (tower(repainted) - tower(pixels)).abs().amax(dim=-1)[0] > 1e-6  # [64]
    assert changed.nonzero().flatten().tolist() == [1 * 8 + 2]
    mixing = SiglipVisionTower(variants.get_siglip_config("tiny_112")).eval()
    assert ((mixing(repainted) - mixing(pixels)).abs().amax(dim=-1)[0] > 1e-6).all()


def _run(seed: int, rate: float) -> dict:
    return {"seed": seed, "success_rate": rate, "successes": round(rate * 100), "episodes": 100}


def test_the_precondition_names_a_seed_that_misses_it_even_when_the_pooled_rates_meet_it():
    results = {"unpruned": [_run(0, 0.96), _run(1, 0.70)], "blind": [_run(0, 0.17), _run(1, 0.13)]}
    line = report.precondition(results)
    assert "met" in line and "not met on seed 1 (unpruned 0.70, blind 0.13)" in line
    results["unpruned"][1] = _run(1, 0.85)
    assert "not met on seed" not in report.precondition(results)


def test_the_precondition_pools_only_the_seeds_that_have_both_controls():
    results = {"unpruned": [_run(0, 1.00), _run(1, 0.70), _run(2, 1.00)], "blind": [_run(1, 0.19)]}
    line = report.precondition(results)
    assert "NOT MET" in line and "unpruned 0.70, blind 0.19, pooled over seeds 1; not measured on seeds 0, 2" in line
    assert "not yet measured" in report.precondition({"unpruned": [_run(0, 1.0)], "blind": [_run(1, 0.2)]})


def test_an_unknown_training_arm_is_named():
    with pytest.raises(ValueError, match=r"Unknown training arms \['budget_trained25_gated_random'\]"):
        driver.Args(arms=("unpruned", "budget_trained25_gated_random"))


def test_a_warm_started_arm_trains_its_finetune_steps_from_its_bases_final_weights_of_the_same_seed(tmp_path):
    args = driver.Args(steps=300, finetune_steps=40, work_dir=tmp_path)
    base = driver.train_config("unpruned", 2, args)
    finetuned = driver.train_config("budget_trained25_gated_finetuned", 2, args)
    assert finetuned.pytorch_weight_path == f"{base.checkpoint_dir}/300" and finetuned.num_train_steps == 40
    assert finetuned.model == driver.train_config(arms.DEFAULT_ARM, 2, args).model
    assert driver.train_config(arms.DEFAULT_ARM, 2, args).pytorch_weight_path is None
    longer = driver.train_config("budget_trained25_gated_finetuned_long", 2, args)
    assert longer.pytorch_weight_path == finetuned.pytorch_weight_path and longer.num_train_steps == 80
    assert longer.model == finetuned.model and longer.lr_schedule.decay_steps == 80


def test_the_unpruned_weights_load_into_the_pruned_model_as_they_are(tmp_path):
    """The pruner has no parameters: fine-tuning it from the unpruned policy loses and invents no weight."""
    args = driver.Args(vision_variant=LOCAL_VISION)
    unpruned = trainer.build_model(driver.train_config("unpruned", 0, args), torch.device("cpu"))
    weights.save_weights(unpruned, tmp_path)
    finetuned = driver.train_config("budget_trained25_gated_finetuned", 0, args)
    model = trainer.build_model(dataclasses.replace(finetuned, pytorch_weight_path=str(tmp_path)), torch.device("cpu"))
    assert model.config.token_pruning_enabled
    for name, value in model.state_dict().items():
        assert torch.equal(value, unpruned.state_dict()[name]), name


def test_a_warm_start_waits_for_its_base_which_trains_first_even_when_its_own_results_exist(tmp_path):
    args = driver.Args(
        seeds=(0, 1), arms=("budget_trained25_gated_finetuned",), work_dir=tmp_path, results_dir=tmp_path
    )
    (tmp_path / "unpruned_seed0.json").write_text("{}")  # the unpruned arm's evaluation, not its weights
    (tmp_path / "train_unpruned_seed1.json").write_text("{}")
    assert driver.pending_trainings(args) == [
        ("unpruned", 0),
        ("budget_trained25_gated_finetuned", 0),
        ("budget_trained25_gated_finetuned", 1),
    ]
    (tmp_path / "train_budget_trained25_gated_finetuned_seed1.json").write_text("{}")
    assert driver.pending_trainings(args) == [("unpruned", 0), ("budget_trained25_gated_finetuned", 0)]
    for arm in arms.EVAL_ARMS:
        if arms.EVAL_ARMS[arm].weights == "budget_trained25_gated_finetuned":
            (tmp_path / f"{arm}_seed0.json").write_text("{}")
    assert driver.pending_trainings(args) == []  # nothing left to evaluate on seed 0: neither weight is needed


def test_steps_table_names_the_faster_arm_only_when_the_interval_excludes_zero():
    def runs(*steps):
        return [{"seed": s, "success_rate": 1.0, "mean_steps": v} for s, v in enumerate(steps)]

    results = {
        "budget_trained25_gated_finetuned": runs(6.0, 7.0, 6.5),
        "budget_trained25_gated_finetuned_random": runs(16.0, 15.5, 17.0),
        "unpruned": runs(5.0, 9.0, 6.0),
    }
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in report.steps_table(results)[5:]}
    assert set(rows) == {
        "budget_trained25_gated_finetuned − unpruned",
        "budget_trained25_gated_finetuned − budget_trained25_gated_finetuned_random",
    }
    random_row = rows["budget_trained25_gated_finetuned − budget_trained25_gated_finetuned_random"]
    assert "-10.0, -8.5, -10.5" in random_row and random_row.endswith("| budget_trained25_gated_finetuned faster |")
    assert rows["budget_trained25_gated_finetuned − unpruned"].endswith("| not shown |")
    assert report.steps_table({"unpruned": runs(5.0)}) == []


def test_arms_fine_tuned_from_the_longer_trained_base_measure_their_vision_gap_against_it():
    assert arms.unpruned_reference("budget_trained25_gated_finetuned_long_base_random") == "unpruned_long"
    assert arms.unpruned_reference("budget_trained25_gated_finetuned") == "unpruned"
    assert arms.unpruned_reference("budget25") == "unpruned"
    results = {
        "blind": [_run(0, 0.2)],
        "unpruned": [_run(0, 0.6)],
        "unpruned_long": [_run(0, 1.0)],
        "budget_trained25_gated_finetuned_long_base": [_run(0, 0.9)],
    }
    assert report.vision_gap_kept(results, "budget_trained25_gated_finetuned_long_base") == f"{0.7 / 0.8:.2f}"
    line = report.precondition(results, "unpruned_long")
    assert "for the arms on `unpruned_long`" in line and "met" in line and "unpruned_long 1.00, blind 0.20" in line
    assert "NOT MET" in report.precondition(results)  # the shorter-trained base misses it
    results["unpruned_long"].append(_run(3, 1.0))
    assert "; not measured on seed 3)" in report.precondition(results, "unpruned_long")


def test_a_warm_start_on_a_warm_started_base_trains_the_whole_chain_first(tmp_path):
    chained = ("budget_trained25_gated_finetuned_long_base",)
    args = driver.Args(seeds=(3,), arms=chained, work_dir=tmp_path, results_dir=tmp_path)
    chain = [("unpruned", 3), ("unpruned_long", 3), ("budget_trained25_gated_finetuned_long_base", 3)]
    assert driver.pending_trainings(args) == chain
    (tmp_path / "train_unpruned_seed3.json").write_text("{}")
    assert driver.pending_trainings(args) == chain[1:]


def test_the_testbed_arms_train_the_registered_configs_as_they_are(tmp_path):
    """The mixing-tower protocol trains `pi05_shapes`, then fine-tunes `pi05_shapes_lightvla` from its final weights,
    with the steps, scenes and model the registry gives them."""
    args = driver.Args(work_dir=tmp_path)
    registered = {name: _config.get_config(name) for name in ("pi05_shapes", "pi05_shapes_lightvla")}
    unpruned, default = driver.train_config("unpruned", 0, args), driver.train_config("default", 0, args)
    for trained, name in ((unpruned, "pi05_shapes"), (default, "pi05_shapes_lightvla")):
        assert trained.model == registered[name].model and trained.data == registered[name].data
        assert trained.num_train_steps == registered[name].num_train_steps
        assert trained.lr_schedule == registered[name].lr_schedule
    assert default.pytorch_weight_path == f"{unpruned.checkpoint_dir}/{unpruned.num_train_steps}"
    assert not default.allow_random_init and unpruned.allow_random_init
    sampled = driver.train_config("default_sampled", 0, args).model
    assert sampled == dataclasses.replace(default.model, token_prune_gate_dropped_sample=0.25)


def test_the_report_plots_success_against_the_budget_and_states_the_latency_ratio(tmp_path):
    def result(seed: int, rate: float, ms: float, **extra) -> dict:
        return {**_run(seed, rate), "infer_ms_p50": ms, "mean_steps": 10.0, **extra}

    swap = {"prompt_swap": {"recall_after_swap": 0.8, "recall_other_before_swap": 0.3, "success_after_swap": 0.9}}
    arms_results = {
        "unpruned": [result(0, 0.9, 10.0), result(1, 0.8, 20.0)],
        "blind": [result(0, 0.2, 9.0), result(1, 0.1, 9.0)],
        "default": [result(0, 0.9, 5.0, **swap), result(1, 0.8, 5.0, **swap)],
        "default_at10_random": [result(0, 0.3, 4.0), result(1, 0.2, 4.0)],
    }
    for arm, runs in arms_results.items():
        for run in runs:
            (tmp_path / f"{arm}_seed{run['seed']}.json").write_text(json.dumps(run))
    report.write(tmp_path, tmp_path / "table.md", tmp_path / "plot.png", "a command")
    assert (tmp_path / "plot_budgets.png").is_file()
    row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| default |"))
    assert "| 0.80 (0.30) | 0.90 | 0.38 |" in row  # swap recall, swap success, latency (0.5 + 0.25) / 2
    assert report.latency_ratio(arms_results, "blind") == pytest.approx((0.9 + 0.45) / 2)


def test_a_rewritten_report_keeps_the_reading_and_replaces_its_table(tmp_path):
    (tmp_path / "unpruned_seed0.json").write_text(json.dumps({**_run(0, 0.9), "mean_steps": 10.0}))
    table = tmp_path / "table.md"
    report.write(tmp_path, table, tmp_path / "plot.png", "a command")
    title, rest = table.read_text().split("\n", 1)
    table.write_text(f"{title}\n\n**Reading.** Unpruned succeeds.\n{rest}")
    (tmp_path / "unpruned_seed0.json").write_text(json.dumps({**_run(0, 0.5), "mean_steps": 10.0}))
    report.write(tmp_path, table, tmp_path / "plot.png", "a command")
    text = table.read_text()
    assert text.startswith(report.TITLE) and "**Reading.** Unpruned succeeds." in text
    rows = [line for line in text.splitlines() if line.startswith("| unpruned |")]
    assert len(rows) == 1 and "| 0.500 [" in rows[0]
