"""Which parameters a fine-tune trains: ``TrainConfig.freeze_filter`` names a preset or gives a regex; parameters
whose names match it are frozen (no gradient, no optimizer state).

Presets:
- ``lora``: the language model's and the action expert's base weights (token embedding included); their LoRA
  adapters, SigLIP, the projector and the action/time/state projections train (upstream's low-memory fine-tune).
- ``expert-only``: the whole PaliGemma (language model, SigLIP, projector); the action expert and projections train.
- ``vision``: SigLIP and its projector.
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


def freeze_parameters(model: nn.Module, freeze_filter: str) -> list[str]:
    """Freezes the parameters matching ``freeze_filter`` (a preset name or a regex searched in each name) and returns
    their names.

    Raises:
        ValueError: the filter is not a valid regex, or matches no parameter, or every parameter.
    """
    pattern = FREEZE_PRESETS.get(freeze_filter, freeze_filter)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        presets = sorted(FREEZE_PRESETS)
        raise ValueError(f"freeze_filter {freeze_filter!r} is neither a preset {presets} nor a regex: {e}") from None
    named = dict(model.named_parameters())
    frozen = [name for name in named if regex.search(name)]
    if not frozen or len(frozen) == len(named):
        which = "no" if not frozen else "every"
        raise ValueError(f"freeze_filter {freeze_filter!r} matches {which} parameter of the model")
    for name in frozen:
        named[name].requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Froze %d tensors (%s): %d of %d parameters train", len(frozen), freeze_filter, trainable, total)
    return frozen
