"""Model structure, checkpoint compatibility, precision and training switches."""

from __future__ import annotations

import dataclasses
import json

import pytest
import safetensors.torch
import torch

from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config, tiny_config
from openpi.models.variants import GemmaConfig, get_gemma_config, get_siglip_config, spell_variant
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch, make_attention_mask, sinusoidal_time_embedding
from openpi.models_pytorch.weights import IGNORED_KEYS, load_weights, save_weights
from tests.helpers.models import randomized

TINY = tiny_config(
    action_expert_variant="width=32,depth=4,mlp_dim=64,num_heads=8,num_kv_heads=1,head_dim=16",
    vocab_size=64,
    action_horizon=4,
    max_token_len=8,
)


def _observation(batch: int = 2, cameras: int = 2, seed: int = 0) -> Observation:
    return random_observation(TINY, batch, num_cameras=cameras, valid_prompt_tokens=5, seed=seed)


@pytest.mark.parametrize("variant", ["pi05", "pi0"])
def test_full_size_model_has_the_published_layout(variant, layouts_root):
    layout = json.loads((layouts_root / "reference_pytorch_state_dict.json").read_text())[variant]
    with torch.device("meta"):
        model = PI0Pytorch(Pi0Config(pi05=variant == "pi05", dtype="bfloat16"))
    ours = {key: (list(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in model.state_dict().items()}
    theirs = {key: (shape, dtype) for key, (shape, dtype) in layout.items()}
    assert set(theirs) - set(ours) == set(IGNORED_KEYS)
    assert set(ours) <= set(theirs)
    mismatched = {key: (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]}
    assert not mismatched
    assert sum(t.numel() for t in model.parameters()) > 3.2e9


def test_load_weights_ignores_lm_heads_and_rejects_unknown_or_missing_keys(tmp_path):
    model = PI0Pytorch(TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[IGNORED_KEYS[0]] = torch.zeros(64, 64)
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    assert load_weights(PI0Pytorch(TINY), tmp_path) == [IGNORED_KEYS[0]]

    state["paligemma_with_expert.extra.weight"] = torch.zeros(1)
    del state["action_out_proj.bias"]
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"(?s)missing.*action_out_proj\.bias.*unexpected.*extra\.weight"):
        load_weights(PI0Pytorch(TINY), tmp_path)


def test_save_then_load_round_trips(tmp_path):
    model = PI0Pytorch(TINY)
    save_weights(model, tmp_path)
    other = PI0Pytorch(TINY)
    load_weights(other, tmp_path / "model.safetensors")
    for (key, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_bfloat16_keeps_published_float32_parameters(layouts_root):
    model = PI0Pytorch(dataclasses.replace(TINY, dtype="bfloat16"))
    layout = json.loads((layouts_root / "reference_pytorch_state_dict.json").read_text())["pi05"]
    import re

    for key, param in model.state_dict().items():
        full_key = re.sub(r"layers\.\d+\.", "layers.0.", key)
        assert str(param.dtype).removeprefix("torch.") == layout[full_key][1], key
    loss = model(_observation(), torch.randn(2, 4, 32))
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = PI0Pytorch(TINY).train()
    obs, actions = _observation(), torch.randn(2, 4, 32)
    noise, time = torch.randn(2, 4, 32), torch.tensor([0.3, 0.8])

    def loss_and_grads():
        model.zero_grad()
        loss = model(obs, actions, noise, time).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_loss, plain_grads = loss_and_grads()
    model.gradient_checkpointing_enable()
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert torch.allclose(plain_loss, ckpt_loss)
    assert len(plain_grads) == len(ckpt_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, ckpt_grads, strict=True))


@pytest.mark.parametrize("pi05", [True, False])
def test_every_parameter_gets_a_gradient(pi05):
    model = PI0Pytorch(dataclasses.replace(TINY, pi05=pi05)).train()
    for name, param in model.named_parameters():
        if ".dense." in name:  # adaRMS starts at zero gates (adaLN-Zero); open them to check the whole graph
            torch.nn.init.normal_(param, std=0.1)
    model(_observation(), torch.randn(2, 4, 32)).mean().backward()
    no_grad = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    # Only the language model's last-layer outputs are unused: actions read the expert stream.
    last = "paligemma_with_expert.paligemma.model.language_model.layers.3."
    unused = {
        last + s for s in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight")
    }
    unused |= {f"{last}mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    unused.add("paligemma_with_expert.paligemma.model.language_model.norm.weight")
    assert no_grad == unused


def test_sampling_is_deterministic_given_noise_and_shapes_follow_the_config():
    model = PI0Pytorch(dataclasses.replace(TINY, pi05=False)).eval()
    obs, noise = _observation(batch=3, cameras=1), torch.randn(3, 4, 32)
    first = model.sample_actions(obs, noise=noise, num_steps=3)
    assert first.shape == (3, 4, 32)
    assert torch.equal(first, model.sample_actions(obs, noise=noise, num_steps=3))


def test_sampling_accepts_the_upstream_signature_with_a_device():
    model = PI0Pytorch(TINY).eval()
    obs, noise = _observation(batch=2), torch.randn(2, 4, 32)
    expected = model.sample_actions(obs, noise=noise, num_steps=2)
    assert torch.equal(model.sample_actions("cpu", obs, noise, 2), expected)
    assert torch.equal(model.sample_actions(torch.device("cpu"), obs, noise=noise, num_steps=2), expected)
    with pytest.raises(TypeError, match="Observation"):
        model.sample_actions("cpu")


def test_compile_mode_compiles_the_prefix_and_the_denoising_once_each():
    model = PI0Pytorch(dataclasses.replace(TINY, pytorch_compile_mode="default"))
    assert hasattr(model.encode_prefix, "_torchdynamo_orig_callable")
    assert hasattr(model.denoise, "_torchdynamo_orig_callable")
    graphs: list[int] = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(1)
        return graph_module.forward

    model = PI0Pytorch(TINY)
    model.compile_sampling(backend=counting_backend, dynamic=False)
    obs, noise = _observation(), torch.randn(2, TINY.action_horizon, TINY.action_dim)
    expected = PI0Pytorch(TINY).eval()
    expected.load_state_dict(model.state_dict())
    for _ in range(3):
        actions = model.sample_actions(obs, noise=noise, num_steps=2)
    compiled_once = len(graphs)
    model.sample_actions(obs, noise=noise, num_steps=2)
    assert len(graphs) == compiled_once, "a repeated call compiles nothing new (the timing is not traced)"
    torch.testing.assert_close(actions, expected.sample_actions(obs, noise=noise, num_steps=2))
    assert set(model.last_timing_ms) == {"prefix_ms", "denoise_ms"}


def test_missing_prompt_and_unpadded_state_are_clear_errors():
    model = PI0Pytorch(TINY)
    obs = _observation()
    with pytest.raises(ValueError, match="tokenized_prompt"):
        model.sample_actions(dataclasses.replace(obs, tokenized_prompt=None, tokenized_prompt_mask=None))
    with pytest.raises(ValueError, match="action_dim=32"):
        model.sample_actions(dataclasses.replace(obs, state=obs.state[:, :8]))


def test_attention_mask_blocks():
    pad = torch.tensor([[True, True, False, True, True, True]])
    starts = torch.tensor([[0, 0, 0, 1, 1, 0]])
    mask = make_attention_mask(pad, starts)[0]
    assert mask[0, 1] and mask[1, 0]  # prefix is bidirectional
    assert not mask[0, 3] and mask[3, 0]  # a new block sees earlier blocks, not vice versa
    assert mask[4, 5] and mask[5, 4] and not mask[3, 4]
    assert not mask[:, 2].any() and not mask[2].any()  # padding is never attended


def test_time_embedding_periods():
    emb = sinusoidal_time_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # The slowest frequency has period 4.0: sin(2π/4) = 1 at t = 1.
    assert torch.isclose(emb[1, 3], torch.tensor(1.0), atol=1e-6)


def test_variants_parse_names_and_explicit_specs():
    assert get_gemma_config("gemma_2b").width == 2048
    explicit = GemmaConfig(width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=2, head_dim=12)
    assert get_gemma_config(spell_variant(explicit)) == explicit
    assert get_siglip_config("So400m/14").num_patches == 256
    with pytest.raises(ValueError, match="Unknown GemmaConfig variant"):
        get_gemma_config("gemma_7b")
    with pytest.raises(ValueError, match="Incomplete"):
        get_gemma_config("width=4")


def test_config_defaults_and_validation():
    assert Pi0Config(pi05=True).max_token_len == 200 and Pi0Config().max_token_len == 48
    assert Pi0Config(pi05=True).discrete_state_input and not Pi0Config().discrete_state_input
    with pytest.raises(ValueError, match="share attention"):
        Pi0Config(action_expert_variant="width=64,depth=4,mlp_dim=128,num_heads=4,num_kv_heads=1,head_dim=16")
    with pytest.raises(ValueError, match="keep_ratio"):
        Pi0Config(token_prune_keep_ratio=1.5)


def test_observation_from_dict_accepts_uint8_channels_last():
    data = {
        "image": {"base_0_rgb": torch.full((1, 224, 224, 3), 255, dtype=torch.uint8)},
        "state": torch.zeros(1, 32),
        "tokenized_prompt": torch.zeros(1, 4, dtype=torch.int32),
        "tokenized_prompt_mask": torch.ones(1, 4, dtype=torch.bool),
    }
    obs = Observation.from_dict(data)
    assert obs.images["base_0_rgb"].shape == (1, 3, 224, 224)
    assert torch.all(obs.images["base_0_rgb"] == 1.0) and obs.image_masks["base_0_rgb"].all()
    with pytest.raises(ValueError, match="without image_masks"):
        Observation(images={"a": torch.zeros(1, 3, 2, 2)}, image_masks={}, state=torch.zeros(1, 2))


def test_trimming_prompt_padding_changes_nothing_but_the_length():
    """Actions, training loss and every gradient are those of the untrimmed prompt."""
    config = dataclasses.replace(TINY, max_token_len=48)
    trimmed = randomized(PI0Pytorch(config)).eval()
    full = PI0Pytorch(dataclasses.replace(config, prompt_trim_multiple=None)).eval()
    full.load_state_dict(trimmed.state_dict())
    obs = random_observation(config, 2, num_cameras=2, seed=3)
    obs.tokenized_prompt_mask[0, 5:] = False  # prompts of 5 and 20 valid tokens
    obs.tokenized_prompt_mask[1, 20:] = False
    noise, actions, time = torch.randn(2, 4, 32), torch.randn(2, 4, 32), torch.tensor([0.3, 0.8])
    assert trimmed.encode_prefix(obs).pad_masks.shape[1] == full.encode_prefix(obs).pad_masks.shape[1] - 48 + 32
    torch.testing.assert_close(
        trimmed.sample_actions(obs, noise=noise), full.sample_actions(obs, noise=noise), rtol=1e-5, atol=1e-5
    )
    losses = [model.train()(obs, actions, noise, time) for model in (trimmed, full)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for loss in losses:
        loss.sum().backward()
    for (name, trimmed_param), full_param in zip(trimmed.named_parameters(), full.parameters(), strict=True):
        if full_param.grad is None:
            assert trimmed_param.grad is None, name
            continue
        difference = torch.linalg.vector_norm(trimmed_param.grad - full_param.grad)
        assert difference <= 1e-5 * torch.linalg.vector_norm(full_param.grad).clamp(min=1e-3), name
