"""How much memory a training step of a config needs: weights, gradients, optimizer state, EMA and activations.

The model is built on the meta device (no memory, any size), exactly as the trainer builds it (precision, LoRA
variants, freeze filter), so parameter counts and bytes are exact. Activations are measured, not modelled: one
training forward runs on meta tensors of the requested batch and prompt length, and every tensor autograd saves for
the backward pass is counted once (by storage; parameters excluded). Attention is counted as the fused kernels save
it (inputs, mask, output and a float32 log-sum-exp per query; on meta tensors PyTorch would decompose it into matmuls
and a softmax that save the ``[B, heads, Lq, Lk]`` probabilities, which fused kernels never keep; where PyTorch falls
back to its math kernel on a GPU, activations exceed the estimate). With gradient checkpointing, the tensors saved
outside the checkpointed layers are counted the same way, plus each checkpointed layer's inputs (kept for the
recomputation) and the largest single layer's own activations (live while that layer is recomputed; tensors that
several layers save, such as the attention mask and the rotary tables, are inputs every layer receives and are
already counted outside the layers). The batch itself
(images, masks, state, prompt, actions) is alive for the whole step.

Assumptions, stated: AdamW keeps two states per trainable parameter in the parameter's dtype; gradients exist for
trainable parameters only; the EMA is a float32 copy of the whole state dict; FSDP divides weights, gradients,
optimizer state and EMA by the ranks (activations are per rank). A pruned model is measured at the full training
length (deduplication shortens the prefix by a data-dependent amount, so this is its upper bound); π0-FAST at
``prompt_tokens`` columns, half of them prefix and half action tokens with a loss (the split does not change the
shapes); ``mixed``
precision is measured with bfloat16 activations. Temporary buffers (kernel workspaces, the optimizer step's
intermediates, allocator fragmentation) are not included: compare with measured peaks
(``scripts/bench/results/memory.md``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from openpi.models.batch import IMAGE_KEYS
from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.siglip import SiglipEncoderLayer
from openpi.training import config as _config
from openpi.training import trainer

_OUTSIDE_LAYERS = "outside"
Model = PI0Pytorch | Pi0FastPytorch


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step on one rank."""

    parameters: int
    trainable_parameters: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    ema_bytes: int
    batch_bytes: int
    """The batch as the model receives it (images, masks, state, prompt, actions), alive for the whole step."""
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        persistent = self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.ema_bytes
        return persistent + self.batch_bytes + self.activation_bytes


def estimate(
    config: _config.TrainConfig,
    *,
    batch_size: int | None = None,
    prompt_tokens: int | None = None,
    fsdp_devices: int = 1,
) -> MemoryEstimate:
    """Estimates one training step of ``config`` at ``batch_size`` per rank (default: the config's batch over
    ``fsdp_devices``) with ``prompt_tokens`` prompt columns after trimming (default: ``max_token_len``)."""
    if fsdp_devices < 1:
        raise ValueError(f"fsdp_devices must be >= 1, got {fsdp_devices}")
    batch_size = batch_size or max(1, config.batch_size // fsdp_devices)
    prompt_tokens = prompt_tokens or config.model.max_token_len
    measured = dataclasses.replace(
        config,
        model=_measured_model(config.model, prompt_tokens),
        pytorch_training_compile_mode=None,
        pytorch_weight_path=None,
    )
    with torch.device("meta"):
        model = trainer.build_model(measured, torch.device("meta"), load_pretrained=False).train()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    trainable_bytes = sum(_nbytes(p) for p in trainable)
    ema_bytes = 4 * sum(t.numel() for t in model.state_dict().values()) if config.ema_decay is not None else 0
    return MemoryEstimate(
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in trainable),
        weight_bytes=sum(_nbytes(p) for p in params) // fsdp_devices,
        gradient_bytes=trainable_bytes // fsdp_devices,
        optimizer_bytes=2 * trainable_bytes // fsdp_devices,
        ema_bytes=ema_bytes // fsdp_devices,
        batch_bytes=_batch_bytes(model.config, batch_size),
        activation_bytes=_activation_bytes(model, batch_size, config.gradient_checkpointing),
    )


def _measured_model(model: Pi0Config | Pi0FastConfig, prompt_tokens: int) -> Pi0Config | Pi0FastConfig:
    """The model at ``prompt_tokens`` untrimmed prompt columns (and LightVLA's union undeduplicated)."""
    if isinstance(model, Pi0FastConfig):
        return dataclasses.replace(model, max_token_len=prompt_tokens)
    return dataclasses.replace(
        model, max_token_len=prompt_tokens, prompt_trim_multiple=None, token_prune_dedup_training=False
    )


