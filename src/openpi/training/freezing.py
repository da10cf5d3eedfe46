"""Which parameters a fine-tune trains: ``TrainConfig.freeze_filter`` names a preset or gives a regex; parameters
whose names match it are frozen (no gradient, no optimizer state). None freezes nothing.

Presets:
- ``lora``: upstream's ``Pi0Config.get_freeze_filter()``, read from the model's variants: the base weights of each
  Gemma that has LoRA (its token embedding and final norm included) are frozen, its LoRA factors train; a Gemma
  without LoRA, SigLIP, the projector and the action/time/state projections train.
- ``expert-only``: the whole PaliGemma (language model, SigLIP, projector); the action expert and projections train.
- ``vision``: SigLIP and its projector.

The JAX trainer matches the same presets against the published parameter paths
(``PaliGemma/llm/layers/attn/q_einsum_1/w``), see :data:`JAX`.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from torch import nn

from openpi.models.pi0_config import LORA_FREEZE_PRESET, Pi0Config
from openpi.models.pi0_fast_config import Pi0FastConfig

logger = logging.getLogger(__name__)

# A name that is not a LoRA factor (``...q_proj.lora_a``, ``.../gating_einsum_lora_b``).
_NOT_LORA_FACTOR = r"(?!.*lora_[ab]$)"


@dataclasses.dataclass(frozen=True)
class ParameterNames:
    """Regexes over one framework's parameter names: where each Gemma's parameters start, and the fixed presets."""

    llm: str
    expert: str
    presets: dict[str, str]


# π0-FAST's PaliGemma is the model's own ``paligemma`` (no ``paligemma_with_expert.`` around it).
_TORCH_PALIGEMMA = r"(?:paligemma_with_expert\.)?paligemma\."
PYTORCH = ParameterNames(
    llm=rf"{_TORCH_PALIGEMMA}model\.language_model\.",
    expert=r"paligemma_with_expert\.gemma_expert\.",
    presets={
        "expert-only": r"^paligemma_with_expert\.paligemma\.",
        "vision": rf"^{_TORCH_PALIGEMMA}model\.(vision_tower|multi_modal_projector)\.",
    },
)

# The expert's weights carry the suffix _1 (q_einsum_1, mlp_1, pre_attention_norm_1, final_norm_1).
_JAX_EXPERT_PATH = r"llm/(layers/(attn/)?)?[a-z_]+_1/"
JAX = ParameterNames(
    llm=rf"PaliGemma/(?!{_JAX_EXPERT_PATH})llm/",
    expert=rf"PaliGemma/{_JAX_EXPERT_PATH}",
    presets={"expert-only": rf"^PaliGemma/(?!{_JAX_EXPERT_PATH})", "vision": r"^PaliGemma/img/"},
)


def lora_pattern(model: Pi0Config | Pi0FastConfig, names: ParameterNames) -> str:
    """The base weights of each Gemma with LoRA (upstream's ``get_freeze_filter``), as a regex over ``names``."""
    gemmas = [(names.llm, model.llm_config, model.paligemma_variant)]
    if isinstance(model, Pi0Config):
        gemmas.append((names.expert, model.expert_config, model.action_expert_variant))
    with_lora = [prefix for prefix, gemma, _ in gemmas if gemma.lora_rank > 0]
    if not with_lora:
        raise ValueError(
            f"freeze_filter {LORA_FREEZE_PRESET!r} freezes the base weights of the Gemmas with LoRA, but none of "
            f"{[variant for _, _, variant in gemmas]} has LoRA (e.g. gemma_2b_lora)"
        )
    return rf"^(?:{'|'.join(with_lora)}){_NOT_LORA_FACTOR}"


def freeze_pattern(freeze_filter: str, model: Pi0Config | Pi0FastConfig, names: ParameterNames = PYTORCH) -> str:
    """The regex of ``freeze_filter``: a preset's (``lora`` read from ``model``'s variants) or the filter itself."""
    if freeze_filter == LORA_FREEZE_PRESET:
        return lora_pattern(model, names)
    return names.presets.get(freeze_filter, freeze_filter)


def select_frozen(
    parameters: list[str], freeze_filter: str, model: Pi0Config | Pi0FastConfig, names: ParameterNames = PYTORCH
) -> list[str]:
    """The parameter names matching ``freeze_filter`` (a preset name or a regex searched in each name).

    Raises:
        ValueError: the filter is not a valid regex, or matches no name, or every name.
    """
    pattern = freeze_pattern(freeze_filter, model, names)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        presets = sorted([LORA_FREEZE_PRESET, *names.presets])
        raise ValueError(f"freeze_filter {freeze_filter!r} is neither a preset {presets} nor a regex: {e}") from None
    frozen = [name for name in parameters if regex.search(name)]
    if not frozen or len(frozen) == len(parameters):
        which = "no" if not frozen else "every"
        raise ValueError(f"freeze_filter {freeze_filter!r} matches {which} parameter of the model")
    return frozen


def freeze_parameters(model: nn.Module, freeze_filter: str) -> list[str]:
    """Freezes the parameters of a ``PI0Pytorch`` matching ``freeze_filter`` (see :func:`select_frozen`) and returns
    their names."""
    named = dict(model.named_parameters())
    frozen = select_frozen(list(named), freeze_filter, model.config)
    for name in frozen:
        named[name].requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Froze %d tensors (%s): %d of %d parameters train", len(frozen), freeze_filter, trainable, total)
    return frozen
