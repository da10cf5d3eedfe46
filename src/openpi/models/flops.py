"""FLOPs of π0 / π0.5, counted from the config: ``sample_actions`` and one training step, pruned or not; and of
π0-FAST's ``sample_tokens`` (the prefill, then one pass per decoded token).

Counted the way ``torch.utils.flop_counter`` counts: 2 FLOPs per multiply-add of every matrix product (linear layers,
the patch convolution, attention's two products, the pruner's scoring), nothing for elementwise work (norms,
activations, rotary embeddings, softmax, the optimizer). A dense attention computes every query-key pair, masked or
not, so padding and masked cameras cost their full share. Backward: a product costs its forward once per operand that
needs a gradient (the input, the weight), attention 2.5 times its forward (as fused attention kernels do it: the scores
recomputed, four products of gradients); gradient checkpointing runs each checkpointed layer's forward once more, up
to the last product whose output the backward pass needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models.variants import GemmaConfig, SiglipConfig

ModelConfig = Pi0Config | Pi0FastConfig

# Parts of the model, in the order the tables list them.
VISION, PROJECTOR, PRUNER, LANGUAGE_MODEL, ACTION_EXPERT = (
    "vision tower",
    "projector",
    "pruner",
    "language model",
    "action expert",
)
PARTS = (VISION, PROJECTOR, PRUNER, LANGUAGE_MODEL, ACTION_EXPERT)


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one call processes, per sample.

    Attributes:
        cameras: images through the vision tower (every camera slot of the model, masked ones included).
        valid_cameras: cameras that are present; the pruner keeps patches of these only (None: all).
        prompt_tokens: prompt columns the language model runs, after trimming the padding.
        kept_patches: image tokens in the prefix (None: the config's budget, or every patch unpruned). LightVLA's
            union keeps a data-dependent count, at inference and, deduplicated, in training: give it here.
        num_steps: denoising steps of ``sample_actions``; π0-FAST: the tokens ``sample_tokens`` draws.
        batch_size: samples per call; every count scales with it.
    """

    cameras: int = 3
    valid_cameras: int | None = None
    prompt_tokens: int = 32
    kept_patches: int | None = None
    num_steps: int = 10
    batch_size: int = 1


@dataclasses.dataclass(frozen=True)
class Op:
    """One matrix product (or one attention) of a forward pass."""

    part: str
    flops: float  # forward FLOPs for the whole batch
    grad_input: bool = True  # its input needs a gradient in training
    grad_weight: bool = True  # its weight is trained
    attention: bool = False
    recomputed: bool = False  # run again in the backward pass under gradient checkpointing

    @property
    def backward(self) -> float:
        if self.attention:
            return 2.5 * self.flops
        return self.flops * (int(self.grad_input) + int(self.grad_weight))


@dataclasses.dataclass(frozen=True)
class Count:
    """FLOPs per part of the model."""

    by_part: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.by_part.values())

    @classmethod
    def of(cls, flops: Iterable[tuple[str, float]]) -> Count:
        by_part = dict.fromkeys(PARTS, 0.0)
        for part, value in flops:
            by_part[part] += value
        return cls(by_part)


@dataclasses.dataclass(frozen=True)
class SampleFlops:
    """``sample_actions``: the prefix (images, pruner, the language model's pass over the kept prefix) and the
    denoising steps (the action expert attending to the cached prefix)."""

    prefix: Count
    denoise: Count
    prefix_length: int  # tokens in the cached prefix

    @property
    def total(self) -> float:
        return self.prefix.total + self.denoise.total


@dataclasses.dataclass(frozen=True)
class TrainFlops:
    """One training step's forward and backward (the optimizer's elementwise work not counted)."""

    ops: tuple[Op, ...]  # the forward's products
    gradient_checkpointing: bool
    prefix_length: int  # prefix tokens the training forward runs

    @property
    def forward(self) -> Count:
        runs = [(op.part, op.flops) for op in self.ops]
        return Count.of(
            runs + [(op.part, op.flops) for op in self.ops if op.recomputed and self.gradient_checkpointing]
        )

    @property
    def backward(self) -> Count:
        return Count.of((op.part, op.backward) for op in self.ops)

    @property
    def total(self) -> float:
        return self.forward.total + self.backward.total


@dataclasses.dataclass(frozen=True)
class DecodeFlops:
    """π0-FAST's ``sample_tokens``: the prefill (images, pruner, the language model over the kept prefix, the first
    token's logits) and the decode passes (each token after the first: one position through the language model,
    attending to the cache, and its logits)."""

    prefill: Count
    decode: Count
    prefix_length: int  # tokens in the cached prefix
    decode_passes: int

    @property
    def per_decode_pass(self) -> float:
        """The mean decode pass (each reads a cache one token longer than the one before)."""
        return self.decode.total / self.decode_passes if self.decode_passes else 0.0

    @property
    def total(self) -> float:
        return self.prefill.total + self.decode.total