def training_observation(config: Pi0Config | Pi0FastConfig, batch_size: int) -> Observation:
    """A training batch's observation; π0-FAST's prompt is half prefix, half action tokens with a loss."""
    observation = random_observation(config, batch_size)
    if not isinstance(config, Pi0FastConfig):
        return observation
    postfix = (torch.arange(config.max_token_len) >= config.max_token_len // 2)[None].expand(batch_size, -1)
    return dataclasses.replace(observation, token_ar_mask=postfix.long(), token_loss_mask=postfix.clone())


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _batch_bytes(config: Pi0Config | Pi0FastConfig, batch_size: int) -> int:
    observation = training_observation(config, batch_size)
    tensors = [*observation.images.values(), *observation.image_masks.values(), observation.state]
    prompt = (
        observation.tokenized_prompt,
        observation.tokenized_prompt_mask,
        observation.token_ar_mask,
        observation.token_loss_mask,
    )
    tensors += [t for t in prompt if t is not None]
    actions = batch_size * config.action_horizon * config.action_dim * 4  # float32
    return sum(_nbytes(t) for t in tensors) + actions


def _activation_bytes(model: Model, batch_size: int, checkpointing: bool) -> int:
    """Bytes autograd keeps for the backward pass of one training forward on meta tensors."""
    model.gradient_checkpointing_disable()
    saved = _saved_storages(model, batch_size)
    if not checkpointing:
        return sum(nbytes for nbytes, _ in saved)
    own: dict[str, int] = defaultdict(int)  # bytes that one layer alone saves: its recomputation
    for nbytes, layers in saved:
        if len(layers) == 1 and _OUTSIDE_LAYERS not in layers:
            own[next(iter(layers))] += nbytes
    model.gradient_checkpointing_enable()
    outside = sum(nbytes for nbytes, _ in _saved_storages(model, batch_size))
    return outside + _checkpointed_inputs_bytes(model, batch_size) + max(own.values(), default=0)


def _saved_storages(model: Model, batch_size: int) -> list[tuple[int, set[str]]]:
    """Each storage one forward saves for backward (parameters excluded), once: its bytes and the layer runs that
    saved it (``outside`` for saves outside the transformer layers)."""
    config = model.config
    observation = training_observation(config, batch_size).to("meta")
    actions = torch.zeros(batch_size, config.action_horizon, config.action_dim, device="meta")
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, tuple[int, set[str]]] = {}
    alive: list[torch.UntypedStorage] = []  # a freed storage's address could be reused and miscounted as seen
    current = [_OUTSIDE_LAYERS]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata in parameters:
            return tensor
        if storage._cdata not in saved:
            saved[storage._cdata] = (storage.nbytes(), set())
            alive.append(storage)
        saved[storage._cdata][1].add(current[0])
        return tensor

    calls: dict[str, int] = defaultdict(int)

    def enter(name: str) -> None:  # each call is its own layer run (SigLIP runs once per camera)
        calls[name] += 1
        current[0] = name if name == _OUTSIDE_LAYERS else f"{name}#{calls[name]}"

    handles = [
        module.register_forward_pre_hook(lambda _, args, name=name: enter(name))
        for name, module in _layer_entry_points(model)
    ]
    try:
        with _FusedAttentionSaves(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if isinstance(model, Pi0FastPytorch):
                model(observation, actions)
            else:
                time = torch.full((batch_size,), 0.5, device="meta")
                model(observation, actions, noise=torch.zeros_like(actions), time=time)
    finally:
        for handle in handles:
            handle.remove()
    return list(saved.values())


class _FusedAttention(torch.autograd.Function):
    """Attention that saves for backward what the fused kernels save: query, key, value, mask, output and the
    float32 log-sum-exp (the estimator runs forward only, so there is no ``backward``)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        out = attend(query, key, value)
        log_sum_exp = torch.empty(out.shape[:-1], dtype=torch.float32, device=out.device)  # [B, heads, Lq]
        ctx.save_for_backward(*(t for t in (query, key, value, mask) if t is not None), out, log_sum_exp)
        return out


class _FusedAttentionSaves(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` under autograd through ``_FusedAttention``."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        query, key, value, *rest = args
        mask = rest[0] if rest else kwargs.get("attn_mask")
        return _FusedAttention.apply(lambda q, k, v: func(q, k, v, *rest, **kwargs), query, key, value, mask)


def _layer_entry_points(model: Model) -> list[tuple[str, nn.Module]]:
    """The module called first in each checkpointed layer (SigLIP encoder layers; the language model's input norm
    of each joint layer), and the first module after each run of layers (SigLIP's final norm, the token embedding,
    the action head or π0-FAST's final norm), which leaves the layers."""
    fast = isinstance(model, Pi0FastPytorch)
    paligemma = model.paligemma.model if fast else model.paligemma_with_expert.paligemma.model
    vision = [(f"vision.{i}", m) for i, m in enumerate(model.modules()) if isinstance(m, SiglipEncoderLayer)]
    joint = [(f"joint.{i}", layer.input_layernorm) for i, layer in enumerate(paligemma.language_model.layers)]
    after_joint = paligemma.language_model.norm if fast else model.action_out_proj
    leave = [paligemma.vision_tower.vision_model.post_layernorm, paligemma.language_model.embed_tokens, after_joint]
    return [*vision, *joint, *((_OUTSIDE_LAYERS, m) for m in leave)]


def _checkpointed_inputs_bytes(model: Model, batch_size: int) -> int:
    """The hidden states each checkpointed layer keeps as its input: per SigLIP layer ``[B, patches, width]`` per
    camera, per joint layer the prefix ``[B, L, width]`` and the suffix ``[B, S, expert width]`` (π0-FAST: the
    sequence but its last token, ``[B, L - 1, width]``)."""
    config = model.config
    element = torch.empty(0, dtype=model.compute_dtype).element_size()
    vision = config.vision_config
    cameras, patches = len(IMAGE_KEYS), vision.num_patches
    vision_bytes = vision.num_hidden_layers * cameras * batch_size * patches * vision.hidden_size * element
    prefix = cameras * patches + config.max_token_len
    llm = config.llm_config
    if isinstance(config, Pi0FastConfig):
        return vision_bytes + llm.depth * batch_size * (prefix - 1) * llm.width * element
    suffix = config.action_horizon + (0 if config.pi05 else 1)
    joint_bytes = llm.depth * batch_size * (prefix * llm.width + suffix * config.expert_config.width) * element
    return vision_bytes + joint_bytes
