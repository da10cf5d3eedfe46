"""The PyTorch training loop: one process (GPU or CPU) or ``torchrun`` DDP, with checkpoints, resume and wandb.

Every source of randomness in a step is a function of ``(seed, step, rank)``: the data loader's batch, the image
augmentation generator and the global torch RNG (flow-matching noise and time, the pruner's exploration noise) are
re-seeded from it at the start of each step. A resumed run therefore repeats exactly the steps an uninterrupted run
would have taken. Checkpoints additionally carry every rank's python/numpy/torch/CUDA RNG states, restored on resume.
With a validation split, every ``val_interval`` steps each rank validates its share of the fixed held-out batches
(``training.validation``; no RNG stream is touched) and rank 0 logs the mean.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import tqdm
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from openpi.models.observation import Observation
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch import lora, preprocessing, rtc, weights
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import pruning_overlay
from openpi.training import checkpoints, data_loader, freezing, fsdp, run_data, validation
from openpi.training import config as _config
from openpi.training.ema import ExponentialMovingAverage

# With a compiled training step, a pruned model pads its deduplicated patch count to a multiple of this.
COMPILED_KEPT_MULTIPLE = 16
logger = logging.getLogger(__name__)

WANDB_ID_FILENAME = "wandb_id.txt"
# Purposes mixed into the per-step seed so the streams are independent.
_GLOBAL_RNG_STREAM = 0
_AUGMENTATION_STREAM = 1


class ExperimentDirError(ValueError):
    """The experiment directory cannot be used as requested (exists without --resume/--overwrite, or both given)."""


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the trained (unwrapped) model, the final step and every logged metrics dict (the
    validations' ``val/*`` metrics in entries of their own, at the number of steps done)."""

    model: PI0Pytorch
    step: int
    history: list[dict[str, float]]


# ------------------------------------------------------------------------------------------------ set-up
def init_distributed() -> DistributedContext:
    """Joins the ``torchrun`` process group when ``WORLD_SIZE > 1`` (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available()
    if world_size == 1:
        return DistributedContext(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), device)


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A well-mixed 63-bit seed for one (seed, step, rank, stream) combination."""
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def augmentation_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator that drives image augmentation of one step's batch on one rank."""
    return torch.Generator().manual_seed(step_seed(seed, step, rank, _AUGMENTATION_STREAM))


def prepare_experiment_dir(config: _config.TrainConfig) -> int | None:
    """Applies ``--overwrite`` / ``--resume`` to the experiment directory; returns the step to resume from, if any.

    Raises:
        ExperimentDirError: both ``resume`` and ``overwrite`` are set, or the directory exists and neither is.
    """
    exp_dir = Path(config.checkpoint_dir)
    if config.resume and config.overwrite:
        raise ExperimentDirError("--resume and --overwrite are mutually exclusive: continue the run or start it over")
    if exp_dir.exists() and config.overwrite:
        logger.info("Wiping experiment directory %s (--overwrite)", exp_dir)
        shutil.rmtree(exp_dir)
    elif exp_dir.exists() and not config.resume and not _is_empty(exp_dir):
        raise ExperimentDirError(
            f"Experiment directory {exp_dir} already exists. Pass --resume to continue from its latest complete "
            "checkpoint, --overwrite to delete it and start over, or choose another --exp-name."
        )
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        return None
    checkpoints.remove_incomplete(exp_dir)
    step = checkpoints.latest_verified_step(exp_dir)
    if step is None:
        logger.warning("--resume given but %s has no complete, intact checkpoint; starting from scratch", exp_dir)
    return step


def _is_empty(directory: Path) -> bool:
    """An experiment directory left empty (a run that failed before writing anything) is reused as new."""
    return not any(directory.iterdir())


