"""A mixture's data config: bad weights are refused with the dataset and the flag; each dataset keeps its own
pipeline; the mixture serves as its first dataset; the registered example mixes two scene difficulties."""

from __future__ import annotations

import dataclasses

import pytest

from openpi.policies.mixture import MixtureDataConfig, MixtureMember
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.training import config as _config
from tests.helpers.training import tiny_mixture


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((1.0, -1.0), r"Mixture dataset 'hard': --data.members.1.weight must be a finite number >= 0, got -1.0"),
        ((float("nan"), 1.0), r"Mixture dataset 'easy': --data.members.0.weight must be a finite number >= 0"),
        ((0.0, 0.0), r"Mixture datasets \['easy', 'hard'\]: every weight \(--data.members.N.weight\) is 0"),
    ],
)
def test_negative_and_all_zero_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        tiny_mixture(weights)


def test_bad_weights_on_the_command_line_are_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        _config.cli(["debug_pi05_lightvla_mixture", "--exp-name", "x", "--data.members.1.weight", "-2"])
    assert "Mixture dataset 'hard':" in capsys.readouterr().err
    parsed = _config.cli(["debug_pi05_lightvla_mixture", "--exp-name", "x", "--data.members.1.weight", "0"])
    assert [m.weight for m in parsed.data.members] == [1.0, 0.0]


def test_an_empty_mixture_and_repeated_names_are_refused():
    with pytest.raises(ValueError, match="at least one dataset"):
        MixtureDataConfig()
    with pytest.raises(ValueError, match=r"unique; repeated: \['a'\]"):
        MixtureDataConfig(members=(MixtureMember("a", EmbeddedDataConfig()), MixtureMember("a", EmbeddedDataConfig())))


def test_each_dataset_keeps_its_pipeline_and_the_first_serves(tmp_path, embedded_data_home):
    mixture = tiny_mixture()
    mixture = dataclasses.replace(
        mixture,
        members=(
            mixture.members[0],
            dataclasses.replace(
                mixture.members[1], data=dataclasses.replace(mixture.members[1].data, default_prompt="find the target")
            ),
        ),
    )
    mixture.prepare()
    model = _config.get_config("debug_pi05_lightvla").model
    created = mixture.create(tmp_path, model)
    easy, hard = (member.config for member in created.members)
    assert [m.name for m in created.members] == ["easy", "hard"] and [m.weight for m in created.members] == [1, 2]
    assert (easy.default_prompt, hard.default_prompt) == (None, "find the target")
    assert easy.asset_id != hard.asset_id and easy.norm_stats is not None and hard.norm_stats is not None
    assert dataclasses.replace(created, members=()) == easy, "the mixture serves as its first dataset"

    shared = dataclasses.replace(mixture, shared_norm_stats=True).create(tmp_path, model)
    assert {m.config.asset_id for m in shared.members} == {shared.asset_id} == {"easy+hard"}
    assert {m.config.norm_stats_dir for m in shared.members} == {str(tmp_path / "easy+hard")}
    assert shared.norm_stats is None, "shared stats are computed by compute_norm_stats.py, not found here"


def test_the_registered_example_mixes_two_difficulties_of_the_shapes_scene():
    config = _config.get_config("debug_pi05_lightvla_mixture")
    easy, hard = config.data.members
    assert (easy.name, hard.name) == ("easy", "hard") and hard.weight > easy.weight
    assert easy.data.max_objects < hard.data.min_objects and hard.data.shared_attributes
    assert config.model == _config.get_config("debug_pi05_lightvla").model
