"""The JAX training loop (``scripts/train.py``): the PyTorch trainer's configs, data, pruning schedule, telemetry and
checkpoint protocol, with optax, orbax and a ``data × fsdp`` device mesh.

Every random draw of step k (flow noise and time, the pruner's exploration draw) comes from
``fold_in(key(seed), k)`` and the batch from the shared data loader (a function of seed and k), so a resumed run
repeats exactly the steps an uninterrupted one would. Checkpoints (``<exp>/<step>/``) hold ``params/`` (the orbax
tree to serve: the moving average when ``ema_decay`` is set, as upstream serves it), ``train_state/`` (step, raw
parameters, optimizer state, EMA) and ``assets/``; they are committed with the same atomic protocol as the PyTorch
checkpoints (temporary directory, manifest, completeness marker, rename). With a validation split the held-out
batches are validated every ``val_interval`` steps as in PyTorch (``training.validation``; the served loss through
``compute_loss_fn(train=False)``, which masks the unkept patches).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import torch
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from openpi.models.observation import Observation
from openpi.models.orbax_params import flatten_params
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_jax import params as jax_params
from openpi.models_jax import pi0_fast
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import PruneSettings, compute_loss_fn, draw_training_noise, select_fn
from openpi.models_jax.rtc import masked_loss_mean, sample_loss_means
from openpi.models_pytorch import preprocessing
from openpi.policies import pruning_overlay
from openpi.shared.checkpoint_files import TRAIN_STATE_DIR
from openpi.training import checkpoints, data_loader, freezing, run_data, trainer, validation
from openpi.training import config as _config
from openpi.training.optimizer import CosineDecaySchedule

logger = logging.getLogger(__name__)

Params = dict[str, Any]
PARAMS_DIR = "params"


@dataclasses.dataclass
class JaxTrainResult:
    """What :func:`train` returns: the final train state (a dict of device arrays, sharded over the mesh), the step
    reached and every logged metrics dict."""

    state: dict[str, Any]
    step: int
    history: list[dict[str, float]]


def lr_schedule(schedule: CosineDecaySchedule) -> optax.Schedule:
    """:meth:`CosineDecaySchedule.lr_at` as an optax schedule of the update count."""
    init_lr = schedule.peak_lr / (schedule.warmup_steps + 1)

    def lr(step: jax.Array) -> jax.Array:
        warmup = init_lr + (schedule.peak_lr - init_lr) * step / max(schedule.warmup_steps, 1)
        progress = jnp.clip((step - schedule.warmup_steps) / max(1, schedule.decay_steps - schedule.warmup_steps), 0, 1)
        cosine = schedule.decay_lr + (schedule.peak_lr - schedule.decay_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < schedule.warmup_steps, warmup, cosine)

    return lr


def build_optimizer(config: _config.TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, on the schedule of ``config.lr_schedule`` (the PyTorch trainer's settings)."""
    opt = config.optimizer
    return optax.chain(
        optax.clip_by_global_norm(opt.clip_gradient_norm),
        optax.adamw(lr_schedule(config.lr_schedule), opt.b1, opt.b2, opt.eps, weight_decay=opt.weight_decay),
    )


def frozen_paths(config: _config.TrainConfig, params: Params) -> frozenset[str]:
    """The parameter paths ``config.freeze_filter`` freezes (a JAX preset or a regex over ``a/b/c`` paths)."""
    if config.freeze_filter is None:
        return frozenset()
    paths = list(flatten_params(params))
    return frozenset(freezing.select_frozen(paths, config.freeze_filter, config.model, freezing.JAX))


def split_params(params: Params, frozen: frozenset[str]) -> tuple[Params, Params]:
    """``(trained, frozen)`` nested trees; only the first gets gradients and optimizer state."""
    flat = flatten_params(params)
    trained = jax_params.nest({k: v for k, v in flat.items() if k not in frozen})
    return trained, jax_params.nest({k: v for k, v in flat.items() if k in frozen})


def merge_params(trained: Params, frozen: Params) -> Params:
    return jax_params.nest({**flatten_params(frozen), **flatten_params(trained)})