def build_model(config: _config.TrainConfig, device: torch.device, *, load_pretrained: bool = True) -> PI0Pytorch:
    """Builds the model at the training precision, moved to ``device``.

    With ``load_pretrained``, the weights in ``config.pytorch_weight_path`` (if set) are loaded.
    """
    weights_dtype = "float32" if config.pytorch_training_precision == "mixed" else config.pytorch_training_precision
    model_config = dataclasses.replace(config.model, dtype=weights_dtype)
    if isinstance(model_config, Pi0FastConfig):
        return _build_fast_model(config, model_config, device, load_pretrained)
    if config.pytorch_training_compile_mode is not None:
        kept_multiple = model_config.token_prune_kept_multiple or COMPILED_KEPT_MULTIPLE
        model_config = dataclasses.replace(model_config, token_prune_kept_multiple=kept_multiple)
    model = PI0Pytorch(model_config)
    if load_pretrained and config.pytorch_weight_path is not None:
        logger.info("Loading weights from %s", config.pytorch_weight_path)
        weights.load_weights(model, config.pytorch_weight_path, keep_if_missing=lora.is_lora_parameter)
    if config.freeze_filter is not None:
        freezing.freeze_parameters(model, config.freeze_filter)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if model_config.token_pruning_enabled:
        logger.info("Enabled LightVLA-style token pruning (hidden_size=%d)", model_config.llm_config.width)
    if config.pytorch_training_compile_mode is not None:
        compile_training_forward(model, mode=config.pytorch_training_compile_mode)
    return model.to(device)


def _build_fast_model(
    config: _config.TrainConfig, model_config: Pi0FastConfig, device: torch.device, load_pretrained: bool
) -> Pi0FastPytorch:
    """π0-FAST at the training precision: base weights, freezing and checkpointing as for π0 (no pruning)."""
    model = Pi0FastPytorch(model_config)
    if load_pretrained and config.pytorch_weight_path is not None:
        logger.info("Loading weights from %s", config.pytorch_weight_path)
        weights.load_weights(model, config.pytorch_weight_path, keep_if_missing=lora.is_lora_parameter)
    if config.freeze_filter is not None:
        freezing.freeze_parameters(model, config.freeze_filter)
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.pytorch_training_compile_mode is not None:
        compile_training_forward(model, mode=config.pytorch_training_compile_mode)
    return model.to(device)


def prunes(model_config: Pi0Config | Pi0FastConfig) -> bool:
    """Whether the model prunes visual tokens (π0 / π0.5 with LightVLA pruning)."""
    return isinstance(model_config, Pi0Config) and model_config.token_pruning_enabled


def compile_training_forward(model: PI0Pytorch, *, mode: str | None = None, backend: str = "inductor") -> None:
    """Compiles ``model.forward`` (the training loss) with ``torch.compile``; ``sample_actions`` stays as it is.

    Shapes that vary per batch are bucketed by the model (the prompt by ``prompt_trim_multiple``, the deduplicated
    patches by ``token_prune_kept_multiple``), so the step compiles once per bucket; the Python ints that set those
    shapes are graph breaks. Shapes are static (``dynamic=False``, as CUDA graphs need): one graph per bucket.
    """
    model.forward = torch.compile(model.forward, mode=mode, backend=backend, dynamic=False)


def gpu_memory_metrics(device: torch.device) -> dict[str, float]:
    """``memory/allocated_gib``, ``memory/reserved_gib`` and ``memory/peak_allocated_gib`` on a CUDA device (the peak
    since the last log, then reset); nothing on the CPU."""
    if device.type != "cuda":
        return {}
    gib = 2**30
    metrics = {
        "memory/allocated_gib": torch.cuda.memory_allocated(device) / gib,
        "memory/reserved_gib": torch.cuda.memory_reserved(device) / gib,
        "memory/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / gib,
    }
    torch.cuda.reset_peak_memory_stats(device)
    return metrics


def check_base_weights(config: _config.TrainConfig) -> None:
    """Refuses to fine-tune random weights: a config with ``allow_random_init=False`` needs ``pytorch_weight_path``."""
    if config.pytorch_weight_path is None and not config.allow_random_init:
        raise ValueError(
            f"Config {config.name!r} fine-tunes a pretrained model, but --pytorch-weight-path is not set. Convert the "
            "base checkpoint (uv run examples/convert_jax_model_to_pytorch.py --checkpoint-dir JAX_CKPT/params "
            f"--config-name {config.name} --output-path checkpoints/base) and pass --pytorch-weight-path "
            "checkpoints/base, or pass --allow-random-init to train from random weights on purpose."
        )


def pruner_noise_scale(config: _config.TrainConfig, step: int) -> float:
    """The pruner's exploration noise at ``step``: the configured scale, decayed linearly to 0 over training (0
    without pruning)."""
    if not prunes(config.model):
        return 0.0
    return config.model.token_prune_noise_scale * max(0.0, 1.0 - step / config.num_train_steps)


