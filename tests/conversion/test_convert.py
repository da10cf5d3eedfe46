"""JAX/orbax -> PyTorch checkpoint conversion: layout, tensor semantics, validation, precision and the fixtures."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from openpi.cli import convert_jax_checkpoint
from openpi.conversion import convert, rules
from openpi.models import orbax_params, param_layout
from openpi.models.pi0_config import Pi0Config, RTCConfig
from openpi.models.reference_fixture import ReferenceFixture, relative_error
from openpi.models_pytorch import reference
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights
from openpi.policies import libero_policy
from openpi.shared import checkpoint_files, checkpoint_integrity
from tests.helpers.conversion import (
    EXPERT,
    LLM,
    LM_HEADS,
    VISION,
    jax_checkpoint_and_conversion,
    odd_config,
    random_params,
    write_orbax,
)


@pytest.mark.parametrize("name", ["pi05", "pi0"])
def test_rules_reproduce_the_published_layouts(name: str, layouts_root: Path) -> None:
    config = Pi0Config(pi05=name == "pi05")
    jax_layout = json.loads((layouts_root / "reference_jax_params.json").read_text())[name]
    torch_layout = json.loads((layouts_root / "reference_pytorch_state_dict.json").read_text())[name]
    built = rules.build_rules(config)
    assert {r.source: list(r.shape) for r in built} == {k: shape for k, (shape, _) in jax_layout.items()}
    ours = {t.key: [list(t.shape), str(rules.target_dtype(t, "bfloat16"))] for r in built for t in r.targets}
    assert ours == {k: v for k, v in torch_layout.items() if k not in LM_HEADS}


@pytest.mark.parametrize("name", ["jax_pi05_tiny", "jax_pi0_tiny"])
def test_architecture_is_read_from_the_tree(name: str, reference_root: Path) -> None:
    fixture = ReferenceFixture.load(reference_root / name)
    infos = orbax_params.read_param_metadata(reference_root / name / "checkpoint" / "params")
    shapes = {path: info.shape for path, info in infos.items()}
    assert shapes == {k: tuple(v) for k, v in fixture.raw_config["param_shapes"].items()}
    inferred = param_layout.infer_model_config(shapes, action_horizon=fixture.config.action_horizon)
    expected = fixture.config
    assert inferred.pi05 == expected.pi05
    assert (inferred.llm_config, inferred.expert_config) == (expected.llm_config, expected.expert_config)
    assert (inferred.vision_config, inferred.vocab_size) == (expected.vision_config, expected.vocab_size)
    assert param_layout.find_param_problems(shapes, expected) == []


@pytest.mark.parametrize("pi05", [True, False])
def test_tensors_compute_what_the_jax_einsums_compute(pi05: bool) -> None:
    config = odd_config(pi05)
    flat = random_params(config)
    state = dict(rules.convert_params(flat, config))
    rng = np.random.default_rng(1)
    for prefix, suffix, width in ((LLM, "", 24), (EXPERT, "_1", 16)):
        x = rng.standard_normal((3, width))
        attn = f"PaliGemma/llm/layers/attn/{{}}{suffix}/w"
        q = np.einsum("bw,hwd->bhd", x, flat[attn.format("q_einsum")][1]).reshape(3, -1)
        np.testing.assert_allclose(x @ state[f"{prefix}.self_attn.q_proj.weight"].T, q, rtol=1e-5, atol=1e-5)
        kv = np.einsum("bw,khwd->kbhd", x, flat[attn.format("kv_einsum")][1]).reshape(2, 3, -1)
        np.testing.assert_allclose(x @ state[f"{prefix}.self_attn.k_proj.weight"].T, kv[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x @ state[f"{prefix}.self_attn.v_proj.weight"].T, kv[1], rtol=1e-5, atol=1e-5)
        heads = rng.standard_normal((3, 4, 10))
        out = np.einsum("bhd,hdw->bw", heads, flat[attn.format("attn_vec_einsum")][1])
        o_proj = state[f"{prefix}.self_attn.o_proj.weight"]
        np.testing.assert_allclose(heads.reshape(3, -1) @ o_proj.T, out, rtol=1e-5, atol=1e-5)
        gating = flat[f"PaliGemma/llm/layers/mlp{suffix}/gating_einsum"][1]
        np.testing.assert_allclose(x @ state[f"{prefix}.mlp.gate_proj.weight"].T, x @ gating[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x @ state[f"{prefix}.mlp.up_proj.weight"].T, x @ gating[1], rtol=1e-5, atol=1e-5)
        linear = flat[f"PaliGemma/llm/layers/mlp{suffix}/linear"][1]
        np.testing.assert_array_equal(state[f"{prefix}.mlp.down_proj.weight"], linear.T)
    norm = f"{EXPERT}.input_layernorm"
    if pi05:
        kernel = flat["PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel"][1]
        np.testing.assert_array_equal(state[f"{norm}.dense.weight"], kernel.T)
    else:
        np.testing.assert_array_equal(
            state[f"{norm}.weight"], flat["PaliGemma/llm/layers/pre_attention_norm_1/scale"][1]
        )

    attention = "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0"
    v = rng.standard_normal((3, 12))
    q = np.einsum("bw,whd->bhd", v, flat[f"{attention}/query/kernel"][1]) + flat[f"{attention}/query/bias"][1]
    q_proj = f"{VISION}.encoder.layers.1.self_attn.q_proj"
    torch_q = v @ state[f"{q_proj}.weight"].T + state[f"{q_proj}.bias"]
    np.testing.assert_allclose(torch_q, q.reshape(3, -1), rtol=1e-5, atol=1e-5)
    heads = rng.standard_normal((3, 3, 4))
    out = np.einsum("bhd,hdw->bw", heads, flat[f"{attention}/out/kernel"][1])
    out_proj = state[f"{VISION}.encoder.layers.1.self_attn.out_proj.weight"]
    np.testing.assert_allclose(heads.reshape(3, -1) @ out_proj.T, out, rtol=1e-5, atol=1e-5)

    image = torch.randn(1, 3, 28, 28)
    conv = torch.nn.functional.conv2d(
        image, torch.from_numpy(state[f"{VISION}.embeddings.patch_embedding.weight"]), stride=14
    )
    patch = image[0, :, 14:28, 0:14].permute(1, 2, 0).numpy()  # patch row 1, column 0, HWC
    expected = np.einsum("hwc,hwco->o", patch, flat["PaliGemma/img/embedding/kernel"])
    np.testing.assert_allclose(conv[0, :, 1, 0].numpy(), expected, rtol=1e-4, atol=1e-4)
    position = state[f"{VISION}.embeddings.position_embedding.weight"]
    np.testing.assert_array_equal(position, flat["PaliGemma/img/pos_embedding"][0])


def test_unknown_parameter_is_an_error_naming_it() -> None:
    config = odd_config(True)
    flat = random_params(config)
    flat["PaliGemma/llm/layers/attn/extra_einsum/w"] = np.zeros((2, 3), np.float32)
    with pytest.raises(
        param_layout.CheckpointMismatchError, match="unknown parameter PaliGemma/llm/layers/attn/extra_einsum/w"
    ):
        dict(rules.convert_params(flat, config))


def test_missing_parameter_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    config = odd_config(False)
    flat = random_params(config)
    del flat["PaliGemma/llm/layers/mlp_1/linear"], flat["state_proj/bias"]
    write_orbax(tmp_path / "ckpt", flat)
    with pytest.raises(param_layout.CheckpointMismatchError) as error:
        convert.convert_checkpoint(tmp_path / "ckpt", config, tmp_path / "out", "float32")
    assert "missing parameter PaliGemma/llm/layers/mlp_1/linear" in str(error.value)
    assert "missing parameter state_proj/bias" in str(error.value)
    assert not (tmp_path / "out" / checkpoint_files.WEIGHTS_FILE).exists()


def test_shape_and_architecture_mismatches_are_named() -> None:
    config = odd_config(True)
    flat = random_params(config)
    flat["action_out_proj/bias"] = np.zeros(7, np.float32)
    problems = param_layout.find_param_problems({k: v.shape for k, v in flat.items()}, config)
    assert problems == ["shape of action_out_proj/bias is [7], config expects [6]"]
    pi0_problems = param_layout.find_param_problems(
        {k: v.shape for k, v in flat.items()}, dataclasses.replace(config, pi05=False)
    )
    assert pi0_problems[0] == "pi05: checkpoint has True, config has False"
    assert "unknown parameter time_mlp_in/kernel [16, 16]" in pi0_problems
    assert "missing parameter state_proj/kernel [6, 16]" in pi0_problems


def test_value_wrapped_tree_converts_like_plain_tree(tmp_path: Path) -> None:
    config = odd_config(True)
    flat = random_params(config)
    plain = write_orbax(tmp_path / "plain", flat)
    wrapped = write_orbax(tmp_path / "wrapped", flat, value_wrapped=True)
    loaded = orbax_params.flatten_params(orbax_params.load_jax_params(wrapped / "params"))
    assert loaded.keys() == flat.keys()
    outputs = [
        convert.convert_checkpoint(ckpt, config, tmp_path / f"out_{ckpt.name}", "bfloat16") for ckpt in (plain, wrapped)
    ]
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_bfloat16_output_keeps_float32_exceptions(tmp_path: Path) -> None:
    config = odd_config(True)
    flat = random_params(config)
    checkpoint = write_orbax(tmp_path / "ckpt", flat)
    (checkpoint / "assets" / "robot").mkdir(parents=True)
    (checkpoint / "assets" / "robot" / "norm_stats.json").write_text('{"norm_stats": {}}')
    weights = convert.convert_checkpoint(checkpoint, config, tmp_path / "out", "bfloat16")
    written = safetensors.torch.load_file(weights)
    expected = {k: torch.from_numpy(v) for k, v in rules.convert_params(flat, config, "float32")}
    assert written.keys() == expected.keys()
    float32_keys = {k for k, v in written.items() if v.dtype == torch.float32}
    assert {k for k, v in written.items() if v.dtype not in (torch.float32, torch.bfloat16)} == set()
    assert f"{VISION}.embeddings.patch_embedding.weight" in float32_keys
    assert f"{VISION}.embeddings.position_embedding.weight" in float32_keys
    assert f"{EXPERT}.post_attention_layernorm.dense.weight" in float32_keys
    assert f"{LLM}.input_layernorm.weight" in float32_keys
    assert {"time_mlp_in.weight", "action_in_proj.bias", "action_out_proj.weight"} <= float32_keys
    assert f"{LLM}.self_attn.o_proj.weight" not in float32_keys
    assert f"{VISION}.encoder.layers.0.layer_norm1.weight" not in float32_keys
    for key, value in written.items():
        torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=0, atol=0)
    saved_config = json.loads((weights.parent / checkpoint_files.CONFIG_FILE).read_text())
    saved_config["rtc"] = RTCConfig(**saved_config["rtc"])
    assert Pi0Config(**saved_config) == dataclasses.replace(config, dtype="bfloat16")
    assert (weights.parent / "assets" / "robot" / "norm_stats.json").read_text() == '{"norm_stats": {}}'
    metadata_keys = safetensors.numpy.load_file(weights).keys()
    assert metadata_keys == written.keys()


@pytest.mark.parametrize("name", ["jax_pi05_tiny", "jax_pi0_tiny"])
def test_converted_fixture_reproduces_reference_outputs(name: str, tmp_path: Path, reference_root: Path) -> None:
    fixture = ReferenceFixture.load(reference_root / name)
    weights = convert.convert_checkpoint(fixture.checkpoint_dir, fixture.config, tmp_path, "float32")
    model = PI0Pytorch(fixture.config)
    load_weights(model, weights)
    model.eval()
    obs, io = reference.observation(fixture), reference.tensors(fixture)
    assert obs.images["base_0_rgb"].shape[1] == 3
    with torch.no_grad():
        loss = model.forward(obs, io["input.actions"], noise=io["input.noise"], time=io["input.time"])
        actions = model.sample_actions(obs, noise=io["input.sample_noise"], num_steps=fixture.num_flow_steps)
    assert relative_error(loss, io["output.loss"]) <= 2e-3
    assert relative_error(actions, io["output.sampled_actions"]) <= 2e-3


def test_converted_folder_trains_and_serves(tmp_path: Path, reference_root: Path) -> None:
    """The converter's output folder is a valid pytorch_weight_path and a servable checkpoint (with its assets)."""
    from openpi.policies import policy_config
    from openpi.training import config as _config
    from openpi.training import trainer
    from tests.helpers.lerobot import write_tokenizer
    from tests.helpers.policies import libero_observation

    fixture = ReferenceFixture.load(reference_root / "jax_pi05_tiny")
    _, converted = jax_checkpoint_and_conversion(fixture, tmp_path)

    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(write_tokenizer(tmp_path)))
    train_config = _config.TrainConfig(
        name="converted", model=fixture.config, data=data, pytorch_weight_path=str(converted),
        pytorch_training_precision="float32",
    )  # fmt: skip
    state = convert.convert_params_dir(fixture.checkpoint_dir, fixture.config)
    trained = trainer.build_model(train_config, torch.device("cpu"))
    for key, value in reference.build_model(fixture, state).state_dict().items():
        assert torch.equal(trained.state_dict()[key], value), key

    policy = policy_config.create_trained_policy(train_config, converted)
    actions = policy.infer(libero_observation(0))["actions"]
    assert actions.shape == (fixture.config.action_horizon, libero_policy.ACTION_DIM) and np.isfinite(actions).all()


