"""The config registry, its command line, and the data configs' choices per model."""

from __future__ import annotations

import dataclasses
import re

import pytest

from openpi import transforms
from openpi.envs import shapes_dataset
from openpi.models import tokenizer as _tokenizer
from openpi.policies import aloha_policy, data_config, shapes_policy
from openpi.training import config as _config
from openpi.training import data_loader
from tests.helpers.lerobot import write_tokenizer

REQUIRED = {
    "debug",
    "debug_pi05",
    "debug_pi05_lightvla",
    "pi05_libero_pytorch",
    "pi05_libero_pytorch_lightvla",
    "pi0_libero_pytorch",
    "pi05_pick_place_pytorch",
    "pi05_pick_place_pytorch_pruning",
}


def test_registry_has_the_named_configs():
    assert set(_config.list_configs()) >= REQUIRED
    for name in _config.list_configs():
        assert _config.get_config(name).name == name


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="pi05_libero_pytorch"):
        _config.get_config("pi05_libero_pytorh")


@pytest.mark.parametrize("style", ["underscore", "hyphen"])
def test_cli_parses_the_seed_command_line(style):
    args = [
        "pi05_libero_pytorch_lightvla",
        "--exp_name",
        "run1",
        "--batch_size",
        "16",
        "--model.token_pruning_enabled",
        "True",
        "--model.token_prune_noise_scale",
        "0.5",
        "--resume",
        "--overwrite",
    ]
    if style == "hyphen":
        args = [a.replace("_", "-") if a.startswith("--") else a for a in args]
    config = _config.cli(args)
    assert (config.name, config.exp_name, config.batch_size) == ("pi05_libero_pytorch_lightvla", "run1", 16)
    assert config.model.token_pruning_enabled and config.model.token_prune_noise_scale == 0.5
    assert config.resume and config.overwrite
    assert config.checkpoint_dir.parts[-2:] == ("pi05_libero_pytorch_lightvla", "run1")


def test_cli_bool_false_value_and_nested_data_override():
    config = _config.cli(
        ["pi05_libero_pytorch_lightvla", "--model.token_pruning_enabled", "False", "--data.repo-id", "/data/x"]
    )
    assert not config.model.token_pruning_enabled
    assert config.data.repo_id == "/data/x"


def test_libero_hyperparameters():
    for name in ("pi05_libero_pytorch", "pi05_libero_pytorch_lightvla"):
        config = _config.get_config(name)
        schedule = config.lr_schedule
        assert (schedule.warmup_steps, schedule.peak_lr, schedule.decay_steps, schedule.decay_lr) == (
            10_000,
            5e-5,
            1_000_000,
            5e-5,
        )
        assert config.optimizer.clip_gradient_norm == 1.0
        assert (config.num_train_steps, config.batch_size, config.model.action_horizon) == (30_000, 64, 10)
        assert config.data.repo_id == "physical-intelligence/libero"
        assert config.model.pi05 and config.pytorch_weight_path is None
    assert _config.get_config("pi05_libero_pytorch_lightvla").model.token_pruning_enabled
    assert not _config.get_config("pi05_libero_pytorch").model.token_pruning_enabled
    assert not _config.get_config("pi0_libero_pytorch").model.pi05
    # Upstream: pi05_libero keeps an EMA with decay 0.999, pi0_libero upstream's default 0.99.
    assert _config.get_config("pi05_libero_pytorch").ema_decay == 0.999
    assert _config.get_config("pi0_libero_pytorch").ema_decay == 0.99
    assert _config.get_config("debug_pi05_lightvla").ema_decay is None


@pytest.mark.parametrize("name", ["pi0_libero_pytorch", "pi0_libero_pytorch_lightvla", "pi05_libero_pytorch"])
def test_libero_configs_match_the_published_ones(tmp_path, name):
    """Upstream pi0_libero: horizon 50, delta actions on the first six dims (gripper absolute), EMA 0.99;
    pi05_libero: horizon 10, no delta transform, EMA 0.999."""
    config = _config.get_config(name)
    pi05 = config.model.pi05
    assert (config.model.action_horizon, config.ema_decay) == ((10, 0.999) if pi05 else (50, 0.99))
    data = dataclasses.replace(config.data, tokenizer_path=str(write_tokenizer(tmp_path)))
    created = data.create(tmp_path / "assets", config.model)
    deltas = [t for t in created.data_transforms.inputs if isinstance(t, transforms.DeltaActions)]
    absolutes = [t for t in created.data_transforms.outputs if isinstance(t, transforms.AbsoluteActions)]
    if pi05:
        assert deltas == absolutes == []
    else:
        assert [t.mask for t in deltas] == [t.mask for t in absolutes] == [(True,) * 6 + (False,)]
        assert isinstance(created.data_transforms.inputs[-1], transforms.DeltaActions), "after the robot mapping"
        assert isinstance(created.data_transforms.outputs[0], transforms.AbsoluteActions), "before the mapping back"


def test_pick_place_reads_norm_stats_from_its_assets_config(tmp_path):
    pruning = _config.get_config("pi05_pick_place_pytorch_pruning")
    assert pruning.model.token_pruning_enabled and pruning.model.token_prune_noise_scale == 0.5
    assert isinstance(pruning.data, aloha_policy.LeRobotAlohaDataConfig)
    assert pruning.data.assets.asset_id == "six_object_pick_conveyor"
    tokenizer = write_tokenizer(tmp_path)
    data = dataclasses.replace(
        pruning.data, tokenizer_path=str(tokenizer), assets=data_config.AssetsConfig(str(tmp_path))
    )
    created = data.create(pruning.assets_dirs, pruning.model)
    assert created.norm_stats_dir == str(tmp_path / "six_object_pick_conveyor")
    assert created.action_sequence_keys == ("action",)