# ----------------------------------------------------------------------------------------------- one step
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    observation: Observation,
    actions: torch.Tensor,
    *,
    lr: float,
    clip_gradient_norm: float,
    image_resolution: tuple[int, int],
    generator: torch.Generator | None,
    autocast_bf16: bool = False,
    rtc_max_delay: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resizes and augments the images, runs forward/backward (loss = mean of the per-element loss; under bf16
    autocast with ``autocast_bf16``), clips the gradient norm and updates; returns (loss, grad_norm, each sample's
    loss ``[B]``) detached.

    ``rtc_max_delay > 0`` (training-time real-time chunking): each example gets a committed prefix of
    ``d ~ U{0..rtc_max_delay}`` clean actions, left out of the means."""
    observation = preprocessing.preprocess_observation(
        observation, train=True, image_resolution=image_resolution, generator=generator
    )
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(actions.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        delay = None
        if rtc_max_delay > 0:
            delay = rtc.sample_training_delay(actions.shape[0], rtc_max_delay, actions.device)
        rtc_kwargs = {} if delay is None else {"rtc_delay": delay}
        losses = model(observation, actions, **rtc_kwargs).float()  # [B, H, action_dim]; π0-FAST: [B]
    loss = rtc.masked_loss_mean(losses, delay)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_gradient_norm)
    optimizer.step()
    return loss.detach(), grad_norm.detach(), rtc.sample_loss_means(losses.detach(), delay)


def configure_pruner(model: PI0Pytorch, config: _config.TrainConfig, step: int, collect_stats: bool) -> None:
    """Sets this step's exploration noise and whether the pruner records telemetry (only on log steps)."""
    if prunes(config.model):
        model.pruner.noise_scale = pruner_noise_scale(config, step)
        model.pruner.collect_stats = collect_stats


class DatasetLosses:
    """A mixture's per-sample training losses since the last log, with each sample's dataset (``names[i]``)."""

    def __init__(self, names: tuple[str, ...], pairs: list[list[float]] | None = None) -> None:
        self.names = names
        self._sources: list[np.ndarray] = [np.asarray([int(s) for s, _ in pairs or []], dtype=np.int64)]
        self._losses: list[torch.Tensor] = [torch.tensor([loss for _, loss in pairs or []], dtype=torch.float64)]

    def append(self, sources: np.ndarray, losses: torch.Tensor) -> None:
        """One step: each sample's dataset ``[b]`` and loss ``[b]``."""
        self._sources.append(sources)
        self._losses.append(losses)

    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        losses = torch.cat([loss.detach().double().cpu() for loss in self._losses]).numpy()
        return np.concatenate(self._sources), losses

    def totals(self) -> np.ndarray:
        """``[2, M]``: each dataset's summed loss and its sample count."""
        sources, losses = self._flat()
        size = len(self.names)
        return np.stack([np.bincount(sources, losses, size), np.bincount(sources, minlength=size).astype(np.float64)])

    def metrics(self, totals: np.ndarray | None = None) -> dict[str, float]:
        """``train/loss/<dataset>`` from :meth:`totals` (or the given ones, e.g. summed over ranks)."""
        sums, counts = self.totals() if totals is None else totals
        return {f"train/loss/{name}": float(sums[i] / counts[i]) for i, name in enumerate(self.names) if counts[i]}

    def pairs(self) -> list[list[float]]:
        """``[[dataset, loss], ...]`` in order, what a checkpoint keeps to continue the window."""
        sources, losses = self._flat()
        return [[float(s), float(loss)] for s, loss in zip(sources, losses, strict=True)]


