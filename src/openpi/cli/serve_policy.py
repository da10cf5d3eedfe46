"""Serving a trained policy over websocket (``scripts/serve_policy.py``): the command line's arguments, the checkpoint
they name, the policy and the server built from them."""

from __future__ import annotations

import dataclasses
import enum
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import tyro

from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.policies.pipeline import StateRange
from openpi.serving.connection_limits import ServerLimits
from openpi.serving.recorder import RequestRecorder
from openpi.serving.websocket_policy_server import DEFAULT_SHUTDOWN_TIMEOUT_S, WebsocketPolicyServer
from openpi.training import config as _config

if TYPE_CHECKING:
    from openpi.policies.policy import Policy

logger = logging.getLogger(__name__)
_LIMITS = ServerLimits()
_STATE_RANGE = StateRange()
KEPT_BUCKET = 16  # with --compile-mode, a pruned model's kept patch count is padded to a multiple of this


class EnvMode(enum.Enum):
    """The robot or simulator the default checkpoint is for."""

    ALOHA = "aloha"
    ALOHA_SIM = "aloha_sim"
    DROID = "droid"
    LIBERO = "libero"


@dataclasses.dataclass
class Checkpoint:
    """Serve a trained checkpoint."""

    config: str
    """Training config name (e.g. pi05_libero_pytorch)."""
    dir: str
    """Checkpoint folder with model.safetensors and assets/<asset_id>/norm_stats.json."""
    raw_weights: bool = False
    """Serve model_raw.safetensors (the optimised weights) instead of the moving average a training run with
    ema_decay saved as model.safetensors."""


@dataclasses.dataclass
class Default:
    """Serve the default checkpoint of --env."""


DEFAULT_CHECKPOINTS: dict[EnvMode, Checkpoint] = {
    EnvMode.LIBERO: Checkpoint("pi05_libero_pytorch", "./checkpoints/pi05_libero_pytorch"),
    EnvMode.ALOHA: Checkpoint("pi05_pick_place_pytorch", "./checkpoints/pi05_pick_place_pytorch"),
    EnvMode.ALOHA_SIM: Checkpoint("pi0_aloha_sim_pytorch", "./checkpoints/pi0_aloha_sim_pytorch"),
    EnvMode.DROID: Checkpoint("pi05_droid_pytorch", "./checkpoints/pi05_droid_pytorch"),
}


@dataclasses.dataclass
class Args:
    """Serves a policy over websocket until SIGTERM/SIGINT. The options may come before or after policy:checkpoint;
    clients should wait until GET /healthz answers 200."""

    env: EnvMode = EnvMode.LIBERO
    """Environment whose default checkpoint is served when no policy:checkpoint is given."""
    default_prompt: str | None = None
    """Prompt for observations without one."""
    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """When set, clients must send the header `Authorization: Api-Key <key>`."""
    max_message_bytes: int = _LIMITS.max_message_bytes
    """Largest accepted websocket message; a larger one closes the connection (code 1009)."""
    max_connections: int = _LIMITS.max_connections
    """Open connections; further handshakes are refused with HTTP 503."""
    max_queued_frames: int = _LIMITS.max_queued_frames
    """Unanswered requests one connection may hold; a client sending more without reading its replies is
    disconnected (code 1008)."""
    max_connection_bytes: int = _LIMITS.max_connection_bytes
    """Bytes of unanswered requests one connection may hold (at least --max-message-bytes); beyond: disconnected."""
    max_frame_keys: int = _LIMITS.max_frame_keys
    """Map entries and list items one frame may decode to (an array counts as one); a larger frame is refused."""
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    """On SIGTERM/SIGINT, how long the requests already received may take to be answered before connections close."""
    skip_verify: bool = False
    """Serve without checking the checkpoint's files against its manifest and its weights for NaN/infinity."""
    state_range_limit: float = _STATE_RANGE.limit
    """Refuse (or log) a state beyond this many q01..q99 spans outside the training range (standard deviations from
    the mean for z-score models)."""
    state_range_mode: Literal["refuse", "warn", "off"] = _STATE_RANGE.mode
    """What a state beyond --state-range-limit gets: an error naming it, a logged warning, or nothing."""
    record: bool = False
    """Save every request and reply under --record-dir (see openpi.serving.recorder)."""
    record_dir: str = "policy_records"
    """Folder for --record."""
    record_max_mb: int = 1024
    """--record stops (with a warning) once it has written this many MiB."""
    token_prune_keep_ratio: float | None = None
    """LightVLA serving budget as a fraction in (0, 1] of the valid image tokens; replaces the config's budget
    (exclusive with --token-prune-keep-tokens)."""
    token_prune_keep_tokens: int | None = None
    """LightVLA serving budget as a count of image tokens; replaces the config's budget (exclusive with
    --token-prune-keep-ratio)."""
    num_steps: int | None = None
    """Denoising steps per action chunk; None keeps the model's default."""
    max_decoding_steps: int | None = None
    """π0-FAST: at most this many generated tokens per chunk; None keeps the config's."""
    temperature: float | None = None
    """π0-FAST: sampling temperature (0: greedy); None keeps the config's."""
    compile_mode: str | None = None
    """torch.compile mode for sample_actions (e.g. default, max-autotune); a pruned model then pads its kept patch
    count to multiples of 16 and each batch to a power of two (both exact, see --batch-buckets), so it compiles once
    per bucket, not per observation."""
    max_batch: int = 16
    """Requests that queue while the model is busy are answered by one batched call of at most this many (1: off)."""
    batch_buckets: tuple[int, ...] | None = None
    """Batch sizes the model runs at (a batch is padded up to the next one); default: the powers of two up to
    --max-batch with --compile-mode, else none (eager runs every size as it comes)."""
    batch_window_ms: float = 0.0
    """Wait this long for more requests before running a batch (0: batch only what already waits)."""
    pytorch_device: str | None = None
    """e.g. cuda, cuda:1, cpu; default: CUDA when available."""
    policy: Checkpoint | Default = dataclasses.field(default_factory=Default)
    """The checkpoint to serve; the options above may come before or after it."""


