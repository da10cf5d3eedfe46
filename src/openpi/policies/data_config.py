"""What a robot's data pipeline is made of: the resolved :class:`DataConfig` and the factories that build it.

A :class:`DataConfigFactory` describes one kind of dataset (LIBERO, ALOHA, DROID, ...) and lives beside that robot's
input/output mapping in ``policies/<robot>_policy.py``; ``create`` resolves it for one model into a
:class:`DataConfig` and writes no file. :func:`openpi.policies.pipeline.build_pipeline` turns that into the ordered
list of steps that training, norm-stat computation and serving all run. Data generated locally (the shapes testbed)
is made by the factory's ``prepare``, which the trainers call before building their data.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openpi import transforms as _transforms
from openpi.envs import shapes_dataset
from openpi.models import pi0_config, tokenizer
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.policies import fast_transforms
from openpi.shared import checkpoint_files
from openpi.shared import normalize as _normalize

logger = logging.getLogger(__name__)

FAKE_REPO_ID = "fake"


@dataclasses.dataclass(frozen=True)
class AssetsConfig:
    """Where to read norm stats from: ``assets_dir/asset_id/norm_stats.json``.

    ``assets_dir`` defaults to the train config's ``assets_dirs``; ``asset_id`` to the dataset's repo id.
    """

    assets_dir: str | None = None
    """Folder holding <asset_id>/norm_stats.json; None: <assets-base-dir>/<config name>."""
    asset_id: str | None = None
    """Sub-folder of the norm stats; None: the dataset's repo id (a local folder's name)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A resolved data pipeline: where the data lives and the transforms that turn samples into model inputs."""

    # LeRobot repo id, a local dataset folder, or "fake".
    repo_id: str | None = None
    # Local folder of the dataset; None means lerobot's cache for a hub id.
    root: str | None = None
    asset_id: str | None = None
    # Folder holding norm_stats.json (read for training, written by scripts/compute_norm_stats.py).
    norm_stats_dir: str | None = None
    norm_stats: dict[str, _normalize.NormStats] | None = None
    # Dataset keys -> the robot's observation keys (training data only; a served robot sends its own keys).
    repack_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    # The robot's observation <-> the model's camera layout and action dims.
    data_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    # Resize to the vision tower, tokenize, pad state/actions.
    model_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    use_quantile_norm: bool = False
    # Dataset keys that are read as chunks of `action_horizon` consecutive frames.
    action_sequence_keys: Sequence[str] = ("actions",)
    # Use the LeRobot task text as the prompt.
    prompt_from_task: bool = False
    # Prompt for samples and observations that carry none.
    default_prompt: str | None = None
    # The robot's action dimension (what its outputs keep); the action norm stats must cover it.
    robot_action_dim: int | None = None
    # The robot's state dimension (after its input mapping); the state norm stats must have exactly this many.
    robot_state_dim: int | None = None
    # The keys a served observation of this robot may hold besides ``prompt`` (nested ones as ``images/cam_high``);
    # None accepts any.
    observation_keys: tuple[str, ...] | None = None
    # The PaliGemma tokenizer as given (None: the defaults of `tokenizer.resolve_tokenizer_path`).
    tokenizer_path: str | None = None
    # π0-FAST: the sequence tokenizer, which the policy decodes generated tokens with (None for π0 / π0.5).
    fast_tokenizer: fast_transforms.FastTokenizerSpec | None = None
    # The command that generates the dataset at `root` with its norm stats (a dataset generated locally), for the
    # errors that find it missing.
    generate_command: str | None = None
    # A mixture's datasets, each with its own pipeline (the fields above are those of the first, which serves).
    members: tuple[DataMember, ...] = ()


@dataclasses.dataclass(frozen=True)
class DataMember:
    """One dataset of a mixture: its name (in the logged ``*/loss/<name>``), sampling weight and resolved pipeline."""

    name: str
    weight: float
    config: DataConfig


ModelConfig = pi0_config.Pi0Config | Pi0FastConfig


def uses_quantile_norm(model: ModelConfig) -> bool:
    """π0.5 and π0-FAST normalise by quantiles (q01 → -1, q99 → 1); π0 by mean and standard deviation."""
    return isinstance(model, Pi0FastConfig) or model.pi05


def fast_tokenizer_spec(
    model: ModelConfig, tokenizer_path: str | None, default_fast_tokenizer: str | None
) -> fast_transforms.FastTokenizerSpec | None:
    """π0-FAST's sequence tokenizer (its FAST folder: the model's, else ``default_fast_tokenizer``); None for π0."""
    if not isinstance(model, Pi0FastConfig):
        return None
    return fast_transforms.FastTokenizerSpec(model, tokenizer_path, model.fast_tokenizer_path or default_fast_tokenizer)


def model_transforms(
    model: ModelConfig, tokenizer_path: str | None, default_fast_tokenizer: str | None = None
) -> _transforms.Group:
    """Resize every camera to the vision tower's resolution, tokenize (with the discretised state for π0.5), pad
    state/actions to the model's action dimension. π0-FAST: resize, mark every camera present (as upstream), then one
    sequence of prompt, state and FAST action tokens (:func:`fast_tokenizer_spec`); the policy decodes the generated
    tokens."""
    size = model.vision_config.image_size
    if isinstance(model, Pi0FastConfig):
        sequences = fast_tokenizer_spec(model, tokenizer_path, default_fast_tokenizer)
        return _transforms.Group(
            inputs=(
                _transforms.ResizeImages(size, size),
                fast_transforms.AttendEveryCamera(),
                fast_transforms.TokenizeFastInputs(sequences),
            )
        )
    return _transforms.Group(
        inputs=(
            _transforms.ResizeImages(size, size),
            _transforms.TokenizePrompt(
                tokenizer.PaligemmaTokenizer(model.max_token_len, tokenizer_path),
                discrete_state_input=bool(model.discrete_state_input),
            ),
            _transforms.PadStatesAndActions(model.action_dim),
        )
    )


@dataclasses.dataclass(frozen=True)
class DataConfigFactory(abc.ABC):
    """Builds a :class:`DataConfig` for a model; subclasses describe one kind of dataset."""

    repo_id: str | None = None
    """LeRobot dataset: a Hugging Face repo id or a local folder."""
    assets: AssetsConfig = dataclasses.field(default_factory=AssetsConfig)
    """Where the norm stats are read from."""
    tokenizer_path: str | None = None
    """PaliGemma tokenizer model; see `tokenizer.resolve_tokenizer_path` for the defaults."""
    default_prompt: str | None = None
    """Prompt used when a sample has none."""

    @abc.abstractmethod
    def create(self, assets_dirs: Path, model_config: ModelConfig) -> DataConfig:
        """Resolves the data pipeline for ``model_config``; norm stats come from ``assets_dirs`` unless overridden.
        Reads what exists and writes nothing."""

    def prepare(self) -> None:
        """Generates the files ``create`` and the data loader read where this factory generates them locally; a
        recorded dataset has none to generate. Cached, and safe to call from concurrent processes."""
        return None

    def _asset_id(self) -> str | None:
        if self.assets.asset_id is not None or self.repo_id is None:
            return self.assets.asset_id
        return Path(self.repo_id).name if is_local_path(self.repo_id) else self.repo_id

    def _norm_stats_dir(self, assets_dirs: Path) -> Path | None:
        asset_id = self._asset_id()
        if asset_id is None:
            return None
        return Path(self.assets.assets_dir or assets_dirs) / asset_id

    def _lerobot_fields(self, assets_dirs: Path, model_config: ModelConfig) -> dict[str, Any]:
        """Fields shared by every LeRobot-backed config (the PaliGemma tokenizer is looked for at its first use)."""
        norm_dir = self._norm_stats_dir(assets_dirs)
        return {
            "repo_id": self.repo_id,
            "root": self.repo_id if self.repo_id and is_local_path(self.repo_id) else None,
            "asset_id": self._asset_id(),
            "norm_stats_dir": None if norm_dir is None else str(norm_dir),
            "norm_stats": load_norm_stats_if_present(norm_dir),
            "model_transforms": model_transforms(model_config, self.tokenizer_path),
            "use_quantile_norm": uses_quantile_norm(model_config),
            "default_prompt": self.default_prompt,
            "tokenizer_path": self.tokenizer_path,
            "fast_tokenizer": fast_tokenizer_spec(model_config, self.tokenizer_path, None),
        }


def is_local_path(repo_id: str) -> bool:
    """Whether ``repo_id`` names a local dataset folder rather than a hub id."""
    return repo_id.startswith(("/", "./", "../", "~")) or Path(repo_id).expanduser().is_dir()


def load_norm_stats_if_present(directory: Path | None) -> dict[str, _normalize.NormStats] | None:
    """The norm stats in ``directory``, or None when it has none (yet)."""
    if directory is None or not checkpoint_files.norm_stats_path(directory).is_file():
        return None
    logger.info("Loading norm stats from %s", directory)
    return _normalize.load(directory)


@dataclasses.dataclass(frozen=True)
class FakeDataConfig(DataConfigFactory):
    """Random samples already in the model's layout (no dataset); uses the embedded dataset's tokenizer."""

    repo_id: str | None = FAKE_REPO_ID
    """No dataset: samples are drawn at random."""

    def prepare(self) -> None:
        if self.tokenizer_path is None:
            shapes_dataset.prepare_tokenizer()
        shapes_dataset.prepare_fast_tokenizer()

    def create(self, assets_dirs: Path, model_config: ModelConfig) -> DataConfig:
        tokenizer_path = self.tokenizer_path or str(shapes_dataset.prepared_tokenizer())
        fast_path = str(shapes_dataset.fast_tokenizer_path())
        dim = model_config.action_dim
        identity = _normalize.NormStats(mean=[0.0] * dim, std=[1.0] * dim, q01=[-1.0] * dim, q99=[1.0] * dim)
        return DataConfig(
            repo_id=FAKE_REPO_ID,
            asset_id=FAKE_REPO_ID,
            norm_stats={"state": identity, "actions": identity},
            model_transforms=model_transforms(model_config, tokenizer_path, fast_path),
            use_quantile_norm=uses_quantile_norm(model_config),
            default_prompt=self.default_prompt,
            tokenizer_path=tokenizer_path,
            fast_tokenizer=fast_tokenizer_spec(model_config, tokenizer_path, fast_path),
        )
