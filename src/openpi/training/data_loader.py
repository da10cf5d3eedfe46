"""Training data: LeRobot datasets (or fake samples) through the transform pipeline, in deterministic batches.

Every sample runs the steps of :func:`openpi.policies.pipeline.build_pipeline` (``from_dataset=True``).
Batch ``k`` of rank ``r`` depends only on ``(seed, k, r)``: every epoch is a seeded permutation of the dataset and
batch ``k`` reads its slice, so a run resumed at ``start_step=k`` sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from openpi import transforms as _transforms
from openpi.models import pi0_config, tokenizer
from openpi.models.batch import IMAGE_KEYS
from openpi.models.observation import Observation
from openpi.policies.data_config import FAKE_REPO_ID, DataConfig
from openpi.policies.pipeline import build_pipeline
from openpi.training import config as _config

logger = logging.getLogger(__name__)

FAKE_DATASET_SIZE = 1024


class SampleDataset(Protocol):
    def __getitem__(self, index: int) -> dict: ...

    def __len__(self) -> int: ...


class FakeDataset:
    """``num_samples`` random samples in the model's input layout (images 224x224, padded state, the model's action
    chunk, a fixed prompt), as upstream's ``FakeDataset(model_config, num_samples)``."""

    def __init__(self, model_config: pi0_config.Pi0Config, num_samples: int = FAKE_DATASET_SIZE) -> None:
        self._action_dim = model_config.action_dim
        self._action_horizon = model_config.action_horizon
        self._num_samples = num_samples

    def __len__(self) -> int:
        return self._num_samples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        return {
            "image": {key: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for key in IMAGE_KEYS},
            "image_mask": {key: np.True_ for key in IMAGE_KEYS},
            "state": rng.uniform(-1, 1, self._action_dim).astype(np.float32),
            "actions": rng.uniform(-1, 1, (self._action_horizon, self._action_dim)).astype(np.float32),
            "prompt": "do something",
        }


class LeRobotSamples:
    """A LeRobot dataset whose samples are dicts of numpy arrays (images float CHW in [0, 1], task text as str)."""

    def __init__(self, repo_id: str, root: str | None, action_horizon: int, action_keys: Sequence[str]) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        fps = LeRobotDatasetMetadata(repo_id, root=root).fps
        self._dataset = LeRobotDataset(
            repo_id, root=root, delta_timestamps={key: [t / fps for t in range(action_horizon)] for key in action_keys}
        )

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict:
        return {key: _to_numpy(value) for key, value in self._dataset[index].items()}


def _to_numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


class TransformedDataset:
    """Applies ``transforms`` to every sample of ``dataset``."""

    def __init__(self, dataset: SampleDataset, transforms: Sequence[_transforms.DataTransformFn]) -> None:
        self._dataset = dataset
        self._transform = _transforms.compose(transforms)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict:
        return self._transform(self._dataset[index])


def create_torch_dataset(
    data_config: DataConfig, action_horizon: int, model_config: pi0_config.Pi0Config
) -> SampleDataset:
    """The raw dataset of ``data_config`` with action chunks of ``action_horizon`` frames."""
    if data_config.repo_id is None:
        raise ValueError("DataConfig has no repo_id; set --data.repo-id to a LeRobot repo id or local dataset folder")
    if data_config.repo_id == FAKE_REPO_ID:
        return FakeDataset(dataclasses.replace(model_config, action_horizon=action_horizon))
    require_local_dataset(data_config)
    return LeRobotSamples(data_config.repo_id, data_config.root, action_horizon, data_config.action_sequence_keys)


def require_local_dataset(data_config: DataConfig) -> None:
    """Fails, naming the command that generates it where there is one, when the dataset's local folder is missing."""
    if data_config.root is None or Path(data_config.root).is_dir():
        return
    hint = f": generate it with `{data_config.generate_command}`" if data_config.generate_command else ""
    raise FileNotFoundError(f"No dataset at {data_config.root}{hint}")


def training_transforms(data_config: DataConfig, *, skip_norm_stats: bool = False) -> list:
    """The pipeline's input steps for dataset samples; without normalisation when ``skip_norm_stats``."""
    norm_stats = None if skip_norm_stats else data_config.norm_stats
    return list(build_pipeline(data_config, norm_stats, from_dataset=True).inputs)


