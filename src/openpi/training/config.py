"""Training configs: the data pipeline of each dataset, the registry of named configs and the command-line parser."""

from __future__ import annotations

import abc
import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tyro

from openpi import transforms as _transforms
from openpi.models import pi0_config, tokenizer
from openpi.models.observation import IMAGE_RESOLUTION
from openpi.policies import aloha_policy, droid_policy, libero_policy
from openpi.shared import normalize as _normalize
from openpi.training import embedded_dataset, optimizer

logger = logging.getLogger(__name__)

TOKENIZER_PATH_ENV = tokenizer.TOKENIZER_PATH_ENV
DEFAULT_TOKENIZER_PATH = "./assets/paligemma_tokenizer.model"
FAKE_REPO_ID = "fake"


@dataclasses.dataclass(frozen=True)
class AssetsConfig:
    """Where to read norm stats from: ``assets_dir/asset_id/norm_stats.json``.

    ``assets_dir`` defaults to the train config's ``assets_dirs``; ``asset_id`` to the dataset's repo id.
    """

    assets_dir: str | None = None
    asset_id: str | None = None


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
    repack_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    data_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    model_transforms: _transforms.Group = dataclasses.field(default_factory=_transforms.Group)
    use_quantile_norm: bool = False
    # Dataset keys that are read as chunks of `action_horizon` consecutive frames.
    action_sequence_keys: Sequence[str] = ("actions",)
    # Use the LeRobot task text as the prompt.
    prompt_from_task: bool = False
    tokenizer_path: str | None = None


def resolve_tokenizer_path(path: str | None) -> str:
    """The PaliGemma tokenizer file.

    Tries ``path``, else ``$OPENPI_PALIGEMMA_TOKENIZER``, then ``./assets/paligemma_tokenizer.model``, then the
    tokenizer module's own default location.
    """
    candidates = [path] if path else [os.environ.get(TOKENIZER_PATH_ENV), DEFAULT_TOKENIZER_PATH]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return str(Path(candidate).expanduser())
    if not path:
        with_default = _default_tokenizer_location()
        if with_default is not None:
            return with_default
    raise FileNotFoundError(
        f"PaliGemma tokenizer not found (tried {[c for c in candidates if c]}). Download "
        f"{tokenizer.TOKENIZER_SOURCE_URL} and pass --data.tokenizer-path PATH, set ${TOKENIZER_PATH_ENV}, "
        f"or put it at {DEFAULT_TOKENIZER_PATH}."
    )


def _default_tokenizer_location() -> str | None:
    try:
        return str(tokenizer.resolve_tokenizer_path(None))
    except FileNotFoundError:
        return None


