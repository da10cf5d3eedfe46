"""Training data: LeRobot datasets (or fake samples) through the transform pipeline, in deterministic batches.

Every sample runs the steps of :func:`openpi.policies.pipeline.build_pipeline` (``from_dataset=True``), with the
pipeline of the dataset it comes from (a mixture has several). Batch ``k`` of rank ``r`` depends only on
``(seed, k, r)``: every epoch is a seeded permutation of the dataset and batch ``k`` reads its slice; a mixture draws
each sample's dataset by weight, and the sample within it, from ``(seed, k)``. A run resumed at ``start_step=k``
therefore sees the batches an uninterrupted run would. With a validation split (``validation_split``) training reads
the training episodes only, and the validation loader a fixed draw of frames of the held-out ones.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from openpi import transforms as _transforms
from openpi.models import pi0_config, tokenizer
from openpi.models.batch import IMAGE_KEYS
from openpi.models.observation import Observation
from openpi.policies.data_config import FAKE_REPO_ID, DataConfig, DataMember
from openpi.policies.pipeline import build_pipeline
from openpi.training import config as _config
from openpi.training.validation_split import EpisodeSplit

logger = logging.getLogger(__name__)

FAKE_DATASET_SIZE = 1024
# Mixed into the seed so that the mixture's draws and the validation frames are independent of the other streams.
_MIXTURE_STREAM = 0x313
_VALIDATION_FRAMES_STREAM = 0x7A1


class SampleDataset(Protocol):
    def __getitem__(self, index: int) -> dict: ...

    def __len__(self) -> int: ...


class EpisodeDataset(SampleDataset, Protocol):
    """A dataset of frames that knows each frame's episode (what a validation split holds out)."""

    def episode_indices(self) -> np.ndarray: ...


class FakeDataset:
    """``num_samples`` random samples in the model's input layout (images 224x224, padded state, the model's action
    chunk, a fixed prompt), as upstream's ``FakeDataset(model_config, num_samples)``."""

    def __init__(self, model_config: pi0_config.Pi0Config, num_samples: int = FAKE_DATASET_SIZE) -> None:
        self._action_dim = model_config.action_dim
        self._action_horizon = model_config.action_horizon
        self._num_samples = num_samples

    def __len__(self) -> int:
        return self._num_samples

    def episode_indices(self) -> np.ndarray:
        """Every sample is an episode of its own."""
        return np.arange(self._num_samples)

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

    def episode_indices(self) -> np.ndarray:
        """``[F]`` the episode of each frame."""
        return np.asarray(self._dataset.hf_dataset.with_format("numpy")["episode_index"], dtype=np.int64)

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


class MixtureDataset:
    """The concatenation of several datasets (the members of a mixture); knows which member each index is in."""

    def __init__(self, members: Sequence[SampleDataset]) -> None:
        self._members = list(members)
        self.offsets = np.concatenate([[0], np.cumsum([len(m) for m in members])])  # [M + 1]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def source_of(self, indices: np.ndarray) -> np.ndarray:
        """The member of each index."""
        return np.searchsorted(self.offsets, indices, side="right") - 1

    def __getitem__(self, index: int) -> dict:
        member = int(self.source_of(np.asarray([index]))[0])
        return self._members[member][index - int(self.offsets[member])]


@dataclasses.dataclass(frozen=True)
class Source:
    """One dataset of a config (a mixture has several): its name, weight, pipeline and raw samples."""

    name: str
    weight: float
    data_config: DataConfig
    samples: EpisodeDataset

    def episode_ids(self) -> np.ndarray:
        """``[F]`` the episode of each frame."""
        return self.samples.episode_indices()


def members_of(data_config: DataConfig) -> tuple[DataMember, ...]:
    """A mixture's datasets, or the one dataset (named by its asset) of any other config."""
    if data_config.members:
        return data_config.members
    return (DataMember(data_config.asset_id or data_config.repo_id or "data", 1.0, data_config),)


def open_sources(
    config: _config.TrainConfig, data_config: DataConfig, *, skip_norm_stats: bool = False
) -> list[Source]:
    """Opens the raw datasets of ``data_config`` (each member of a mixture, whose dimensions must agree)."""
    sources = []
    for member in members_of(data_config):
        require_local_dataset(member.config)  # first: a missing generated dataset lacks its norm stats too
        if member.config.norm_stats is None and not skip_norm_stats:
            raise FileNotFoundError(
                f"Norm stats not found: {member.config.norm_stats_dir}/norm_stats.json. Compute them with "
                f"`uv run scripts/compute_norm_stats.py --config-name {config.name}`."
            )
        samples = create_torch_dataset(member.config, config.model.action_horizon, config.model)
        sources.append(Source(member.name, member.weight, member.config, samples))
    if len(sources) > 1:
        check_dimensions(sources)
    return sources