# -------------------------------------------------------------------------------------------- the loop
def train(config: _config.TrainConfig) -> TrainResult:
    """Trains ``config`` to ``num_train_steps``, saving checkpoints under ``config.checkpoint_dir``."""
    config.data.prepare()  # every rank: concurrent preparation is safe, and ranks on other machines need their copy
    ctx = init_distributed()
    try:
        return _Trainer(config, ctx).run()
    finally:
        if ctx.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    def __init__(self, config: _config.TrainConfig, ctx: DistributedContext):
        self.config = config
        self.ctx = ctx
        self.exp_dir = Path(config.checkpoint_dir)
        self.history: list[dict[str, float]] = []
        self._resumed_window: list[float] = []
        self._resumed_dataset_window: list[list[float]] = []
        self.ema: ExponentialMovingAverage | None = None
        self.sharded = config.fsdp_devices > 1
        self.validation: data_loader.DataLoader | None = None

    def run(self) -> TrainResult:
        config, ctx = self.config, self.ctx
        _check_batch_size(config, ctx)
        if not config.resume:
            check_base_weights(config)  # before the experiment folder exists: a refused run leaves none behind
        resume_step = self._broadcast(self._prepare_dir_on_main())
        if resume_step is None and config.resume:
            check_base_weights(config)
        resume_dir = None if resume_step is None else checkpoints.step_dir(self.exp_dir, resume_step)
        data = run_data.prepare(config, resume_dir)
        torch.manual_seed(config.seed)
        model = build_model(config, ctx.device, load_pretrained=resume_step is None)
        if self.sharded:
            _check_fsdp(config, ctx)
            fsdp.shard_model(model, ctx.world_size, config.fsdp_devices, ctx.device)
        trainable = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no optimizer state
        optimizer = config.optimizer.build(trainable, lr=config.lr_schedule.lr_at(0))
        self.ema = None if config.ema_decay is None else ExponentialMovingAverage(model, config.ema_decay)
        start_step = 0
        if resume_step is not None:
            start_step = self._restore(model, optimizer, resume_step)
        ddp_model = self._wrap(model)
        loader = data_loader.create_data_loader(
            config,
            rank=ctx.rank,
            world_size=ctx.world_size,
            shuffle=True,
            start_step=start_step,
            num_batches=config.num_train_steps - start_step,
            split=data.split,
            data_config=data.data_config,
        )
        if data.split is not None:
            self.validation = data_loader.create_validation_loader(
                config, data.split, data.data_config, rank=ctx.rank, world_size=ctx.world_size
            )
        wandb_run = self._init_wandb(resume_step is not None) if ctx.is_main and config.wandb_enabled else None
        try:
            self._loop(model, ddp_model, optimizer, loader, data, start_step, wandb_run)
        finally:
            if wandb_run is not None:
                wandb_run.finish()
        return TrainResult(model=model, step=config.num_train_steps, history=self.history)

    def _loop(
        self,
        model: PI0Pytorch,
        ddp_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: data_loader.DataLoader,
        data: run_data.RunData,
        start_step: int,
        wandb_run: Any,
    ) -> None:
        config, ctx = self.config, self.ctx
        batches: Iterator[tuple[Observation, torch.Tensor]] = iter(loader)
        model.train()
        image_size = config.model.vision_config.image_size
        image_resolution = (image_size, image_size)
        losses: list[torch.Tensor] = [torch.tensor(loss, device=ctx.device) for loss in self._resumed_window]
        dataset_losses = DatasetLosses(loader.source_names, self._resumed_dataset_window)
        window_start = time.perf_counter()
        progress = tqdm.tqdm(
            total=config.num_train_steps, initial=start_step, disable=not ctx.is_main, dynamic_ncols=True, desc="train"
        )
        with progress, logging_redirect_tqdm():
            for step in range(start_step, config.num_train_steps):
                observation, actions = next(batches)
                is_log_step = step % config.log_interval == 0 or step == config.num_train_steps - 1
                torch.manual_seed(step_seed(config.seed, step, ctx.rank, _GLOBAL_RNG_STREAM))
                configure_pruner(model, config, step, collect_stats=is_log_step)
                lr = config.lr_schedule.lr_at(step)
                loss, grad_norm, sample_losses = train_step(
                    ddp_model,
                    optimizer,
                    observation.to(ctx.device),
                    actions.to(ctx.device),
                    lr=lr,
                    clip_gradient_norm=config.optimizer.clip_gradient_norm,
                    image_resolution=image_resolution,
                    generator=augmentation_generator(config.seed, step, ctx.rank),
                    autocast_bf16=config.pytorch_training_precision == "mixed",
                    rtc_max_delay=config.model.rtc.training_max_delay if isinstance(config.model, Pi0Config) else 0,
                )
                if self.ema is not None:
                    self.ema.update(model)
                losses.append(loss)
                if loader.source_names:
                    dataset_losses.append(loader.batch_sources(step), sample_losses)
                progress.update(1)
                if is_log_step:
                    metrics = self._metrics(model, losses, grad_norm, lr, time.perf_counter() - window_start)
                    metrics |= self._dataset_metrics(dataset_losses)
                    self._log(step, metrics, progress, wandb_run)
                    losses, window_start = [], time.perf_counter()
                    dataset_losses = DatasetLosses(loader.source_names)
                if wandb_run is not None and self._is_picture_step(step):
                    self._log_pictures(model, observation.to(ctx.device), step, wandb_run)
                completed = step + 1
                if self.validation is not None and validation.is_validation_step(config, completed):
                    self._validate(model, self.validation, step, completed, wandb_run)
                if completed % config.save_interval == 0 or completed == config.num_train_steps:
                    self._save(model, optimizer, completed, data, losses, dataset_losses)

    # --------------------------------------------------------------------------------------------- metrics
    def _metrics(
        self, model: PI0Pytorch, losses: list[torch.Tensor], grad_norm: torch.Tensor, lr: float, elapsed: float
    ) -> dict[str, float]:
        loss = torch.stack(losses).float().mean()
        if self.ctx.is_distributed:
            dist.all_reduce(loss)  # sum; gloo has no AVG
            loss /= self.ctx.world_size
        metrics = {
            "loss": loss.item(),
            "lr": lr,
            "grad_norm": grad_norm.float().item(),
            "samples_per_s": len(losses) * self.config.batch_size / max(elapsed, 1e-9),
        }
        if prunes(self.config.model):
            metrics.update(model.pruner.metrics())
        metrics.update(gpu_memory_metrics(self.ctx.device))
        return metrics

    def _dataset_metrics(self, dataset_losses: DatasetLosses) -> dict[str, float]:
        """``train/loss/<dataset>`` of a mixture over the logging window and ranks; nothing otherwise."""
        if not dataset_losses.names or not self.ctx.is_distributed:
            return dataset_losses.metrics()
        totals = torch.from_numpy(dataset_losses.totals()).to(self.ctx.device)
        dist.all_reduce(totals)
        return dataset_losses.metrics(totals.cpu().numpy())

    def _validate(
        self, model: PI0Pytorch, loader: data_loader.DataLoader, step: int, completed: int, wandb_run: Any
    ) -> None:
        """Every rank's share of the validation batches after ``step``; rank 0 logs the ``val/*`` metrics at
        ``completed`` (the number of steps done, as the checkpoint of those weights is named)."""
        totals = validation.pytorch_totals(
            model,
            loader,
            self.config,
            noise_scale=pruner_noise_scale(self.config, step),
            device=self.ctx.device,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        if self.ctx.is_distributed:
            reduced = torch.from_numpy(totals.values).to(self.ctx.device)
            dist.all_reduce(reduced)
            totals.values = reduced.cpu().numpy()
        metrics = totals.metrics(loader.source_names, served=self.config.model.token_pruning_enabled)
        self.history.append({"step": float(completed), **metrics})
        if not self.ctx.is_main:
            return
        logger.info("step=%d %s", completed, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if wandb_run is not None:
            wandb_run.log(metrics, step=completed)

    def _is_picture_step(self, step: int) -> bool:
        interval = self.config.viz_interval
        pruning = prunes(self.config.model) and not self.sharded  # pictures need unsharded weights
        return pruning and interval is not None and step % interval == 0

    def _log_pictures(self, model: PI0Pytorch, observation: Observation, step: int, wandb_run: Any) -> None:
        """Logs ``prune/kept_<camera>``: the kept patches and votes of the batch's first sample (eval selection)."""
        import wandb

        pictures = pruning_overlay.kept_patch_pictures(model, observation)
        wandb_run.log({f"prune/kept_{name}": wandb.Image(p) for name, p in pictures.items()}, step=step)

    def _log(self, step: int, metrics: dict[str, float], progress: tqdm.tqdm, wandb_run: Any) -> None:
        self.history.append({"step": float(step), **metrics})
        if not self.ctx.is_main:
            return
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        logger.info("step=%d %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if wandb_run is not None:
            wandb_run.log(metrics, step=step)

    # ---------------------------------------------------------------------------------- checkpoints / dirs
    def _prepare_dir_on_main(self) -> int | BaseException | None:
        if not self.ctx.is_main:
            return None
        try:
            return prepare_experiment_dir(self.config)
        except ExperimentDirError as e:
            return e

    def _broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank; an exception from rank 0 is raised everywhere."""
        if self.ctx.is_distributed:
            box = [value]
            dist.broadcast_object_list(box, src=0)
            value = box[0]
        if isinstance(value, BaseException):
            raise value
        return value

    def _restore(self, model: PI0Pytorch, optimizer: torch.optim.Optimizer, step: int) -> int:
        path = checkpoints.step_dir(self.exp_dir, step)
        logger.info("Resuming from %s", path)
        if self.sharded:
            fsdp.load_sharded(path, model, optimizer, self.ema)
            state = checkpoints.load_training_state(path)
        else:
            state = checkpoints.load_checkpoint(path, model, optimizer, self.ema)
        if len(state.rng_states) == self.ctx.world_size:
            checkpoints.restore_rng_state(state.rng_states[self.ctx.rank])
        else:
            logger.warning(
                "Checkpoint was written by %d ranks, this run has %d; not restoring RNG states",
                len(state.rng_states),
                self.ctx.world_size,
            )
        if len(state.loss_windows) == self.ctx.world_size:
            self._resumed_window = list(state.loss_windows[self.ctx.rank])
        if len(state.dataset_loss_windows) == self.ctx.world_size:
            self._resumed_dataset_window = list(state.dataset_loss_windows[self.ctx.rank])
        return state.step

    def _save(
        self,
        model: PI0Pytorch,
        optimizer: torch.optim.Optimizer,
        step: int,
        data: run_data.RunData,
        losses: list[torch.Tensor],
        dataset_losses: DatasetLosses,
    ) -> None:
        tmp_dir = None
        if self.sharded:  # every rank writes its shards into rank 0's temporary directory
            tmp_dir = self._broadcast(checkpoints.new_temporary_dir(self.exp_dir, step) if self.ctx.is_main else None)
            fsdp.save_sharded(tmp_dir, model, optimizer, self.ema)
        rank_state = (checkpoints.capture_rng_state(), [float(loss) for loss in losses], dataset_losses.pairs())
        if self.ctx.is_distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, rank_state)
        else:
            gathered = [rank_state]
        if self.ctx.is_main:
            state = checkpoints.TrainingState(
                step=step,
                rng_states=[rng for rng, _, _ in gathered],
                scheduler=self._scheduler_state(step),
                loss_windows=[window for _, window, _ in gathered],
                dataset_loss_windows=[window for _, _, window in gathered] if dataset_losses.names else [],
            )
            data_config = data.data_config
            norm_stats = None if data_config.norm_stats is None else (data_config.asset_id, data_config.norm_stats)
            if tmp_dir is None:
                checkpoints.save_checkpoint(
                    self.exp_dir, state, model, optimizer, norm_stats, ema=self.ema, before_commit=data.write_files
                )
            else:
                checkpoints.write_training_files(tmp_dir, state, norm_stats)
                data.write_files(tmp_dir)
                checkpoints.commit(tmp_dir, self.exp_dir, step)
            checkpoints.prune_checkpoints(self.exp_dir, self.config.keep_period)
        if self.ctx.is_distributed:
            dist.barrier()

    def _scheduler_state(self, step: int) -> dict[str, Any]:
        schedule = self.config.lr_schedule
        return {"type": type(schedule).__name__, **dataclasses.asdict(schedule), "next_step": step}

    def _wrap(self, model: PI0Pytorch) -> nn.Module:
        if not self.ctx.is_distributed or self.sharded:  # a sharded model synchronises its own gradients
            return model
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        # Some parameters (e.g. the language model's final norm) receive no gradient from the action loss.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    # ------------------------------------------------------------------------------------------------ wandb
    def _init_wandb(self, resuming: bool) -> Any:
        import wandb

        id_file = self.exp_dir / WANDB_ID_FILENAME
        run_id = id_file.read_text().strip() if resuming and id_file.is_file() else None
        run = wandb.init(
            project=self.config.project_name,
            name=self.config.exp_name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(self.exp_dir),
            mode=wandb_mode(),
            config=jsonable_config(self.config),
        )
        id_file.write_text(run.id)
        return run


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else "online" when an API key is available (env or ``wandb login``), else "offline"."""
    import wandb

    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or bool(wandb.api.api_key)
    if not has_key:
        logger.info("No wandb API key found: logging offline (sync later with `wandb sync`)")
    return "online" if has_key else "offline"


def _check_fsdp(config: _config.TrainConfig, ctx: DistributedContext) -> None:
    if not ctx.is_distributed:
        raise ValueError(f"--fsdp-devices {config.fsdp_devices} shards over processes: launch with torchrun")


def _check_batch_size(config: _config.TrainConfig, ctx: DistributedContext) -> None:
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the {ctx.world_size} processes")


def jsonable_config(config: _config.TrainConfig) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return str(value)

    return convert(config)