def model_transforms(
    model: pi0_config.Pi0Config, tokenizer_path: str, default_prompt: str | None = None
) -> _transforms.Group:
    """Default prompt, resize to 224x224, tokenize (with the discretised state for π0.5), pad state/actions."""
    return _transforms.Group(
        inputs=(
            _transforms.InjectDefaultPrompt(default_prompt),
            _transforms.ResizeImages(*IMAGE_RESOLUTION),
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
    assets: AssetsConfig = dataclasses.field(default_factory=AssetsConfig)
    # PaliGemma tokenizer model; see `resolve_tokenizer_path` for the defaults.
    tokenizer_path: str | None = None
    # Prompt used when a sample has none.
    default_prompt: str | None = None

    @abc.abstractmethod
    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        """Resolves the data pipeline for ``model_config``; norm stats come from ``assets_dirs`` unless overridden."""

    def _asset_id(self) -> str | None:
        if self.assets.asset_id is not None or self.repo_id is None:
            return self.assets.asset_id
        return Path(self.repo_id).name if _is_local_path(self.repo_id) else self.repo_id

    def _norm_stats_dir(self, assets_dirs: Path) -> Path | None:
        asset_id = self._asset_id()
        if asset_id is None:
            return None
        return Path(self.assets.assets_dir or assets_dirs) / asset_id

    def _base(self, assets_dirs: Path, model_config: pi0_config.Pi0Config, tokenizer_path: str) -> dict[str, Any]:
        """Fields shared by every LeRobot-backed config."""
        norm_dir = self._norm_stats_dir(assets_dirs)
        return {
            "repo_id": self.repo_id,
            "root": self.repo_id if self.repo_id and _is_local_path(self.repo_id) else None,
            "asset_id": self._asset_id(),
            "norm_stats_dir": None if norm_dir is None else str(norm_dir),
            "norm_stats": _load_norm_stats(norm_dir),
            "model_transforms": model_transforms(model_config, tokenizer_path, self.default_prompt),
            "use_quantile_norm": model_config.pi05,
            "tokenizer_path": tokenizer_path,
        }


def _is_local_path(repo_id: str) -> bool:
    return repo_id.startswith(("/", "./", "../", "~")) or Path(repo_id).expanduser().is_dir()


def _load_norm_stats(directory: Path | None) -> dict[str, _normalize.NormStats] | None:
    if directory is None or not (directory / _normalize.NORM_STATS_FILENAME).is_file():
        return None
    logger.info("Loading norm stats from %s", directory)
    return _normalize.load(directory)


LIBERO_REPACK = _transforms.Group(
    inputs=(
        _transforms.RepackTransform(
            {
                "observation/image": "image",
                "observation/wrist_image": "wrist_image",
                "observation/state": "state",
                "actions": "actions",
                "prompt": "prompt",
            }
        ),
    )
)
LIBERO_TRANSFORMS = _transforms.Group(inputs=(libero_policy.LiberoInputs(),), outputs=(libero_policy.LiberoOutputs(),))


@dataclasses.dataclass(frozen=True)
class FakeDataConfig(DataConfigFactory):
    """Random samples already in the model's layout (no dataset); uses the embedded tokenizer."""

    repo_id: str | None = FAKE_REPO_ID

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        tokenizer_path = self.tokenizer_path or str(embedded_dataset.ensure_tokenizer())
        dim = model_config.action_dim
        identity = _normalize.NormStats(mean=[0.0] * dim, std=[1.0] * dim, q01=[-1.0] * dim, q99=[1.0] * dim)
        return DataConfig(
            repo_id=FAKE_REPO_ID,
            asset_id=FAKE_REPO_ID,
            norm_stats={"state": identity, "actions": identity},
            model_transforms=model_transforms(model_config, tokenizer_path, self.default_prompt),
            use_quantile_norm=model_config.pi05,
            tokenizer_path=tokenizer_path,
        )


@dataclasses.dataclass(frozen=True)
class EmbeddedDataConfig(DataConfigFactory):
    """The synthetic shapes dataset (LIBERO feature names), generated on first use with its norm stats and tokenizer."""

    repo_id: str | None = embedded_dataset.REPO_ID
    num_episodes: int = 50
    episode_length: int = 20
    image_size: int = 96
    seed: int = 0

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        spec = embedded_dataset.EmbeddedDatasetSpec(self.num_episodes, self.episode_length, self.image_size, self.seed)
        root = embedded_dataset.ensure_dataset(spec)
        tokenizer_path = self.tokenizer_path or str(embedded_dataset.tokenizer_path())
        return DataConfig(
            repo_id=embedded_dataset.REPO_ID,
            root=str(root),
            asset_id=spec.folder_name,
            norm_stats_dir=str(root),
            norm_stats=_load_norm_stats(root),
            repack_transforms=LIBERO_REPACK,
            data_transforms=LIBERO_TRANSFORMS,
            model_transforms=model_transforms(model_config, tokenizer_path, self.default_prompt),
            use_quantile_norm=model_config.pi05,
            prompt_from_task=True,
            tokenizer_path=tokenizer_path,
        )


@dataclasses.dataclass(frozen=True)
class LeRobotLiberoDataConfig(DataConfigFactory):
    """LIBERO in LeRobot format (features ``image``, ``wrist_image``, ``state``, ``actions``; task text as prompt)."""

    repo_id: str | None = "physical-intelligence/libero"

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        tokenizer_path = resolve_tokenizer_path(self.tokenizer_path)
        return DataConfig(
            **self._base(assets_dirs, model_config, tokenizer_path),
            repack_transforms=LIBERO_REPACK,
            data_transforms=LIBERO_TRANSFORMS,
            prompt_from_task=True,
        )


@dataclasses.dataclass(frozen=True)
class LeRobotAlohaDataConfig(DataConfigFactory):
    """ALOHA in LeRobot format (``observation.images.<camera>``, ``observation.state``, ``action``).

    ``use_delta_joint_actions`` trains on joint deltas from the current state (grippers stay absolute), as the
    published ALOHA models do; ``adapt_to_pi`` converts joint signs and gripper encoding (see aloha_policy).
    """

    cameras: tuple[str, ...] = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    # Dataset image key suffix per ALOHA camera when they differ (e.g. the simulator's {"cam_high": "top"}).
    camera_keys: dict[str, str] | None = None
    adapt_to_pi: bool = True
    use_delta_joint_actions: bool = True
    prompt_from_task: bool = True

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        tokenizer_path = resolve_tokenizer_path(self.tokenizer_path)
        repack = {
            "images": {camera: f"observation.images.{key}" for camera, key in self._camera_keys().items()},
            "state": "observation.state",
            "actions": "action",
        }
        if self.prompt_from_task:
            repack["prompt"] = "prompt"
        data_transforms = _transforms.Group(
            inputs=(aloha_policy.AlohaInputs(adapt_to_pi=self.adapt_to_pi),),
            outputs=(aloha_policy.AlohaOutputs(adapt_to_pi=self.adapt_to_pi),),
        )
        if self.use_delta_joint_actions:
            mask = _transforms.make_bool_mask(6, -1, 6, -1)
            data_transforms = data_transforms.push(
                inputs=(_transforms.DeltaActions(mask),), outputs=(_transforms.AbsoluteActions(mask),)
            )
        return DataConfig(
            **self._base(assets_dirs, model_config, tokenizer_path),
            repack_transforms=_transforms.Group(inputs=(_transforms.RepackTransform(repack),)),
            data_transforms=data_transforms,
            action_sequence_keys=("action",),
            prompt_from_task=self.prompt_from_task,
        )

    def _camera_keys(self) -> dict[str, str]:
        return dict(self.camera_keys) if self.camera_keys else {camera: camera for camera in self.cameras}


@dataclasses.dataclass(frozen=True)
class DroidDataConfig(DataConfigFactory):
    """DROID observations as the DROID client sends them (``observation/exterior_image_1_left``, ...).

    Training data must be stored under the same keys (plus ``actions`` and ``prompt``); norm stats are read from
    ``assets_dir/asset_id``.
    """

    assets: AssetsConfig = dataclasses.field(default_factory=lambda: AssetsConfig(asset_id="droid"))

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        tokenizer_path = resolve_tokenizer_path(self.tokenizer_path)
        return DataConfig(
            **self._base(assets_dirs, model_config, tokenizer_path),
            data_transforms=_transforms.Group(
                inputs=(droid_policy.DroidInputs(),), outputs=(droid_policy.DroidOutputs(),)
            ),
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; every field can be overridden on the command line."""

    name: str
    exp_name: str = ""
    model: pi0_config.Pi0Config = dataclasses.field(default_factory=pi0_config.Pi0Config)
    data: DataConfigFactory = dataclasses.field(default_factory=FakeDataConfig)
    # Folder with model.safetensors of the base model (e.g. converted from a JAX checkpoint); None trains from scratch.
    pytorch_weight_path: str | None = None
    pytorch_training_precision: Literal["bfloat16", "float32"] = "bfloat16"
    lr_schedule: optimizer.CosineDecaySchedule = dataclasses.field(default_factory=optimizer.CosineDecaySchedule)
    optimizer: optimizer.AdamW = dataclasses.field(default_factory=optimizer.AdamW)
    seed: int = 42
    batch_size: int = 32
    num_workers: int = 2
    num_train_steps: int = 30_000
    log_interval: int = 100
    save_interval: int = 1000
    # Checkpoints at multiples of keep_period are never deleted; None keeps only the latest.
    keep_period: int | None = 5000
    overwrite: bool = False
    resume: bool = False
    wandb_enabled: bool = True
    project_name: str = "openpi"
    assets_base_dir: str = "./assets"
    checkpoint_base_dir: str = "./checkpoints"
    gradient_checkpointing: bool = False

    @property
    def assets_dirs(self) -> Path:
        return Path(self.assets_base_dir) / self.name

    @property
    def checkpoint_dir(self) -> Path:
        if not self.exp_name:
            raise ValueError("exp_name is empty; pass --exp-name NAME")
        return Path(self.checkpoint_base_dir) / self.name / self.exp_name


def _tiny_model(**kwargs: Any) -> pi0_config.Pi0Config:
    return pi0_config.Pi0Config(
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        vision_variant="tiny_112",
        vocab_size=1024,
        dtype="float32",
        **kwargs,
    )


_LIBERO_SCHEDULE = optimizer.CosineDecaySchedule(
    warmup_steps=10_000, peak_lr=5e-5, decay_steps=1_000_000, decay_lr=5e-5
)
_PICK_PLACE_DATA = LeRobotAlohaDataConfig(
    repo_id="./datasets/six_object_pick_conveyor",
    assets=AssetsConfig(assets_dir="./datasets", asset_id="six_object_pick_conveyor"),
)


def _debug_embedded(name: str, **model_kwargs: Any) -> TrainConfig:
    return TrainConfig(
        name=name,
        model=_tiny_model(pi05=True, action_horizon=10, **model_kwargs),
        data=EmbeddedDataConfig(),
        pytorch_training_precision="float32",
        lr_schedule=optimizer.CosineDecaySchedule(warmup_steps=20, peak_lr=1e-3, decay_steps=300, decay_lr=1e-4),
        batch_size=8,
        num_workers=0,
        num_train_steps=300,
        log_interval=10,
        save_interval=100,
        keep_period=None,
    )


def _libero(name: str, pi05: bool, **model_kwargs: Any) -> TrainConfig:
    return TrainConfig(
        name=name,
        model=pi0_config.Pi0Config(pi05=pi05, action_horizon=10, **model_kwargs),
        data=LeRobotLiberoDataConfig(),
        lr_schedule=_LIBERO_SCHEDULE,
        optimizer=optimizer.AdamW(clip_gradient_norm=1.0),
        batch_size=64,
        num_train_steps=30_000,
    )


def _pick_place(name: str, pi05: bool, **model_kwargs: Any) -> TrainConfig:
    return TrainConfig(
        name=name,
        model=pi0_config.Pi0Config(pi05=pi05, **model_kwargs),
        data=_PICK_PLACE_DATA,
        lr_schedule=_LIBERO_SCHEDULE,
        optimizer=optimizer.AdamW(clip_gradient_norm=1.0),
        batch_size=64,
        num_train_steps=30_000,
    )


_CONFIGS: tuple[TrainConfig, ...] = (
    TrainConfig(
        name="debug",
        model=_tiny_model(pi05=False, action_horizon=10),
        data=FakeDataConfig(),
        pytorch_training_precision="float32",
        batch_size=2,
        num_workers=0,
        num_train_steps=10,
        log_interval=1,
        save_interval=5,
        keep_period=None,
        wandb_enabled=False,
    ),
    _debug_embedded("debug_pi05"),
    _debug_embedded("debug_pi05_lightvla", token_pruning_enabled=True),
    _libero("pi05_libero_pytorch", pi05=True),
    _libero("pi05_libero_pytorch_lightvla", pi05=True, token_pruning_enabled=True),
    _libero("pi0_libero_pytorch", pi05=False),
    _libero("pi0_libero_pytorch_lightvla", pi05=False, token_pruning_enabled=True),
    TrainConfig(
        name="pi0_aloha_sim_pytorch",
        model=pi0_config.Pi0Config(),
        data=LeRobotAlohaDataConfig(
            repo_id="lerobot/aloha_sim_transfer_cube_human",
            camera_keys={"cam_high": "top"},
            default_prompt="Transfer cube",
            use_delta_joint_actions=False,
            prompt_from_task=False,
        ),
        num_train_steps=20_000,
    ),
    TrainConfig(
        name="pi05_droid_pytorch",
        model=pi0_config.Pi0Config(pi05=True, action_horizon=15),
        data=DroidDataConfig(),
        lr_schedule=_LIBERO_SCHEDULE,
        batch_size=64,
    ),
    _pick_place("pi05_pick_place_pytorch", pi05=True),
    _pick_place("pi05_pick_place_pytorch_pruning", pi05=True, token_pruning_enabled=True, token_prune_noise_scale=0.5),
    _pick_place("pi0_pick_place_pytorch", pi05=False),
    _pick_place("pi0_pick_place_pytorch_pruning", pi05=False, token_pruning_enabled=True, token_prune_noise_scale=0.5),
)
_CONFIGS_BY_NAME = {config.name: config for config in _CONFIGS}
if len(_CONFIGS_BY_NAME) != len(_CONFIGS):
    raise ValueError("Config names must be unique")


def list_configs() -> list[str]:
    """Names of the registered configs."""
    return list(_CONFIGS_BY_NAME)


def get_config(name: str) -> TrainConfig:
    """Returns the registered config ``name``."""
    if name not in _CONFIGS_BY_NAME:
        close = difflib.get_close_matches(name, list(_CONFIGS_BY_NAME), n=3, cutoff=0.0)
        raise ValueError(f"Unknown config {name!r}. Did you mean one of {close}? All configs: {list_configs()}")
    return _CONFIGS_BY_NAME[name]


def cli(args: Sequence[str] | None = None) -> TrainConfig:
    """Parses ``CONFIG_NAME [--field value ...]`` into a :class:`TrainConfig`.

    Flags take underscores or hyphens (``--exp_name`` / ``--exp-name``); booleans work as flags (``--resume``,
    ``--no-resume``) and with a value (``--model.token_pruning_enabled True``).
    """
    args = list(sys.argv[1:] if args is None else args)
    return tyro.extras.overridable_config_cli(
        {config.name: (_describe(config), config) for config in _CONFIGS}, args=_bool_values_to_flags(args)
    )


def _describe(config: TrainConfig) -> str:
    variant = "π0.5" if config.model.pi05 else "π0"
    pruning = ", LightVLA pruning" if config.model.token_pruning_enabled else ""
    return f"{variant}{pruning}, data {type(config.data).__name__}({config.data.repo_id})"


def _bool_values_to_flags(args: list[str]) -> list[str]:
    """Rewrites ``--flag True`` / ``--flag False`` for boolean fields into tyro's ``--flag`` / ``--no-flag``."""
    bool_fields = set().union(*(_bool_field_paths(config) for config in _CONFIGS))
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:].replace("-", "_") if arg.startswith("--") and "=" not in arg else None
        value = args[i + 1].lower() if i + 1 < len(args) else None
        if key in bool_fields and value in ("true", "false"):
            prefix, _, leaf = key.rpartition(".")
            out.append(arg if value == "true" else f"--{prefix + '.' if prefix else ''}no_{leaf}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def _bool_field_paths(obj: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.type in ("bool", bool):
            paths.add(prefix + field.name)
        elif dataclasses.is_dataclass(value):
            paths |= _bool_field_paths(value, f"{prefix}{field.name}.")
    return paths
