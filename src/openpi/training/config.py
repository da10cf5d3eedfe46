"""Training configs: the :class:`TrainConfig` schema, the registry of named configs and the command-line parser.

Each robot's data-config factory lives beside its robot mapping in ``openpi.policies``; this module only picks them.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tyro

from openpi.models import pi0_config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.policies.aloha_policy import LeRobotAlohaDataConfig
from openpi.policies.data_config import AssetsConfig, DataConfigFactory, FakeDataConfig
from openpi.policies.droid_policy import DroidDataConfig
from openpi.policies.libero_policy import LeRobotLiberoDataConfig
from openpi.policies.mixture import MixtureDataConfig, MixtureMember
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.training import optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; every field can be overridden on the command line."""

    name: str
    """Registered config name; checkpoints go to <checkpoint-base-dir>/<name>/<exp-name>."""
    exp_name: str = ""
    """Name of this run (required): its folder under <checkpoint-base-dir>/<name>/."""
    model: pi0_config.Pi0Config | Pi0FastConfig = dataclasses.field(default_factory=pi0_config.Pi0Config)
    """The model's architecture and pruning settings (π0 / π0.5, or π0-FAST)."""
    data: DataConfigFactory = dataclasses.field(default_factory=FakeDataConfig)
    """The dataset and its pipeline."""
    pytorch_weight_path: str | None = None
    """Folder with model.safetensors of the base model (e.g. converted from a JAX checkpoint); None trains from
    scratch."""
    weight_path: str | None = None
    """JAX trainer (scripts/train.py): a published orbax checkpoint (the folder holding params/) to start from."""
    allow_random_init: bool = True
    """Fine-tuning configs set this False: starting them without base weights is an error, not a random 3.3B."""
    pytorch_training_precision: Literal["bfloat16", "float32", "mixed"] = "bfloat16"
    """bfloat16: bf16 weights (norms and projections float32); float32; mixed: float32 master weights, the forward and
    backward under bf16 autocast."""
    lr_schedule: optimizer.CosineDecaySchedule = dataclasses.field(default_factory=optimizer.CosineDecaySchedule)
    """Learning-rate schedule: linear warmup, then cosine decay."""
    optimizer: optimizer.AdamW = dataclasses.field(default_factory=optimizer.AdamW)
    """AdamW settings and gradient clipping."""
    seed: int = 42
    """Seed of the model's initialisation, the data order and the noise of every step."""
    batch_size: int = 32
    """Samples per optimizer step, over all devices together."""
    num_workers: int = 2
    """Data-loading worker processes (0: load in the training process)."""
    num_train_steps: int = 30_000
    """Optimizer steps to train for."""
    log_interval: int = 100
    """Log the loss and metrics every this many steps."""
    save_interval: int = 1000
    """Save a checkpoint every this many steps (and at the last step)."""
    keep_period: int | None = 5000
    """Checkpoints at multiples of keep_period are never deleted; None keeps only the latest."""
    overwrite: bool = False
    """Delete an existing experiment folder and start over."""
    resume: bool = False
    """Continue the existing experiment folder from its latest complete checkpoint."""
    wandb_enabled: bool = True
    """Log to Weights & Biases (--no-wandb-enabled: the console only)."""
    project_name: str = "openpi"
    """Weights & Biases project of the run."""
    assets_base_dir: str = "./assets"
    """Folder of the norm stats: <assets-base-dir>/<name>/<asset_id>/norm_stats.json."""
    checkpoint_base_dir: str = "./checkpoints"
    """Folder of the checkpoints: <checkpoint-base-dir>/<name>/<exp-name>/<step>/."""
    gradient_checkpointing: bool = False
    """Recompute the activations in the backward pass instead of storing them: less memory, a slower step."""
    pytorch_training_compile_mode: str | None = None
    """torch.compile the training forward with this mode (e.g. "default", "max-autotune"); a pruned model then buckets
    its deduplicated patch count in 16s so that the step recompiles once per bucket. None: eager."""
    fsdp_devices: int = 1
    """Shard parameters, gradients and optimizer state over this many devices: PyTorch FSDP2 over torchrun processes
    (training/fsdp.py), or the JAX trainer's data x fsdp device mesh. 1: no sharding."""
    freeze_filter: str | None = None
    """Freeze the parameters matching this preset ("lora", "expert-only", "vision"; see training/freezing.py) or regex;
    None freezes nothing. LoRA fine-tunes set the model's `get_freeze_filter()`, as upstream's configs do."""
    ema_decay: float | None = None
    """Keep a moving average of the weights (saved as model.safetensors, the weights loaders serve); None: off.
    Upstream's default is 0.99; here the published fine-tuning configs set theirs and the others keep none."""
    viz_interval: int | None = 1000
    """With pruning and wandb on: log a picture of the kept patches of the batch's first sample every N steps."""
    val_fraction: float | None = None
    """Hold out this fraction of every dataset's episodes (a draw from --seed, kept in the checkpoints) and log the
    validation loss on them (val/*); training and its norm stats use the other episodes. None: no validation."""
    val_episodes: int | None = None
    """Hold out this many episodes of every dataset instead of a fraction."""
    val_interval: int | None = None
    """Validate every N optimizer steps and after the last; None: every save_interval."""
    val_num_batches: int = 4
    """Global batches of held-out frames per validation: the same frames, noise and times every time."""

    @property
    def assets_dirs(self) -> Path:
        return Path(self.assets_base_dir) / self.name

    @property
    def checkpoint_dir(self) -> Path:
        if not self.exp_name:
            raise ValueError("exp_name is empty; pass --exp-name NAME")
        return Path(self.checkpoint_base_dir) / self.name / self.exp_name