def init_state(config: _config.TrainConfig, params: Params, frozen: frozenset[str]) -> dict[str, Any]:
    """Step 0: the parameters, the optimizer state of the trained ones, and the EMA (a copy of the parameters)."""
    trained, _ = split_params(params, frozen)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": build_optimizer(config).init(trained),
        "ema": None if config.ema_decay is None else jax.tree.map(jnp.array, params),
    }


def train_step(
    state: dict[str, Any],
    obs: JaxObservation,
    actions: jax.Array,
    rng: jax.Array,
    noise_scale: jax.Array,
    *,
    config: _config.TrainConfig,
    frozen: frozenset[str],
    collect_stats: bool,
    sample_losses: bool = False,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One optimizer step on the mean loss (flow matching without the committed prefix of training-time RTC; π0-FAST:
    next-token cross-entropy); returns the new state and the step's metrics (with ``sample_losses``, each sample's
    loss ``[B]`` as ``sample_losses``)."""
    model_config = config.model
    trained, frozen_params = split_params(state["params"], frozen)
    if isinstance(model_config, Pi0FastConfig):

        def fast_loss_fn(trained: Params) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array | None]]:
            params = merge_params(trained, frozen_params)
            losses = pi0_fast.compute_loss(params, model_config, obs, config.gradient_checkpointing)  # [B]
            return losses.mean(), ({}, losses if sample_losses else None)

        return _apply_gradients(config, state, trained, frozen_params, fast_loss_fn)
    drawn = draw_training_noise(rng, model_config, actions.shape, len(obs.images))
    prune = PruneSettings.from_config(model_config, collect_stats=collect_stats)

    def loss_fn(trained: Params) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array | None]]:
        losses, stats = compute_loss_fn(
            merge_params(trained, frozen_params),
            obs,
            actions,
            drawn.noise,
            drawn.time,
            drawn.prune_uniform,
            noise_scale,
            config=model_config,
            train=True,
            prune=prune,
            remat=config.gradient_checkpointing,
            rtc_delay=drawn.rtc_delay,
        )  # [B, H, action_dim]
        per_sample = sample_loss_means(losses, drawn.rtc_delay) if sample_losses else None
        return masked_loss_mean(losses, drawn.rtc_delay), (stats, per_sample)

    return _apply_gradients(config, state, trained, frozen_params, loss_fn)


def _apply_gradients(
    config: _config.TrainConfig, state: dict[str, Any], trained: Params, frozen_params: Params, loss_fn: Any
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """The optimizer step (and EMA) on the gradient of ``loss_fn(trained) -> (loss, (pruning stats, each sample's
    loss or None))``."""
    (loss, (stats, per_sample)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    updates, opt_state = build_optimizer(config).update(grads, state["opt_state"], trained)
    params = merge_params(optax.apply_updates(trained, updates), frozen_params)
    ema = state["ema"]
    if ema is not None:
        ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1.0 - config.ema_decay) * p, ema, params)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "ema": ema}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **{f"prune/{k}": v for k, v in stats.items()}}
    if per_sample is not None:
        metrics["sample_losses"] = per_sample
    return new_state, metrics


# ---------------------------------------------------------------------------------------------------- sharding
def make_mesh(fsdp_devices: int) -> Mesh:
    """``data × fsdp`` over every local device: parameters shard over ``fsdp``, batches over both axes."""
    devices = jax.devices()
    if fsdp_devices < 1 or len(devices) % fsdp_devices:
        raise ValueError(f"fsdp_devices={fsdp_devices} does not divide the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp_devices, fsdp_devices), ("data", "fsdp"))


def fsdp_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Shards an array's largest axis divisible by the ``fsdp`` size over ``fsdp``; replicates the others."""
    size = mesh.shape["fsdp"]
    axes = [i for i, n in enumerate(shape) if size > 1 and n % size == 0]
    if not axes:
        return NamedSharding(mesh, PartitionSpec())
    axis = max(axes, key=lambda i: shape[i])
    return NamedSharding(mesh, PartitionSpec(*[("fsdp" if i == axis else None) for i in range(len(shape))]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def state_shardings(mesh: Mesh, state: Any) -> Any:
    return jax.tree.map(lambda leaf: fsdp_sharding(mesh, tuple(leaf.shape)), state)


# --------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(exp_dir: Path, state: dict[str, Any], data: run_data.RunData, keep_period: int | None) -> Path:
    """Commits ``<exp>/<step>/`` (``params/``, ``train_state/``, ``assets/``, the validation split) atomically;
    prunes old checkpoints."""
    host_state = jax.device_get(state)
    step = int(host_state["step"])
    data_config = data.data_config
    norm_stats = None if data_config.norm_stats is None else (data_config.asset_id, data_config.norm_stats)

    def write(directory: Path) -> None:
        served = host_state["ema"] if host_state["ema"] is not None else host_state["params"]
        ocp.PyTreeCheckpointer().save((directory / PARAMS_DIR).absolute(), {"params": served})
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((directory / TRAIN_STATE_DIR).absolute(), _without_none(host_state))
        checkpointer.wait_until_finished()
        checkpoints.save_norm_stats(directory, norm_stats)
        data.write_files(directory)

    path = checkpoints.write_atomically(exp_dir, step, write)
    checkpoints.prune_checkpoints(exp_dir, keep_period)
    return path


def restore_state(checkpoint_dir: Path, target: dict[str, Any]) -> dict[str, Any]:
    """The ``train_state`` of a checkpoint, in ``target``'s structure (arrays or ``ShapeDtypeStruct``s)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _without_none(target))
    restored = ocp.StandardCheckpointer().restore((checkpoint_dir / TRAIN_STATE_DIR).absolute(), abstract)
    return {**restored, "ema": restored.get("ema")}


def _without_none(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if value is not None}


# ------------------------------------------------------------------------------------------------------ the loop
def check_base_weights(config: _config.TrainConfig) -> None:
    """Refuses to fine-tune random weights: a config with ``allow_random_init=False`` needs ``weight_path``."""
    if config.weight_path is None and not config.allow_random_init:
        raise ValueError(
            f"Config {config.name!r} fine-tunes a pretrained model, but --weight-path is not set. Point it at the "
            "base checkpoint (the folder holding params/), or pass --allow-random-init to train from random weights."
        )


def initial_params(config: _config.TrainConfig) -> Params:
    """The base weights of ``config.weight_path`` (strict), or fresh ones when random init is allowed."""
    if config.weight_path is not None:
        logger.info("Loading weights from %s", config.weight_path)
        return jax_params.load_params(config.weight_path, config.model)
    check_base_weights(config)
    return jax_params.init_params(config.model, config.seed)


def train(config: _config.TrainConfig) -> JaxTrainResult:
    """Trains ``config`` to ``num_train_steps`` with JAX, saving checkpoints under ``config.checkpoint_dir``."""
    config.data.prepare()
    exp_dir = Path(config.checkpoint_dir)
    if not config.resume:
        check_base_weights(config)  # before the experiment folder exists: a refused run leaves none behind
    resume_step = trainer.prepare_experiment_dir(config)
    data = run_data.prepare(config, None if resume_step is None else checkpoints.step_dir(exp_dir, resume_step))
    mesh = make_mesh(config.fsdp_devices)
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the {mesh.size} devices")
    if resume_step is None:
        params = initial_params(config)
        frozen = frozen_paths(config, params)
        state = init_state(config, params, frozen)
    else:  # the checkpoint holds every value: only the structure is built (abstractly, no weights allocated)
        logger.info("Resuming from %s", checkpoints.step_dir(exp_dir, resume_step))
        abstract_params = jax.eval_shape(lambda: jax_params.init_params(config.model, config.seed))
        frozen = frozen_paths(config, abstract_params)
        target = jax.eval_shape(lambda: init_state(config, jax_params.init_params(config.model, config.seed), frozen))
        state = restore_state(checkpoints.step_dir(exp_dir, resume_step), target)
    shardings = state_shardings(mesh, state)
    state = jax.device_put(state, shardings)
    start_step = 0 if resume_step is None else resume_step
    spawn = "spawn"  # JAX runs threads: a forked data worker could inherit a held lock
    loader = data_loader.create_data_loader(
        config,
        shuffle=True,
        start_step=start_step,
        num_batches=config.num_train_steps - start_step,
        multiprocessing_context=spawn,
        split=data.split,
        data_config=data.data_config,
    )
    step_fns = {
        collect: jax.jit(
            functools.partial(
                train_step,
                config=config,
                frozen=frozen,
                collect_stats=collect,
                sample_losses=bool(loader.source_names),
            ),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        for collect in (False, True)
    }
    val_loader = None
    if data.split is not None:
        val_loader = data_loader.create_validation_loader(
            config, data.split, data.data_config, multiprocessing_context=spawn
        )
    wandb_run = _init_wandb(config, exp_dir, resume_step is not None) if config.wandb_enabled else None
    try:
        state, history = _loop(config, state, step_fns, loader, val_loader, data, mesh, start_step, wandb_run)
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    return JaxTrainResult(state, config.num_train_steps, history)


def _loop(
    config: _config.TrainConfig,
    state: dict[str, Any],
    step_fns: dict[bool, Any],
    loader: data_loader.DataLoader,
    val_loader: data_loader.DataLoader | None,
    data: run_data.RunData,
    mesh: Mesh,
    start_step: int,
    wandb_run: Any,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    exp_dir = Path(config.checkpoint_dir)
    image_size = config.model.vision_config.image_size
    base_key = jax.random.key(config.seed)
    history: list[dict[str, float]] = []
    losses: list[jax.Array] = []
    dataset_losses = trainer.DatasetLosses(loader.source_names)
    batches = iter(loader)
    window_start = time.perf_counter()
    with tqdm.tqdm(total=config.num_train_steps, initial=start_step, dynamic_ncols=True, desc="train") as progress:
        for step in range(start_step, config.num_train_steps):
            observation, actions = next(batches)
            observation = preprocessing.preprocess_observation(
                observation,
                train=True,
                image_resolution=(image_size, image_size),
                generator=trainer.augmentation_generator(config.seed, step, 0),
            )
            obs = JaxObservation.from_dict(observation.to_dict())
            if not isinstance(config.model, Pi0FastConfig):
                obs = obs.trim_prompt_padding(config.model.prompt_trim_multiple)
            obs, actions = jax.device_put((obs, actions.numpy()), batch_sharding(mesh))
            is_log_step = step % config.log_interval == 0 or step == config.num_train_steps - 1
            noise_scale = trainer.pruner_noise_scale(config, step)
            state, metrics = step_fns[is_log_step](
                state, obs, actions, jax.random.fold_in(base_key, step), jnp.float32(noise_scale)
            )
            losses.append(metrics["loss"])
            if loader.source_names:
                sample_losses = torch.from_numpy(np.array(metrics["sample_losses"]))
                dataset_losses.append(loader.batch_sources(step), sample_losses)
            progress.update(1)
            if is_log_step:
                logged = _log_metrics(config, step, metrics, losses, noise_scale, time.perf_counter() - window_start)
                logged |= dataset_losses.metrics()
                _log(step, logged, history, wandb_run)
                progress.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}")
                losses, window_start = [], time.perf_counter()
                dataset_losses = trainer.DatasetLosses(loader.source_names)
            if wandb_run is not None and _is_picture_step(config, step):
                _log_pictures(config, state["params"], observation, step, wandb_run)
            completed = step + 1
            if val_loader is not None and validation.is_validation_step(config, completed):
                totals = validation_totals(config, state["params"], val_loader, mesh, noise_scale)
                val_metrics = totals.metrics(val_loader.source_names, served=config.model.token_pruning_enabled)
                _log(completed, {"step": float(completed), **val_metrics}, history, wandb_run)
            if completed % config.save_interval == 0 or completed == config.num_train_steps:
                save_checkpoint(exp_dir, state, data, config.keep_period)
    return state, history


def _log(step: int, logged: dict[str, float], history: list[dict[str, float]], wandb_run: Any) -> None:
    history.append(logged)
    logger.info("step=%d %s", step, " ".join(f"{k}={v:.4g}" for k, v in logged.items() if k != "step"))
    if wandb_run is not None:
        wandb_run.log({k: v for k, v in logged.items() if k != "step"}, step=step)


def validation_totals(
    config: _config.TrainConfig, params: Params, loader: data_loader.DataLoader, mesh: Mesh, noise_scale: float
) -> validation.Totals:
    """The :class:`validation.Totals` of the fixed validation batches: the training-mode loss (the pruner at
    ``noise_scale`` with the fixed draw) and, with pruning, the eval-mode one (unkept patches masked)."""
    model_config = config.model
    prune = PruneSettings.from_config(model_config)
    size = model_config.vision_config.image_size
    totals = validation.Totals(model_config.action_horizon, model_config.action_dim, max(1, len(loader.source_names)))
    for step, (observation, actions) in enumerate(loader):
        observation = preprocessing.preprocess_observation(observation, train=False, image_resolution=(size, size))
        obs = JaxObservation.from_dict(observation.to_dict()).trim_prompt_padding(model_config.prompt_trim_multiple)
        positions = validation.sample_positions(step, config.batch_size, 0, 1)
        num_patches = len(obs.images) * model_config.vision_config.num_patches if prune.enabled else None
        drawn = validation.draws(config.seed, positions, tuple(actions.shape[1:]), num_patches)
        inputs = jax.device_put((obs, actions.numpy(), drawn.noise, drawn.time), batch_sharding(mesh))
        uniform = None if drawn.prune_uniform is None else jax.device_put(drawn.prune_uniform, batch_sharding(mesh))
        loss = functools.partial(compute_loss_fn, params, *inputs, config=model_config, prune=prune)
        losses, _ = loss(uniform, jnp.float32(noise_scale), train=True)
        served = np.asarray(loss(None, 0.0, train=False)[0]) if prune.enabled else None
        sources = loader.batch_sources(step) if loader.source_names else np.zeros(len(positions), np.int64)
        totals.add(np.asarray(losses), sources, served)
    return totals


def _log_metrics(
    config: _config.TrainConfig,
    step: int,
    metrics: dict[str, jax.Array],
    losses: list[jax.Array],
    noise_scale: float,
    elapsed: float,
) -> dict[str, float]:
    logged = {
        "step": float(step),
        "loss": float(np.mean([float(loss) for loss in losses])),
        "lr": config.lr_schedule.lr_at(step),
        "grad_norm": float(metrics["grad_norm"]),
        "samples_per_s": len(losses) * config.batch_size / max(elapsed, 1e-9),
    }
    logged |= {key: float(value) for key, value in metrics.items() if key.startswith("prune/")}
    if trainer.prunes(config.model):
        logged["prune/noise_scale"] = noise_scale
    return logged


def kept_patch_pictures(config: _config.TrainConfig, params: Params, observation: Observation) -> dict[str, Any]:
    """The eval selection of the first sample, drawn per present camera (kept patches beside the votes)."""
    first = observation.select(slice(0, 1))
    obs = JaxObservation.from_dict(first.to_dict()).trim_prompt_padding(config.model.prompt_trim_multiple)
    _, keep, votes, _ = select_fn(params, obs, config=config.model, prune=PruneSettings.from_config(config.model))
    vision = config.model.vision_config
    return pruning_overlay.selection_pictures(first, np.asarray(keep[0]), np.asarray(votes[0]), vision)


def _is_picture_step(config: _config.TrainConfig, step: int) -> bool:
    interval = config.viz_interval
    return trainer.prunes(config.model) and interval is not None and step % interval == 0


def _log_pictures(config: _config.TrainConfig, params: Params, observation: Observation, step: int, run: Any) -> None:
    import wandb

    pictures = kept_patch_pictures(config, params, observation)
    run.log({f"prune/kept_{name}": wandb.Image(picture) for name, picture in pictures.items()}, step=step)


def _init_wandb(config: _config.TrainConfig, exp_dir: Path, resuming: bool) -> Any:
    import wandb

    id_file = exp_dir / trainer.WANDB_ID_FILENAME
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else None
    run = wandb.init(
        project=config.project_name,
        name=config.exp_name,
        id=run_id,
        resume="allow" if run_id else None,
        dir=str(exp_dir),
        mode=trainer.wandb_mode(),
        config=trainer.jsonable_config(config),
    )
    id_file.write_text(run.id)
    return run