def test_debug_configs_are_tiny_and_fit_the_embedded_tokenizer(embedded_data_home):
    vocab = _tokenizer.PaligemmaTokenizer(8, shapes_dataset.prepare_tokenizer()).vocab_size
    for name in ("debug", "debug_pi05", "debug_pi05_lightvla"):
        config = _config.get_config(name)
        assert config.model.paligemma_variant == "dummy" and config.model.vision_variant == "tiny_112"
        assert config.model.vocab_size >= vocab
    assert isinstance(_config.get_config("debug").data, data_config.FakeDataConfig)
    lightvla = _config.get_config("debug_pi05_lightvla")
    assert isinstance(lightvla.data, shapes_policy.EmbeddedDataConfig)
    assert lightvla.model.pi05 and lightvla.model.token_pruning_enabled and lightvla.model.action_horizon == 10
    assert lightvla.save_interval <= lightvla.num_train_steps and lightvla.pytorch_training_precision == "float32"


@pytest.mark.parametrize(
    ("name", "quantiles", "discrete_state"),
    [
        ("pi05_libero_pytorch", True, False),  # upstream pi05_libero: discrete_state_input=False
        ("pi05_libero_pytorch_lightvla", True, False),
        ("pi0_libero_pytorch", False, False),
    ],
)
def test_pi05_uses_quantile_norm_and_the_published_state_input(tmp_path, name, quantiles, discrete_state):
    config = _config.get_config(name)
    data = dataclasses.replace(config.data, tokenizer_path=str(write_tokenizer(tmp_path)))
    created = data.create(tmp_path / "assets", config.model)
    assert created.use_quantile_norm is quantiles
    assert created.norm_stats is None and created.norm_stats_dir == str(tmp_path / "assets" / config.data.repo_id)
    tokenize = next(t for t in created.model_transforms.inputs if isinstance(t, transforms.TokenizePrompt))
    assert tokenize.discrete_state_input is discrete_state
    assert tokenize.tokenizer.max_len == (200 if quantiles else 48)


def test_missing_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(_tokenizer.TOKENIZER_PATH_ENV, raising=False)
    monkeypatch.delenv(_tokenizer.TOKENIZER_PATH_ENV, raising=False)
    config = _config.get_config("pi05_libero_pytorch")
    with pytest.raises(FileNotFoundError, match=r"--data\.tokenizer-path"):
        data_loader.create_data_loader(config)
    resolved = config.data.create(config.assets_dirs, config.model)  # the robot stage needs no tokenizer
    assert resolved.tokenizer_path is None
    monkeypatch.setenv(_tokenizer.TOKENIZER_PATH_ENV, str(write_tokenizer(tmp_path)))
    tokenize = next(step for step in resolved.model_transforms.inputs if isinstance(step, transforms.TokenizePrompt))
    assert tokenize.tokenizer.model_path.name == "tiny_tokenizer.model"


@pytest.mark.parametrize("name", _config.list_configs())
def test_building_and_creating_a_config_writes_no_file(name, tmp_path, monkeypatch, capsys):
    home, cwd = tmp_path / "data_home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv(shapes_dataset.DATA_HOME_ENV, str(home))
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit):
        _config.cli([name, "--help"])
    config = _config.cli([name, "--exp-name", "e1"])
    tokenizer = str(write_tokenizer(tmp_path / "tokenizer"))
    dataclasses.replace(config.data, tokenizer_path=tokenizer).create(config.assets_dirs, config.model)
    if isinstance(config.data, shapes_policy.EmbeddedDataConfig | data_config.FakeDataConfig):
        # Without the testbed's tokenizer: an error naming the command that prepares it, and still no file.
        spec = config.data.spec if isinstance(config.data, shapes_policy.EmbeddedDataConfig) else None
        with pytest.raises(FileNotFoundError, match=re.escape(shapes_dataset.generate_command(spec))):
            config.data.create(config.assets_dirs, config.model)
    assert not list(home.iterdir()) and not list(cwd.iterdir())


def test_train_config_paths():
    config = dataclasses.replace(
        _config.get_config("debug"), exp_name="e1", assets_base_dir="/a", checkpoint_base_dir="/c"
    )
    assert str(config.assets_dirs) == "/a/debug" and str(config.checkpoint_dir) == "/c/debug/e1"


def test_the_pruning_testbed_mixes_its_patches_and_names_the_target_only_by_the_whole_prompt():
    """research/lightvla's testbed: self-attention over each camera's patches, three objects of which one shares the
    target's colour and one its shape; the pruner is fine-tuned from a trained `pi05_shapes` checkpoint."""
    unpruned, pruned = _config.get_config("pi05_shapes"), _config.get_config("pi05_shapes_lightvla")
    assert unpruned.model.vision_config.num_hidden_layers >= 2
    assert unpruned.data.spec.task == pruned.data.spec.task
    task = unpruned.data.spec.task
    assert task.min_objects >= 3 and task.shared_attributes
    assert pruned.model == dataclasses.replace(unpruned.model, **_config.LIGHTVLA_PRUNING)
    assert unpruned.allow_random_init and not pruned.allow_random_init
    assert pruned.num_train_steps < unpruned.num_train_steps