_LIBERO_SCHEDULE = optimizer.CosineDecaySchedule(
    warmup_steps=10_000, peak_lr=5e-5, decay_steps=1_000_000, decay_lr=5e-5
)
_PICK_PLACE_DATA = LeRobotAlohaDataConfig(
    repo_id="./datasets/six_object_pick_conveyor",
    assets=AssetsConfig(assets_dir="./datasets", asset_id="six_object_pick_conveyor"),
)


def _debug_embedded(name: str, data: DataConfigFactory | None = None, **model_kwargs: Any) -> TrainConfig:
    return TrainConfig(
        name=name,
        model=pi0_config.tiny_config(vision_variant="tiny_112", action_horizon=10, **model_kwargs),
        data=data or EmbeddedDataConfig(),
        pytorch_training_precision="float32",
        lr_schedule=optimizer.CosineDecaySchedule(warmup_steps=20, peak_lr=1e-3, decay_steps=300, decay_lr=1e-4),
        batch_size=8,
        num_workers=0,
        num_train_steps=300,
        log_interval=10,
        save_interval=100,
        keep_period=None,
    )


# What the *_lightvla configs prune with: the pruner trained on the budget it is served with, 25% of the patches, the
# dropped patches gated in training so that the gate's gradient reaches them too (the evidence: research/lightvla/).
# LightVLA's own union-of-argmaxes selection is `--model.token-prune-budget-training False
# --model.token-prune-keep-ratio None --model.token-prune-gate-dropped-patches False`.
LIGHTVLA_PRUNING: dict[str, Any] = {
    "token_pruning_enabled": True,
    "token_prune_budget_training": True,
    "token_prune_keep_ratio": 0.25,
    "token_prune_gate_dropped_patches": True,
}


# A mixture of two of the shapes testbed's scenes, drawn 1:2: an easy one (one or two objects of distinct colours) and
# a hard one (four to six objects sharing colours and shapes, so that only the whole prompt names the target), each
# normalised with its own norm stats; it serves as the easy one.
SHAPES_MIXTURE = MixtureDataConfig(
    members=(
        MixtureMember("easy", EmbeddedDataConfig(min_objects=1, max_objects=2), weight=1.0),
        MixtureMember("hard", EmbeddedDataConfig(min_objects=4, max_objects=6, shared_attributes=True), weight=2.0),
    )
)