def cli(argv: Sequence[str] | None = None) -> Args:
    """Parses the command line; the server's options may follow ``policy:checkpoint`` as well as precede it."""
    return tyro.cli(Args, args=options_first(list(sys.argv[1:] if argv is None else argv)))


def options_first(argv: list[str]) -> list[str]:
    """``argv`` with the server's own options (and their values) moved before the ``policy:...`` subcommand, where
    tyro expects them."""
    names = [field.name for field in dataclasses.fields(Args) if field.name != "policy"]
    own = {f"--{prefix}{n}" for name in names for n in (name, name.replace("_", "-")) for prefix in ("", "no-", "no_")}
    subcommand = next((i for i, arg in enumerate(argv) if arg.startswith("policy:")), None)
    if subcommand is None:
        return argv
    before, after, moved = argv[:subcommand], [argv[subcommand]], []
    rest = argv[subcommand + 1 :]
    i = 0
    while i < len(rest):
        if rest[i].split("=", 1)[0] not in own:
            after.append(rest[i])
            i += 1
            continue
        moved.append(rest[i])
        i += 1
        while "=" not in moved[-1] and i < len(rest) and not rest[i].startswith("--"):
            moved.append(rest[i])  # the option's values
            i += 1
    return before + moved + after


def resolve_checkpoint(args: Args) -> Checkpoint:
    """The checkpoint to serve: the explicit one, or the environment's default."""
    if isinstance(args.policy, Checkpoint):
        return args.policy
    checkpoint = DEFAULT_CHECKPOINTS[args.env]
    if checkpoint.config not in _config.list_configs():
        raise ValueError(
            f"No default policy for --env {args.env.name}: config {checkpoint.config!r} is not registered. "
            "Serve a checkpoint explicitly: policy:checkpoint --policy.config NAME --policy.dir DIR"
        )
    return checkpoint


def create_policy(args: Args) -> Policy:
    """Loads the checkpoint with the serving-time pruning budget in its model config."""
    from openpi.policies import policy_config  # the model's framework is imported only once a checkpoint is served

    checkpoint = resolve_checkpoint(args)
    config = _config.get_config(checkpoint.config)
    config = dataclasses.replace(config, model=with_budget(config.model, args))
    return policy_config.create_trained_policy(
        with_compile(config, args.compile_mode),
        checkpoint.dir,
        default_prompt=args.default_prompt,
        sample_kwargs=sample_settings(args),
        pytorch_device=args.pytorch_device,
        raw_weights=checkpoint.raw_weights,
        batch_buckets=batch_buckets(args),
        verify=not args.skip_verify,
        state_range=StateRange(args.state_range_limit, args.state_range_mode),
    )


def with_budget(model: Pi0Config | Pi0FastConfig, args: Args) -> Pi0Config | Pi0FastConfig:
    """``model`` with the flags' pruning budget, which replaces the config's (a count or a ratio, never both)."""
    ratio, tokens = args.token_prune_keep_ratio, args.token_prune_keep_tokens
    if ratio is not None and tokens is not None:
        raise ValueError("Give one of --token-prune-keep-ratio (a fraction) and --token-prune-keep-tokens (a count)")
    if ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"--token-prune-keep-ratio is a fraction of the image tokens in (0, 1], got {ratio}")
    if tokens is not None and tokens < 1:
        raise ValueError(f"--token-prune-keep-tokens is a count of image tokens (at least 1), got {tokens}")
    if ratio is None and tokens is None:
        return model
    return dataclasses.replace(model, token_prune_keep_ratio=ratio, token_prune_keep_tokens=tokens)


