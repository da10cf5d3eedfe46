"""Which parameters a fine-tune trains: ``TrainConfig.freeze_filter`` names a preset or gives a regex; parameters
whose names match it are frozen (no gradient, no optimizer state).

Presets:
- ``lora``: the language model's and the action expert's base weights (token embedding included); their LoRA
  adapters, SigLIP, the projector and the action/time/state projections train (upstream's low-memory fine-tune).
- ``expert-only``: the whole PaliGemma (language model, SigLIP, projector); the action expert and projections train.
- ``vision``: SigLIP and its projector.

The JAX trainer matches the same presets against the published parameter paths
(``PaliGemma/llm/layers/attn/q_einsum_1/w``), see :data:`JAX_FREEZE_PRESETS`.
"""

from __future__ import annotations

import logging
import re

from torch import nn

logger = logging.getLogger(__name__)

FREEZE_PRESETS = {
    "lora": r"^paligemma_with_expert\.(paligemma\.model\.language_model|gemma_expert)\.(?!.*\.lora_[ab]$)",
    "expert-only": r"^paligemma_with_expert\.paligemma\.",
    "vision": r"^paligemma_with_expert\.paligemma\.model\.(vision_tower|multi_modal_projector)\.",
}

# The expert's weights carry the suffix _1 (q_einsum_1, mlp_1, pre_attention_norm_1, final_norm_1).
JAX_FREEZE_PRESETS = {
    "lora": r"^PaliGemma/llm/(?!.*lora_[ab]$)",
    "expert-only": r"^PaliGemma/(?!llm/(layers/(attn/)?)?[a-z_]+_1/)",
    "vision": r"^PaliGemma/img/",
}


def select_frozen(names: list[str], freeze_filter: str, presets: dict[str, str] = FREEZE_PRESETS) -> list[str]:
    """The names matching ``freeze_filter`` (a preset name or a regex searched in each name).

    Raises:
        ValueError: the filter is not a valid regex, or matches no name, or every name.
    """
    pattern = presets.get(freeze_filter, freeze_filter)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"freeze_filter {freeze_filter!r} is neither a preset {sorted(presets)} nor a regex: {e}"
        ) from None
    frozen = [name for name in names if regex.search(name)]
    if not frozen or len(frozen) == len(names):
        which = "no" if not frozen else "every"
        raise ValueError(f"freeze_filter {freeze_filter!r} matches {which} parameter of the model")
    return frozen


def freeze_parameters(model: nn.Module, freeze_filter: str) -> list[str]:
    """Freezes the parameters matching ``freeze_filter`` (see :func:`select_frozen`) and returns their names."""
    named = dict(model.named_parameters())
    frozen = select_frozen(list(named), freeze_filter)
    for name in frozen:
        named[name].requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Froze %d tensors (%s): %d of %d parameters train", len(frozen), freeze_filter, trainable, total)
    return frozen