# The pruning testbed (research/lightvla/README.md): three objects per scene, one sharing the target's colour and one
# its shape, so that only the whole prompt names the target; a vision tower that mixes each camera's patches
# (`tiny_112`: two self-attention layers); many scenes, so that memorising them cannot solve held-out ones. Sized to
# train in at most 45 minutes on an idle 2-core CPU (the measurement: research/lightvla/README.md, "Mixing-tower
# testbed").
SHAPES_DATA = EmbeddedDataConfig(
    num_episodes=3000,
    episode_length=15,
    image_size=112,
    frames_after_arrival=1,
    min_objects=3,
    max_objects=3,
    shared_attributes=True,
)
SHAPES_STEPS = 8000
# The pruner is fine-tuned from a trained `pi05_shapes` checkpoint (`--pytorch-weight-path DIR`), as users fine-tune
# the π0.5 base.
SHAPES_FINETUNE_STEPS = 2000


def _shapes(name: str, steps: int = SHAPES_STEPS, fine_tune: bool = False, **model_kwargs: Any) -> TrainConfig:
    """A tiny π0.5 on the shapes testbed: one camera pair at 112 px, 4-step action chunks, CPU-sized; ``fine_tune``
    refuses to start from random weights."""
    return TrainConfig(
        name=name,
        model=pi0_config.tiny_config(vision_variant="tiny_112", action_horizon=4, **model_kwargs),
        data=SHAPES_DATA,
        pytorch_training_precision="float32",
        lr_schedule=optimizer.CosineDecaySchedule(warmup_steps=50, peak_lr=1e-3, decay_steps=steps, decay_lr=1e-4),
        batch_size=16,
        num_workers=0,
        num_train_steps=steps,
        log_interval=50,
        save_interval=min(steps, 1000),
        keep_period=None,
        allow_random_init=not fine_tune,
        wandb_enabled=False,
    )


def _finetune_recipe(
    name: str, model: pi0_config.Pi0Config, data: DataConfigFactory, ema_decay: float | None = 0.99
) -> TrainConfig:
    """The single-GPU fine-tuning recipe: cosine schedule (warmup 10k, peak 5e-5, decay over 1M steps to 5e-5), AdamW
    clipped at 1.0, 30k steps, batch 64 on one GPU (upstream uses 256), EMA of the weights (upstream's 0.99 unless
    the published config says otherwise), gradient checkpointing on, and base weights required."""
    return TrainConfig(
        name=name,
        model=model,
        data=data,
        lr_schedule=_LIBERO_SCHEDULE,
        optimizer=optimizer.AdamW(clip_gradient_norm=1.0),
        batch_size=64,
        num_train_steps=30_000,
        ema_decay=ema_decay,
        gradient_checkpointing=True,
        allow_random_init=False,
    )


def _libero(name: str, pi05: bool, **model_kwargs: Any) -> TrainConfig:
    """Upstream's pi05_libero (horizon 10, no delta transform, EMA 0.999) or pi0_libero (horizon 50, delta actions on
    the first six dims, EMA 0.99) with the single-GPU fine-tuning recipe."""
    if pi05:
        model = pi0_config.Pi0Config(pi05=True, action_horizon=10, **model_kwargs)
        return _finetune_recipe(name, model, LeRobotLiberoDataConfig(), ema_decay=0.999)
    model = pi0_config.Pi0Config(pi05=False, **model_kwargs)
    return _finetune_recipe(name, model, LeRobotLiberoDataConfig(extra_delta_transform=True), ema_decay=0.99)