def sample_settings(args: Args) -> dict[str, Any]:
    """The sampling flags that are set: ``num_steps`` (π0 / π0.5), ``max_decoding_steps`` and ``temperature``
    (π0-FAST)."""
    flags = {
        "num_steps": args.num_steps,
        "max_decoding_steps": args.max_decoding_steps,
        "temperature": args.temperature,
    }
    return {name: value for name, value in flags.items() if value is not None}


def batch_buckets(args: Args) -> tuple[int, ...] | None:
    """The batch sizes the model runs at: the flag's, else the powers of two up to --max-batch when compiling."""
    if args.batch_buckets is not None:
        if args.batch_buckets[-1] < args.max_batch:
            raise ValueError(f"--batch-buckets {args.batch_buckets} must reach --max-batch {args.max_batch}")
        return args.batch_buckets
    if args.compile_mode is None:
        return None
    powers = [2**i for i in range(args.max_batch.bit_length()) if 2**i < args.max_batch]
    return (*powers, args.max_batch)


def with_compile(config: _config.TrainConfig, compile_mode: str | None) -> _config.TrainConfig:
    """``config`` whose model compiles ``sample_actions`` with ``compile_mode`` (and buckets its kept count)."""
    if compile_mode is None:
        return config
    if isinstance(config.model, Pi0FastConfig):
        raise ValueError("--compile-mode compiles π0 / π0.5 sampling; π0-FAST decodes eagerly")
    model = dataclasses.replace(
        config.model,
        pytorch_compile_mode=compile_mode,
        token_prune_kept_multiple=config.model.token_prune_kept_multiple or KEPT_BUCKET,
    )
    return dataclasses.replace(config, model=model)


def budget_in_force(model_config: Pi0Config | Pi0FastConfig) -> dict[str, Any]:
    """The pruning budget the model serves with: ``{"token_prune_keep_tokens": K}`` (a count wins over a ratio),
    ``{"token_prune_keep_ratio": r}``, or ``{}`` (no pruning, or LightVLA's union of the votes)."""
    if not model_config.token_pruning_enabled:
        return {}
    if model_config.token_prune_keep_tokens is not None:
        return {"token_prune_keep_tokens": model_config.token_prune_keep_tokens}
    if model_config.token_prune_keep_ratio is not None:
        return {"token_prune_keep_ratio": model_config.token_prune_keep_ratio}
    return {}


def server_metadata(policy: Policy, args: Args) -> dict[str, Any]:
    """The policy's metadata plus the pruning budget in force and the batching settings."""
    model_config = policy.model.config
    if isinstance(model_config, Pi0FastConfig):
        model_settings = {
            "max_decoding_steps": args.max_decoding_steps or model_config.max_decoding_steps,
            "temperature": model_config.temperature if args.temperature is None else args.temperature,
        }
    else:
        model_settings = {
            "compile_mode": model_config.pytorch_compile_mode,
            "token_prune_kept_multiple": model_config.token_prune_kept_multiple,
        }
    return {
        **policy.metadata,
        **budget_in_force(model_config),
        **model_settings,
        "max_batch": args.max_batch,
        "batch_buckets": policy.batch_buckets,
        "batch_window_ms": args.batch_window_ms,
    }


def create_server(args: Args) -> WebsocketPolicyServer:
    """Builds the server for ``args`` (not yet listening)."""
    policy = create_policy(args)
    metadata = server_metadata(policy, args)
    logger.info("Serving %s", metadata)
    if policy.model.token_pruning_enabled:
        budget = budget_in_force(policy.model.config)
        in_force = ", ".join(f"{key.removeprefix('token_prune_')}={value}" for key, value in budget.items())
        logger.info("Token pruning budget in force: %s", in_force or "the union of the votes (no fixed budget)")
    return WebsocketPolicyServer(
        policy,
        args.host,
        args.port,
        metadata=metadata,
        api_key=args.api_key,
        limits=server_limits(args),
        recorder=RequestRecorder(args.record_dir, args.record_max_mb * 2**20) if args.record else None,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        warmup=policy.warmup,
        shutdown_timeout_s=args.shutdown_timeout_s,
    )


def server_limits(args: Args) -> ServerLimits:
    """The connection, frame and byte limits of the flags; logs the memory they bound client data to."""
    limits = ServerLimits(
        max_connections=args.max_connections,
        max_message_bytes=args.max_message_bytes,
        max_queued_frames=args.max_queued_frames,
        max_connection_bytes=args.max_connection_bytes,
        max_frame_keys=args.max_frame_keys,
    )
    logger.info("Client data takes at most %.1f GiB (%s)", limits.memory_bound_bytes() / 2**30, limits)
    return limits


def serve(args: Args) -> None:
    """Serves until SIGTERM or SIGINT, then answers the requests received and exits.

    Raises:
        ValueError, FileNotFoundError: the checkpoint or a flag cannot be served (named in the message).
    """
    create_server(args).serve_forever()
    if args.compile_mode is not None:
        import torch

        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        logger.info("torch.compile built %d graphs over this run", graphs)