def batch_indices(
    num_samples: int, global_batch_size: int, step: int, *, seed: int, shuffle: bool, rank: int, world_size: int
) -> np.ndarray:
    """Sample indices of batch ``step`` for ``rank``: a slice of a per-epoch seeded permutation."""
    batches_per_epoch = num_samples // global_batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"Dataset has {num_samples} samples, fewer than one batch of {global_batch_size}")
    epoch, position = divmod(step, batches_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle else np.arange(num_samples)
    per_rank = global_batch_size // world_size
    start = position * global_batch_size + rank * per_rank
    return order[start : start + per_rank]


class _BatchSampler:
    def __init__(self, num_samples: int, global_batch_size: int, start_step: int, num_batches: int | None, **kwargs):
        self._args = (num_samples, global_batch_size)
        self._start, self._num_batches, self._kwargs = start_step, num_batches, kwargs

    def __iter__(self) -> Iterator[list[int]]:
        step = self._start
        while self._num_batches is None or step < self._start + self._num_batches:
            yield batch_indices(*self._args, step, **self._kwargs).tolist()
            step += 1


class DataLoader:
    """Iterates ``(Observation, actions [B, H, action_dim])`` batches for one rank; ``data_config`` is attached."""

    def __init__(
        self,
        dataset: SampleDataset,
        data_config: DataConfig,
        *,
        global_batch_size: int,
        num_workers: int,
        seed: int,
        shuffle: bool,
        rank: int,
        world_size: int,
        start_step: int,
        num_batches: int | None,
        multiprocessing_context: str | None = None,
    ) -> None:
        self.data_config = data_config
        self._multiprocessing_context = multiprocessing_context if num_workers > 0 else None
        self._dataset = dataset
        self._num_workers = num_workers
        self._num_batches = num_batches
        self._sampler = _BatchSampler(
            len(dataset),
            global_batch_size,
            start_step,
            num_batches,
            seed=seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
        )

    def __len__(self) -> int:
        if self._num_batches is None:
            raise TypeError("This data loader is infinite (num_batches=None)")
        return self._num_batches

    def __iter__(self) -> Iterator[tuple[Observation, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self._dataset,
            batch_sampler=self._sampler,
            num_workers=self._num_workers,
            collate_fn=_transforms.stack_samples,
            multiprocessing_context=self._multiprocessing_context,
        )
        for batch in loader:
            yield Observation.from_dict(batch), torch.from_numpy(np.asarray(batch["actions"], dtype=np.float32))


def create_data_loader(
    config: _config.TrainConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    start_step: int = 0,
    num_batches: int | None = None,
    skip_norm_stats: bool = False,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """Builds the training data loader of ``config`` for one rank (per-rank batch = batch_size // world_size).

    ``multiprocessing_context`` starts the workers (``"spawn"`` where the process runs threads that a fork would
    copy mid-operation, e.g. after JAX has started); None: the platform's default.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank {rank} for world_size {world_size}")
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by world_size {world_size}")
    data_config = config.data.create(config.assets_dirs, config.model)
    tokenizer.resolve_tokenizer_path(data_config.tokenizer_path)  # here, named, rather than in a loader worker
    require_local_dataset(data_config)  # first: a missing generated dataset lacks its norm stats too
    if data_config.norm_stats is None and not skip_norm_stats:
        raise FileNotFoundError(
            f"Norm stats not found: {data_config.norm_stats_dir}/norm_stats.json. Compute them with "
            f"`uv run scripts/compute_norm_stats.py --config-name {config.name}`."
        )
    dataset = create_torch_dataset(data_config, config.model.action_horizon, config.model)
    dataset = TransformedDataset(dataset, training_transforms(data_config, skip_norm_stats=skip_norm_stats))
    logger.info(
        "Data: %s (%d samples), %d batches per epoch",
        data_config.repo_id,
        len(dataset),
        len(dataset) // config.batch_size,
    )
    return DataLoader(
        dataset,
        data_config,
        global_batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
        num_batches=num_batches,
        multiprocessing_context=multiprocessing_context,
    )