def _libero_low_mem(name: str, pi05: bool, **model_kwargs: Any) -> TrainConfig:
    """Upstream's low-memory LoRA fine-tune: LoRA variants of both experts, their base weights frozen (the model's
    ``get_freeze_filter()``, as upstream), no EMA."""
    lora = {"paligemma_variant": "gemma_2b_lora", "action_expert_variant": "gemma_300m_lora", **model_kwargs}
    config = _libero(name, pi05, **lora)
    return dataclasses.replace(config, freeze_filter=config.model.get_freeze_filter(), ema_decay=None)


def _pick_place(name: str, pi05: bool, **model_kwargs: Any) -> TrainConfig:
    return _finetune_recipe(name, pi0_config.Pi0Config(pi05=pi05, **model_kwargs), _PICK_PLACE_DATA)


def _debug_fast(name: str) -> TrainConfig:
    """A tiny π0-FAST (the ``dummy`` Gemma, the 112 px SigLIP) on the embedded dataset with its FAST tokenizer."""
    model = Pi0FastConfig(
        paligemma_variant="dummy",
        vision_variant="tiny_112",
        vocab_size=1024,
        action_dim=7,
        action_horizon=10,
        max_token_len=128,
        dtype="float32",
        max_decoding_steps=100,
    )
    return dataclasses.replace(_debug_embedded(name), model=model)


def _fast_libero(name: str, **model_kwargs: Any) -> TrainConfig:
    """Upstream's pi0_fast_libero: 7-dim actions, 10-step chunks, 180 tokens, delta actions on the first six dims,
    with the single-GPU fine-tuning recipe (EMA 0.99)."""
    model = Pi0FastConfig(action_dim=7, action_horizon=10, max_token_len=180, **model_kwargs)
    return _finetune_recipe(name, model, LeRobotLiberoDataConfig(extra_delta_transform=True))


def _fast_libero_low_mem(name: str) -> TrainConfig:
    """Upstream's pi0_fast_libero_low_mem_finetune: LoRA on the language model, its base weights frozen, no EMA."""
    config = _fast_libero(name, paligemma_variant="gemma_2b_lora")
    return dataclasses.replace(config, freeze_filter=config.model.get_freeze_filter(), ema_decay=None)


def _aloha_inference(name: str, pi05: bool = False, default_prompt: str | None = None) -> TrainConfig:
    """Upstream's ALOHA inference configs: the base model's ``trossen`` norm stats, upstream's defaults otherwise."""
    data = LeRobotAlohaDataConfig(assets=AssetsConfig(asset_id="trossen"), default_prompt=default_prompt)
    return TrainConfig(name=name, model=pi0_config.Pi0Config(pi05=pi05), data=data)


