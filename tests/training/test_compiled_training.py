"""A compiled training forward (``pytorch_training_compile_mode``) computes the eager loss and gradients, and with
pruning recompiles once per bucket of the deduplicated patch count, not once per batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openpi.models.observation import random_observation
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import config as _config
from openpi.training import trainer
from tests.helpers.models import COMPILED_PRUNED_CONFIG, randomized

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The compiled-inference tests' tiny pruned model, trained with noise and centred scores, in buckets of 32 patches.
CONFIG = dataclasses.replace(
    COMPILED_PRUNED_CONFIG,
    token_prune_center_patches=True,
    token_prune_noise_scale=0.5,
    token_prune_kept_multiple=32,
)


def _loss_and_grads(model: PI0Pytorch, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    obs = random_observation(CONFIG, 2, seed=seed, valid_prompt_tokens=4 + 5 * seed)
    gen = torch.Generator().manual_seed(seed)
    actions, noise = torch.randn(2, 4, 32, generator=gen), torch.randn(2, 4, 32, generator=gen)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the pruner's selection noise
    loss = model(obs, actions, noise=noise, time=torch.tensor([0.3, 0.7])).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]


def test_a_compiled_training_forward_matches_eager_and_recompiles_per_bucket():
    eager = randomized(PI0Pytorch(CONFIG)).train()
    compiled = PI0Pytorch(CONFIG).train()
    compiled.load_state_dict(eager.state_dict())
    graphs: list[int] = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(1)
        return graph_module.forward

    torch._dynamo.reset()
    trainer.compile_training_forward(compiled, backend=counting_backend)
    # (merged patches, prefix length) of each step, read from the eager twin (hooks in compiled code add guards)
    shapes, grew = [], []
    eager.token_pruner.register_forward_hook(lambda _, args, out: shapes.append((out.tokens.shape[1],)))
    eager.paligemma_with_expert.register_forward_pre_hook(
        lambda _, args: shapes.append((*shapes.pop(), args[0][0].shape[1]))
    )
    for seed in range(4):
        before = len(graphs)
        expected_loss, expected_grads = _loss_and_grads(eager, seed)
        loss, grads = _loss_and_grads(compiled, seed)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        assert len(grads) == len(expected_grads)
        for grad, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        grew.append((len(graphs) > before, shapes[-1] not in shapes[:-1]))
    assert all(patches % 32 == 0 and prefix % 16 == 0 for patches, prefix in shapes), shapes
    assert all(compiled_again == new_shape for compiled_again, new_shape in grew[1:]), (grew, shapes)
    assert len(set(shapes)) < len(shapes), "the control: some batches must share a bucket"


def test_the_training_config_compiles_the_forward_and_buckets_the_patches():
    config = dataclasses.replace(
        _config.get_config("debug_pi05_lightvla"),
        pytorch_training_compile_mode="default",
        pytorch_training_precision="float32",
    )
    model = trainer.build_model(config, torch.device("cpu"), load_pretrained=False)
    assert model.config.token_prune_kept_multiple == trainer.COMPILED_KEPT_MULTIPLE
    assert model.forward is not PI0Pytorch.forward.__get__(model) and hasattr(
        model.forward, "_torchdynamo_orig_callable"
    )