def check_dimensions(sources: Sequence[Source]) -> None:
    """Refuses a mixture whose datasets disagree on the robot's state or action dimension (one sample of each,
    after its robot mapping)."""
    dims = {}
    for source in sources:
        robot_steps = build_pipeline(source.data_config, None, from_dataset=True, stage="robot").inputs
        sample = _transforms.compose(robot_steps)(source.samples[0])
        dims[source.name] = {key: np.shape(sample[key])[-1] for key in ("state", "actions")}
    first = sources[0].name
    for name, found in dims.items():
        for key, dim in found.items():
            if dim != dims[first][key]:
                raise ValueError(
                    f"Mixture dataset {name!r}: its {key!r} has {dim} dims but {first!r}'s has {dims[first][key]}; "
                    f"every dataset of a mixture needs the same {key} dimension"
                )


def create_torch_dataset(
    data_config: DataConfig, action_horizon: int, model_config: pi0_config.Pi0Config
) -> EpisodeDataset:
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


def mixture_batch_indices(
    sizes: Sequence[int],
    weights: Sequence[float],
    global_batch_size: int,
    step: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
) -> np.ndarray:
    """Indices into a :class:`MixtureDataset` of members of ``sizes`` for batch ``step`` of ``rank``: each sample's
    member is drawn with probability weight / sum of weights, then a frame of it uniformly, from ``(seed, step)``."""
    rng = np.random.default_rng([seed, _MIXTURE_STREAM, step])
    probabilities = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    members = rng.choice(len(sizes), size=global_batch_size, p=probabilities)  # [B]
    within = rng.integers(0, np.asarray(sizes)[members])  # [B]
    indices = np.concatenate([[0], np.cumsum(sizes)[:-1]])[members] + within
    per_rank = global_batch_size // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