_CONFIGS: tuple[TrainConfig, ...] = (
    TrainConfig(
        name="debug",
        model=pi0_config.tiny_config(pi05=False, vision_variant="tiny_112", action_horizon=10),
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
    _debug_embedded("debug_pi05_lightvla", **LIGHTVLA_PRUNING),
    _debug_embedded("debug_pi05_lightvla_mixture", SHAPES_MIXTURE, **LIGHTVLA_PRUNING),
    _shapes("pi05_shapes"),
    _shapes("pi05_shapes_lightvla", SHAPES_FINETUNE_STEPS, fine_tune=True, **LIGHTVLA_PRUNING),
    # The published pi05_libero checkpoint was trained without the state in its prompt.
    _libero("pi05_libero_pytorch", pi05=True, discrete_state_input=False),
    _libero("pi05_libero_pytorch_lightvla", pi05=True, discrete_state_input=False, **LIGHTVLA_PRUNING),
    _libero("pi0_libero_pytorch", pi05=False),
    _libero_low_mem("pi0_libero_low_mem_finetune_pytorch", pi05=False),
    _libero_low_mem("pi05_libero_low_mem_finetune_pytorch", pi05=True, discrete_state_input=False),
    _libero("pi0_libero_pytorch_lightvla", pi05=False, **LIGHTVLA_PRUNING),
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
    _debug_fast("debug_pi0_fast"),
    _fast_libero("pi0_fast_libero"),
    _fast_libero_low_mem("pi0_fast_libero_low_mem_finetune"),
    # Upstream's inference configs for its published checkpoints, under upstream's names.
    TrainConfig(name="pi0_droid", model=pi0_config.Pi0Config(action_horizon=10), data=DroidDataConfig()),
    TrainConfig(name="pi0_fast_droid", model=Pi0FastConfig(action_dim=8, action_horizon=10), data=DroidDataConfig()),
    _aloha_inference("pi0_aloha"),
    _aloha_inference("pi05_aloha", pi05=True),
    _aloha_inference("pi0_aloha_towel", default_prompt="fold the towel"),
    _aloha_inference("pi0_aloha_tupperware", default_prompt="open the tupperware and put the food on the plate"),
)

# Upstream's names for configs registered above under their PyTorch names: the same recipe, with checkpoints and
# assets under the name typed (checkpoints/pi05_libero/<exp>, as upstream).
UPSTREAM_ALIASES: dict[str, str] = {
    "pi0_libero": "pi0_libero_pytorch",
    "pi05_libero": "pi05_libero_pytorch",
    "pi0_libero_low_mem_finetune": "pi0_libero_low_mem_finetune_pytorch",
    "pi0_aloha_sim": "pi0_aloha_sim_pytorch",
    "pi05_droid": "pi05_droid_pytorch",
}

_REGISTERED = {config.name: config for config in _CONFIGS}
_CONFIGS_BY_NAME = {
    **_REGISTERED,
    **{alias: dataclasses.replace(_REGISTERED[name], name=alias) for alias, name in UPSTREAM_ALIASES.items()},
}
if len(_CONFIGS_BY_NAME) != len(_CONFIGS) + len(UPSTREAM_ALIASES):
    raise ValueError("Config names must be unique")


def list_configs() -> list[str]:
    """Names of the registered configs, then upstream's names for some of them (:data:`UPSTREAM_ALIASES`)."""
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
        {name: (_describe(name), config) for name, config in _CONFIGS_BY_NAME.items()},
        args=_bool_values_to_flags(args),
    )


def _describe(name: str) -> str:
    if name in UPSTREAM_ALIASES:
        return f"upstream's name for {UPSTREAM_ALIASES[name]}"
    config = _REGISTERED[name]
    model = config.model
    variant = "π0-FAST" if isinstance(model, Pi0FastConfig) else "π0.5" if model.pi05 else "π0"
    pruning = ", LightVLA pruning" if isinstance(model, pi0_config.Pi0Config) and model.token_pruning_enabled else ""
    data = type(config.data).__name__
    if isinstance(config.data, MixtureDataConfig):
        members = ", ".join(f"{m.name} ({type(m.data).__name__}, weight {m.weight:g})" for m in config.data.members)
        return f"{variant}{pruning}, a mixture of {members}"
    if config.data.repo_id is None:
        return f"{variant}{pruning}, data {data} (no dataset set), norm stats of asset {config.data.assets.asset_id}"
    return f"{variant}{pruning}, data {data}({config.data.repo_id})"


def _bool_values_to_flags(args: list[str]) -> list[str]:
    """Rewrites ``--flag True`` / ``--flag False`` for boolean fields into tyro's ``--flag`` / ``--no-flag``.

    It stays because users type both spellings (upstream's ``--resume``; ``--model.token_pruning_enabled True`` in
    the LightVLA recipes) and tyro accepts one per field: flags by default, values only with
    ``tyro.conf.FlagConversionOff``.
    """
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
        elif isinstance(value, tuple):  # e.g. a mixture's members, --data.members.0.data.<field>
            for index, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    paths |= _bool_field_paths(item, f"{prefix}{field.name}.{index}.")
    return paths