def test_cli_accepts_underscore_spellings_and_inspects(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, reference_root: Path
) -> None:
    import tyro

    checkpoint = str(reference_root / "jax_pi0_tiny" / "checkpoint")
    args = tyro.cli(convert_jax_checkpoint.Args, args=["--checkpoint_dir", checkpoint, "--inspect_only"])
    convert_jax_checkpoint.convert_or_inspect(args)
    printed = capsys.readouterr().out
    assert "PaliGemma/llm/layers/attn/q_einsum/w" in printed and "[4, 8, 64, 16]" in printed
    assert "50 arrays, 475,776 parameters" in printed
    assert "architecture: π0;" in printed
    assert not (tmp_path / "out").exists()
    args = tyro.cli(
        convert_jax_checkpoint.Args, args=["--checkpoint-dir", checkpoint, "--output-path", str(tmp_path / "out")]
    )
    assert args.precision == "bfloat16"
    convert_jax_checkpoint.convert_or_inspect(args)
    assert (tmp_path / "out" / checkpoint_files.WEIGHTS_FILE).is_file()


def test_nonfinite_weights_are_refused_naming_the_leaf(tmp_path: Path) -> None:
    config = odd_config(pi05=True)
    flat = random_params(config)
    leaf = "PaliGemma/llm/layers/attn/q_einsum/w"
    flat[leaf] = flat[leaf].copy()
    flat[leaf].reshape(-1)[:64] = np.nan
    checkpoint = write_orbax(tmp_path / "checkpoint", flat)
    with pytest.raises(param_layout.CheckpointMismatchError, match=f"{leaf} holds 64 NaN/infinite values"):
        convert.convert_checkpoint(checkpoint, config, tmp_path / "out", "float32")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    convert.convert_checkpoint(checkpoint, config, tmp_path / "out", "float32", allow_nonfinite=True)