def validation_frames(
    sizes: Sequence[int], weights: Sequence[float], num_batches: int, global_batch_size: int, *, seed: int
) -> np.ndarray:
    """A fixed draw (from ``seed``) of ``num_batches`` global batches of distinct held-out frames, or as many whole
    batches as the held-out frames fill; a mixture's members in proportion to their weights."""
    per_frame = np.concatenate(
        [np.full(size, weight / size if size else 0.0) for size, weight in zip(sizes, weights, strict=True)]
    )
    available = int(np.count_nonzero(per_frame))
    count = min(num_batches, available // global_batch_size) * global_batch_size
    if count == 0:
        raise ValueError(
            f"The held-out episodes have {available} frames, fewer than one batch of {global_batch_size} "
            "(--batch-size): hold out more with --val-fraction / --val-episodes"
        )
    rng = np.random.default_rng([seed, _VALIDATION_FRAMES_STREAM])
    return rng.choice(len(per_frame), size=count, replace=False, p=per_frame / per_frame.sum())


def fixed_batch_indices(
    frames: np.ndarray, global_batch_size: int, step: int, *, rank: int, world_size: int
) -> np.ndarray:
    """Rank ``rank``'s share of global batch ``step`` of the fixed ``frames``."""
    per_rank = global_batch_size // world_size
    start = step * global_batch_size + rank * per_rank
    return frames[start : start + per_rank]


class _BatchSampler:
    def __init__(self, schedule: Callable[[int], np.ndarray], start_step: int, num_batches: int | None):
        self._schedule, self._start, self._num_batches = schedule, start_step, num_batches

    def __iter__(self) -> Iterator[list[int]]:
        step = self._start
        while self._num_batches is None or step < self._start + self._num_batches:
            yield self._schedule(step).tolist()
            step += 1


class DataLoader:
    """Iterates ``(Observation, actions [B, H, action_dim])`` batches for one rank; ``data_config`` is attached.

    ``schedule(step)`` is the rank's sample indices of batch ``step``; ``source_names`` names a mixture's datasets
    (:meth:`batch_sources` says which each sample of a batch comes from) and is empty otherwise.
    """

    def __init__(
        self,
        dataset: SampleDataset,
        data_config: DataConfig,
        *,
        schedule: Callable[[int], np.ndarray],
        num_workers: int,
        start_step: int,
        num_batches: int | None,
        multiprocessing_context: str | None = None,
        source_names: tuple[str, ...] = (),
    ) -> None:
        self.data_config = data_config
        self.source_names = source_names
        self._multiprocessing_context = multiprocessing_context if num_workers > 0 else None
        self._dataset = dataset
        self._num_workers = num_workers
        self._num_batches = num_batches
        self._schedule = schedule
        self._sampler = _BatchSampler(schedule, start_step, num_batches)

    def batch_sources(self, step: int) -> np.ndarray:
        """``[B]`` the index into ``source_names`` of each of the rank's samples of batch ``step`` (a mixture's)."""
        if not isinstance(self._dataset, MixtureDataset):
            raise TypeError("Only a mixture's batches have sources")
        return self._dataset.source_of(self._schedule(step))

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
    split: EpisodeSplit | None = None,
    data_config: DataConfig | None = None,
) -> DataLoader:
    """Builds the training data loader of ``config`` for one rank (per-rank batch = batch_size // world_size).

    ``multiprocessing_context`` starts the workers (``"spawn"`` where the process runs threads that a fork would
    copy mid-operation, e.g. after JAX has started); None: the platform's default. With ``split`` only the training
    episodes are read. ``data_config`` replaces ``config.data.create(...)`` (e.g. with the training episodes' norm
    stats).
    """
    _check_ranks(config, rank, world_size)
    data_config = data_config or config.data.create(config.assets_dirs, config.model)
    tokenizer.resolve_tokenizer_path(data_config.tokenizer_path)  # here, named, rather than in a loader worker
    sources = open_sources(config, data_config, skip_norm_stats=skip_norm_stats)
    members = [_member_dataset(source, split, held_out=False, skip_norm_stats=skip_norm_stats) for source in sources]
    order = {"seed": config.seed, "rank": rank, "world_size": world_size}
    if len(members) == 1:
        dataset = members[0]
        schedule = functools.partial(batch_indices, len(dataset), config.batch_size, shuffle=shuffle, **order)
        logger.info(
            "Data: %s (%d samples), %d batches per epoch",
            data_config.repo_id,
            len(dataset),
            len(dataset) // config.batch_size,
        )
    else:
        dataset = MixtureDataset(members)
        sizes, weights = [len(m) for m in members], [s.weight for s in sources]
        schedule = functools.partial(mixture_batch_indices, sizes, weights, config.batch_size, **order)
        logger.info(
            "Data: mixture of %s", ", ".join(_describe(s, len(m)) for s, m in zip(sources, members, strict=True))
        )
    return DataLoader(
        dataset,
        data_config,
        schedule=schedule,
        num_workers=config.num_workers,
        start_step=start_step,
        num_batches=num_batches,
        multiprocessing_context=multiprocessing_context,
        source_names=tuple(s.name for s in sources) if len(sources) > 1 else (),
    )


def create_validation_loader(
    config: _config.TrainConfig,
    split: EpisodeSplit,
    data_config: DataConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """The fixed validation batches of ``config``: ``val_num_batches`` global batches of distinct frames of the
    held-out episodes (a mixture's datasets in proportion to their weights), the same at every call and split
    across ranks as training batches are."""
    _check_ranks(config, rank, world_size)
    sources = open_sources(config, data_config)
    members = [_member_dataset(source, split, held_out=True) for source in sources]
    sizes, weights = [len(m) for m in members], [s.weight for s in sources]
    frames = validation_frames(sizes, weights, config.val_num_batches, config.batch_size, seed=config.seed)
    dataset = members[0] if len(members) == 1 else MixtureDataset(members)
    return DataLoader(
        dataset,
        data_config,
        schedule=functools.partial(fixed_batch_indices, frames, config.batch_size, rank=rank, world_size=world_size),
        num_workers=config.num_workers,
        start_step=0,
        num_batches=len(frames) // config.batch_size,
        multiprocessing_context=multiprocessing_context,
        source_names=tuple(s.name for s in sources) if len(sources) > 1 else (),
    )


def _check_ranks(config: _config.TrainConfig, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank {rank} for world_size {world_size}")
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by world_size {world_size}")


def _member_dataset(
    source: Source, split: EpisodeSplit | None, *, held_out: bool, skip_norm_stats: bool = False
) -> TransformedDataset:
    """A source's training (or, with ``held_out``, validation) frames through its pipeline."""
    samples = source.samples
    if split is not None:
        frames = split.frames(source.name, source.episode_ids(), held_out=held_out)
        samples = torch.utils.data.Subset(samples, frames.tolist())
    return TransformedDataset(samples, training_transforms(source.data_config, skip_norm_stats=skip_norm_stats))


def _describe(source: Source, num_frames: int) -> str:
    return f"{source.name} ({num_frames} samples, weight {source.weight:g})"
