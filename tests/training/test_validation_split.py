"""The validation split: whole episodes held out by a seeded draw, bad requests named, kept by a resumed run."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from openpi.training import validation_split

# Two datasets: 10 episodes of 3 frames, 4 episodes of 5 frames.
EPISODES = {"easy": np.repeat(np.arange(10), 3), "hard": np.repeat(np.arange(100, 104), 5)}


def test_the_draw_holds_out_whole_episodes_of_every_dataset_from_the_seed():
    split = validation_split.draw(EPISODES, seed=3, val_fraction=0.2, val_episodes=None)
    assert {name: len(ids) for name, ids in split.held_out.items()} == {"easy": 2, "hard": 1}
    for name, ids in EPISODES.items():
        val = split.frames(name, ids, held_out=True)
        train = split.frames(name, ids, held_out=False)
        assert sorted([*val, *train]) == list(range(len(ids)))
        assert set(ids[val]) == set(split.held_out[name]) and not set(ids[val]) & set(ids[train])
    assert validation_split.draw(EPISODES, seed=3, val_fraction=0.2, val_episodes=None) == split
    others = [validation_split.draw(EPISODES, seed=s, val_fraction=0.2, val_episodes=None) for s in range(4, 9)]
    assert any(other.held_out["easy"] != split.held_out["easy"] for other in others)
    by_count = validation_split.draw(EPISODES, seed=3, val_fraction=None, val_episodes=3)
    assert {name: len(ids) for name, ids in by_count.held_out.items()} == {"easy": 3, "hard": 3}


@pytest.mark.parametrize(
    ("fraction", "episodes", "message"),
    [
        (0.01, None, r"--val-fraction 0.01 holds out no episode of dataset 'easy' \(10 episodes\)"),
        (0.9, None, r"--val-fraction 0.9 leaves no training episode of dataset 'hard' \(4 episodes\)"),
        (None, 4, r"--val-episodes 4 leaves no training episode of dataset 'hard' \(4 episodes\)"),
        (1.5, None, r"--val-fraction must be in \(0, 1\), got 1.5"),
        (None, 0, r"--val-episodes must be >= 1, got 0"),
        (0.2, 2, r"--val-fraction or --val-episodes, not both"),
    ],
)
def test_a_request_that_leaves_no_training_or_no_validation_episode_is_refused(fraction, episodes, message):
    with pytest.raises(ValueError, match=message):
        validation_split.draw(EPISODES, seed=0, val_fraction=fraction, val_episodes=episodes)


def test_the_split_round_trips_through_its_file_and_a_resume_keeps_it(tmp_path, caplog):
    split = validation_split.draw(EPISODES, seed=1, val_fraction=0.2, val_episodes=None)
    validation_split.save(tmp_path, split)
    loaded = validation_split.load(tmp_path)
    assert loaded == split and validation_split.load(tmp_path / "missing") is None
    kwargs = {"resuming": True, "seed": 7}
    with caplog.at_level(logging.WARNING):
        same = validation_split.resolve(EPISODES, loaded, val_fraction=0.2, val_episodes=None, **kwargs)
        assert not caplog.text
        other = validation_split.resolve(EPISODES, loaded, val_fraction=0.5, val_episodes=None, **kwargs)
    assert same == other == split
    assert "holds out 3 episodes (--val-fraction 0.2); this run asks for --val-fraction 0.5" in caplog.text
    assert validation_split.resolve(EPISODES, None, val_fraction=0.2, val_episodes=None, **kwargs).seed == 7
    assert "the validation episodes drawn now (--val-fraction 0.2) were seen" in caplog.text


def test_the_key_of_the_training_episodes_stats_follows_the_held_out_episodes():
    split = validation_split.draw(EPISODES, seed=1, val_fraction=0.2, val_episodes=None)
    other = validation_split.draw(EPISODES, seed=2, val_fraction=0.2, val_episodes=None)
    assert split.key(["easy"]) == split.key(["easy"]) != split.key(["easy", "hard"])
    assert (split.key(["easy"]) == other.key(["easy"])) == (split.held_out["easy"] == other.held_out["easy"])