def test_damaged_metadata_is_named(tmp_path: Path) -> None:
    config = odd_config(pi05=False)
    checkpoint = write_orbax(tmp_path / "checkpoint", random_params(config))
    metadata = checkpoint / "params" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[:40])
    with pytest.raises(param_layout.CheckpointMismatchError, match=r"Cannot read the orbax metadata of .*damaged"):
        orbax_params.read_param_metadata(checkpoint / "params")


def test_a_truncated_orbax_manifest_is_one_line_naming_it(tmp_path: Path) -> None:
    checkpoint = write_orbax(tmp_path / "checkpoint", random_params(odd_config(pi05=False)))
    manifest = checkpoint / "params" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:20])
    with pytest.raises(param_layout.CheckpointMismatchError, match=f"{manifest} is truncated or damaged"):
        convert.convert_checkpoint(checkpoint, None, tmp_path / "out", "float32")
    script = Path(__file__).parents[2] / "examples" / "convert_jax_model_to_pytorch.py"
    argv = [sys.executable, str(script), "--checkpoint-dir", str(checkpoint), "--output-path", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert done.returncode == 1 and line.startswith("error: ") and f"{manifest} is truncated" in line


def test_the_converted_folder_carries_a_manifest_of_its_files(tmp_path: Path) -> None:
    config = odd_config(pi05=True)
    checkpoint = write_orbax(tmp_path / "checkpoint", random_params(config))
    convert.convert_checkpoint(checkpoint, config, tmp_path / "out", "float32")
    manifest = json.loads((tmp_path / "out" / checkpoint_integrity.MANIFEST_FILE).read_text())
    assert sorted(manifest) == [checkpoint_files.CONFIG_FILE, checkpoint_files.WEIGHTS_FILE]
    assert checkpoint_integrity.manifest_problems(tmp_path / "out") == []