def kept_patches(config: ModelConfig, workload: Workload) -> int:
    """Image tokens in the inference prefix per sample: all of them unpruned, the budget's count (padded up to
    ``token_prune_kept_multiple``) pruned; LightVLA's union, whose size depends on the data, needs ``kept_patches``."""
    per_camera = config.vision_config.num_patches
    all_patches = workload.cameras * per_camera
    if not config.token_pruning_enabled:
        return all_patches
    if workload.kept_patches is not None:
        kept = workload.kept_patches
    else:
        valid = (workload.cameras if workload.valid_cameras is None else workload.valid_cameras) * per_camera
        kept = _budget(config, valid)
        if kept is None:
            raise ValueError(
                "LightVLA's union selection keeps a data-dependent count: set a budget (token_prune_keep_ratio or "
                "token_prune_keep_tokens) or the workload's kept_patches"
            )
    multiple = config.token_prune_kept_multiple if isinstance(config, Pi0Config) else None
    if multiple:
        kept = -(-kept // multiple) * multiple
    return min(kept, all_patches)


def sample_flops(config: Pi0Config, workload: Workload = Workload()) -> SampleFlops:
    """FLOPs of ``sample_actions`` for ``workload``."""
    batch, prompt = workload.batch_size, workload.prompt_tokens
    prefix_length = kept_patches(config, workload) + prompt
    prefix = [*_image_ops(config, workload, training=False)]
    if config.token_pruning_enabled:
        prefix += _pruner_ops(config, workload, training=False)
    prefix += _stream_ops(config.llm_config, LANGUAGE_MODEL, batch, prefix_length, adaptive=False)
    prefix.append(_attention(config.llm_config, LANGUAGE_MODEL, batch, prefix_length, prefix_length))
    denoise = _suffix_ops(config, batch, prefix_length)
    return SampleFlops(
        Count.of((op.part, op.flops) for op in prefix),
        Count.of((op.part, op.flops * workload.num_steps) for op in denoise),
        prefix_length,
    )


def decode_flops(config: Pi0FastConfig, workload: Workload) -> DecodeFlops:
    """FLOPs of π0-FAST's ``sample_tokens`` drawing ``workload.num_steps`` tokens. As upstream, the prefill attends
    over a cache already sized for ``max_decoding_steps`` more tokens, and decode pass ``s`` reads the prefix and the
    ``s + 1`` tokens after it; the prompt runs all its ``max_token_len`` columns (π0-FAST does not trim them)."""
    if not 1 <= workload.num_steps <= config.max_decoding_steps:
        raise ValueError(
            f"num_steps (tokens drawn) must be in [1, {config.max_decoding_steps}], got {workload.num_steps}"
        )
    llm, batch = config.llm_config, workload.batch_size
    prefix_length = kept_patches(config, workload) + workload.prompt_tokens
    prefill = [*_image_ops(config, workload, training=False)]
    if config.token_pruning_enabled:
        prefill += _pruner_ops(config, workload, training=False)
    prefill += _stream_ops(llm, LANGUAGE_MODEL, batch, prefix_length, adaptive=False)
    prefill.append(_attention(llm, LANGUAGE_MODEL, batch, prefix_length, prefix_length + config.max_decoding_steps))
    prefill.append(_linear(LANGUAGE_MODEL, batch, llm.width, config.vocab_size))  # the last position's logits
    passes = workload.num_steps - 1
    keys_read = passes * (prefix_length + 1) + passes * (passes - 1) // 2  # pass s reads prefix_length + s + 1
    decode = [
        *_stream_ops(llm, LANGUAGE_MODEL, batch, passes, adaptive=False),
        _attention(llm, LANGUAGE_MODEL, batch, 1, keys_read),
        _linear(LANGUAGE_MODEL, batch * passes, llm.width, config.vocab_size),
    ]
    return DecodeFlops(
        Count.of((op.part, op.flops) for op in prefill),
        Count.of((op.part, op.flops) for op in decode),
        prefix_length,
        passes,
    )


def fast_train_flops(config: Pi0FastConfig, workload: Workload, gradient_checkpointing: bool = False) -> TrainFlops:
    """FLOPs of one π0-FAST training step: the language model over every image token and the prompt but its last
    token (training runs unpruned), and the tied head's logits at the ``prompt_tokens - 1`` text positions."""
    llm, batch = config.llm_config, workload.batch_size
    length = workload.cameras * config.vision_config.num_patches + workload.prompt_tokens - 1
    layers = _stream_ops(llm, LANGUAGE_MODEL, batch, length, adaptive=False, recomputed=True)
    layers[-1] = dataclasses.replace(layers[-1], recomputed=False)  # the layer's last product: nothing saves its output
    ops = [
        *_image_ops(config, workload, training=True),
        *layers,
        _attention(llm, LANGUAGE_MODEL, batch, length, length, recomputed=True),
        _linear(LANGUAGE_MODEL, batch * (workload.prompt_tokens - 1), llm.width, config.vocab_size),
    ]
    return TrainFlops(tuple(ops), gradient_checkpointing, length)


def train_flops(config: Pi0Config, workload: Workload = Workload(), gradient_checkpointing: bool = False) -> TrainFlops:
    """FLOPs of one training step's forward and backward: one joint pass over the prefix and the noisy actions."""
    batch = workload.batch_size
    prefix_length = _training_patches(config, workload) + workload.prompt_tokens
    suffix = _suffix_length(config)
    ops = [*_image_ops(config, workload, training=True)]
    if config.token_pruning_enabled:
        ops += _pruner_ops(config, workload, training=True)
    llm = config.llm_config
    ops += _stream_ops(llm, LANGUAGE_MODEL, batch, prefix_length, adaptive=False, layers=llm.depth - 1, recomputed=True)
    ops += _last_prefix_layer_ops(llm, batch, prefix_length)
    expert = _stream_ops(config.expert_config, ACTION_EXPERT, batch, suffix, adaptive=config.pi05, recomputed=True)
    if not config.pi05:  # the layer ends with the expert's down projection, whose output nothing saves
        expert[-1] = dataclasses.replace(expert[-1], recomputed=False)
    ops += expert
    total = prefix_length + suffix
    ops.append(_attention(config.llm_config, LANGUAGE_MODEL, batch, total, total, recomputed=True))
    ops += _suffix_embedding_ops(config, batch)
    ops += _final_norm_ops(config, batch)
    return TrainFlops(tuple(ops), gradient_checkpointing, prefix_length)


def _training_patches(config: Pi0Config, workload: Workload) -> int:
    """Image tokens in the training prefix: every patch unpruned and in gated budget training (the budget's and the
    sampled share of the dropped ones with ``token_prune_gate_dropped_sample``), the budget's in plain budget training,
    the distinct votes in deduplicated union training (``kept_patches``; every patch when not given: an upper
    bound)."""
    every = workload.cameras * config.vision_config.num_patches
    if not config.token_pruning_enabled:
        return every
    if config.token_prune_budget_training and config.token_prune_gate_dropped_patches:
        sample = config.token_prune_gate_dropped_sample
        if sample is None:
            return every
        kept = kept_patches(config, workload)
        dropped = every - kept
        return kept + min(max(math.ceil(dropped * sample - 1e-9), 1), dropped) if dropped else kept
    if config.token_prune_budget_training:
        return kept_patches(config, workload)
    if config.token_prune_dedup_training and workload.kept_patches is not None:
        return workload.kept_patches
    return every


def _budget(config: ModelConfig, valid: int) -> int | None:
    if config.token_prune_keep_tokens is not None:
        return min(config.token_prune_keep_tokens, valid)
    if config.token_prune_keep_ratio is not None:
        return min(max(math.ceil(valid * config.token_prune_keep_ratio - 1e-9), 1), valid)
    return None


def _linear(part: str, tokens: float, fan_in: int, fan_out: int, **flags: bool) -> Op:
    return Op(part, 2.0 * tokens * fan_in * fan_out, **flags)


def _attention(gemma: GemmaConfig, part: str, batch: int, queries: int, keys: int, *, recomputed: bool = False) -> Op:
    """The joint attention of one layer per layer count: every query head against every key (shared KV heads)."""
    flops = 4.0 * batch * gemma.num_heads * queries * keys * gemma.head_dim * gemma.depth
    return Op(part, flops, attention=True, recomputed=recomputed)


def _image_ops(config: ModelConfig, workload: Workload, *, training: bool) -> list[Op]:
    """SigLIP over every camera image, then the projector to the language model's width."""
    vision: SiglipConfig = config.vision_config
    images = workload.batch_size * workload.cameras
    tokens, width, depth = images * vision.num_patches, vision.hidden_size, vision.num_hidden_layers
    layer = dict(recomputed=training)
    return [
        _linear(VISION, tokens, 3 * vision.patch_size**2, width, grad_input=False),
        _linear(VISION, tokens * depth, width, 4 * width, **layer),  # q, k, v, out
        _linear(VISION, tokens * depth, width, vision.intermediate_size, **layer),  # fc1
        _linear(VISION, tokens * depth, vision.intermediate_size, width),  # fc2, the layer's last product
        Op(VISION, 4.0 * images * vision.num_patches**2 * width * depth, attention=True, **layer),
        _linear(PROJECTOR, tokens, width, config.llm_config.width),
    ]


def _pruner_ops(config: ModelConfig, workload: Workload, *, training: bool) -> list[Op]:
    """Each patch's query (its attention over the prompt) and the patch-to-patch scores; in union training, the
    straight-through product of the votes with the patches."""
    batch, width = workload.batch_size, config.llm_config.width
    patches = workload.cameras * config.vision_config.num_patches
    ops = [
        Op(PRUNER, 4.0 * batch * patches * workload.prompt_tokens * width, attention=True),
        Op(PRUNER, 2.0 * batch * patches * patches * width),
    ]
    if training and not config.token_prune_budget_training:
        ops.append(Op(PRUNER, 2.0 * batch * patches * patches * width))
    return ops


def _stream_ops(
    gemma: GemmaConfig,
    part: str,
    batch: int,
    tokens: int,
    *,
    adaptive: bool,
    layers: int | None = None,
    recomputed: bool = False,
) -> list[Op]:
    """One expert's products over its ``tokens`` in ``layers`` layers (default: all), the down projection last; with
    adaptive norms, the two dense layers per layer that map the time conditioning (one vector per sample) to scale,
    shift and gate."""
    layers = gemma.depth if layers is None else layers
    rows, width, heads = batch * tokens * layers, gemma.width, gemma.num_heads * gemma.head_dim
    kv = 2 * gemma.num_kv_heads * gemma.head_dim
    ops = [
        _linear(part, rows, width, heads + kv, recomputed=recomputed),  # q, k, v
        _linear(part, rows, heads, width, recomputed=recomputed),  # out
        _linear(part, rows, width, 2 * gemma.mlp_dim, recomputed=recomputed),  # gate, up
    ]
    if adaptive:
        ops.append(_linear(part, batch * 2 * layers, width, 3 * width, recomputed=recomputed))
    ops.append(_linear(part, rows, gemma.mlp_dim, width, recomputed=recomputed))  # down
    return ops


def _last_prefix_layer_ops(gemma: GemmaConfig, batch: int, tokens: int) -> list[Op]:
    """The language model's last layer in training: its output does not reach the loss, so its output projection
    and MLP get no gradient (its queries, keys and values do, through the joint attention's backward)."""
    rows, width, heads = batch * tokens, gemma.width, gemma.num_heads * gemma.head_dim
    unused = dict(grad_input=False, grad_weight=False, recomputed=True)
    return [
        _linear(LANGUAGE_MODEL, rows, width, heads + 2 * gemma.num_kv_heads * gemma.head_dim, recomputed=True),
        _linear(LANGUAGE_MODEL, rows, heads, width, **unused),  # out
        _linear(LANGUAGE_MODEL, rows, width, 3 * gemma.mlp_dim, **unused),  # gate, up, down
    ]


def _suffix_length(config: Pi0Config) -> int:
    return config.action_horizon + (0 if config.pi05 else 1)  # π0: the state token first


def _suffix_embedding_ops(config: Pi0Config, batch: int) -> list[Op]:
    """The noisy actions (and π0's state and time) into the expert's width, and the velocity out of it."""
    width, horizon, action = config.expert_config.width, config.action_horizon, config.action_dim
    ops = [
        _linear(ACTION_EXPERT, batch * horizon, action, width, grad_input=False),
        _linear(ACTION_EXPERT, batch * horizon, width, action),
    ]
    if config.pi05:  # the time MLP, one vector per sample
        ops += [
            _linear(ACTION_EXPERT, batch, width, width, grad_input=False),
            _linear(ACTION_EXPERT, batch, width, width),
        ]
    else:  # the state token and the action-time MLP over every action token
        ops += [
            _linear(ACTION_EXPERT, batch, action, width, grad_input=False),
            _linear(ACTION_EXPERT, batch * horizon, 2 * width, width),
            _linear(ACTION_EXPERT, batch * horizon, width, width),
        ]
    return ops


def _final_norm_ops(config: Pi0Config, batch: int) -> list[Op]:
    """π0.5's adaptive final norm of the expert (one dense layer of the conditioning per sample)."""
    width = config.expert_config.width
    return [_linear(ACTION_EXPERT, batch, width, 3 * width)] if config.pi05 else []


def _suffix_ops(config: Pi0Config, batch: int, prefix_length: int) -> list[Op]:
    """One denoising step: the suffix through the expert, attending to the cached prefix and itself."""
    suffix = _suffix_length(config)
    return [
        *_suffix_embedding_ops(config, batch),
        *_stream_ops(config.expert_config, ACTION_EXPERT, batch, suffix, adaptive=config.pi05),
        _attention(config.expert_config, ACTION_EXPERT, batch, suffix, prefix_length + suffix),
        *_final_norm_ops(config, batch),
    ]
