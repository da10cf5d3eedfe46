"""End to end with the published ``openpi-client``: a tiny checkpoint served as scripts/serve_policy.py serves it
(``openpi.cli.serve_policy``), on loopback.

The client needs numpy<2, so it runs once for the whole module in its own environment
(``uv run --no-project --with openpi-client``) and executes a plan of connections and requests written by the test.
"""

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from openpi.cli import serve_policy
from openpi.models import tokenizer
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.policies import libero_policy
from openpi.policies.policy import DECODING_FAILED_KEY
from openpi.serving import msgpack_numpy
from openpi.shared import checkpoint_integrity
from openpi.training.config import get_config
from tests.helpers.conversion import write_orbax
from tests.helpers.fast import fitted_tokenizer
from tests.helpers.policies import PROMPTS, libero_observation, make_train_config, write_checkpoint, write_norm_stats

CONFIG_NAME = "debug_pi05_lightvla"
FAST_CONFIG_NAME = "debug_pi0_fast"
API_KEY = "test-key"
CLIENT_TIMEOUT_S = 240

# Runs in the published client's environment: reads the plan, talks to the servers, writes what it saw.
CLIENT_SCRIPT = """
import sys
from openpi_client import msgpack_numpy, websocket_client_policy

with open(sys.argv[1], "rb") as f:
    plan = msgpack_numpy.unpackb(f.read())
results = {"probe": msgpack_numpy.unpackb(msgpack_numpy.packb(plan["probe"]))}
for name, connection in plan["connections"].items():
    entry = results[name] = {}
    try:
        client = websocket_client_policy.WebsocketClientPolicy(
            "127.0.0.1", connection["port"], api_key=connection["api_key"]
        )
    except Exception as e:
        entry["connect_error"] = type(e).__name__ + ": " + str(e)
        continue
    entry["metadata"] = client.get_server_metadata()
    entry["replies"] = []
    for obs in connection["requests"]:
        try:
            entry["replies"].append({"reply": client.infer(obs)})
        except RuntimeError as e:
            entry["replies"].append({"error": str(e)})
with open(sys.argv[2], "wb") as f:
    f.write(msgpack_numpy.packb(results))
"""

PROBE = {
    "uint8": np.arange(12, dtype=np.uint8).reshape(3, 4),
    "float32": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    "float64": np.array([np.pi]),
    "int64": np.array([-(2**40), 7]),
    "bool": np.array([True, False]),
    "scalar": np.float32(2.5),
    "text": "pick up the bowl",
}


def _serve_args(checkpoint: Path, *flags: str, config_name: str = CONFIG_NAME):
    argv = [*flags, "--port", "0", "--host", "127.0.0.1", "--pytorch-device", "cpu"]
    argv += ["policy:checkpoint", "--policy.config", config_name, "--policy.dir", str(checkpoint)]
    return tyro.cli(serve_policy.Args, args=argv)


def _fast_checkpoint(workdir: Path, tokenizer_path: Path):
    """A tiny π0-FAST (random weights, a FAST tokenizer fitted on smooth chunks) and its train config."""
    fast_dir = fitted_tokenizer(action_dim=libero_policy.ACTION_DIM, vocab_size=300).save(workdir / "fast")
    config = make_train_config(tokenizer_path, FAST_CONFIG_NAME)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, fast_tokenizer_path=str(fast_dir)))
    torch.manual_seed(0)
    weights.save_weights(Pi0FastPytorch(config.model), workdir / "fast_checkpoint")
    return write_norm_stats(workdir / "fast_checkpoint", action_shift=0.5), config


def _run_published_client(plan: dict, workdir: Path) -> dict:
    plan_path, result_path, script_path = workdir / "plan.msgpack", workdir / "result.msgpack", workdir / "client.py"
    plan_path.write_bytes(msgpack_numpy.packb(plan))
    script_path.write_text(CLIENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    command = ["uv", "run", "--no-project", "--with", "openpi-client", "python", str(script_path)]
    completed = subprocess.run(
        [*command, str(plan_path), str(result_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert completed.returncode == 0, f"published client failed:\n{completed.stdout}\n{completed.stderr}"
    return msgpack_numpy.unpackb(result_path.read_bytes())


def _jax_params(train_config) -> dict[str, np.ndarray]:
    from openpi.models.orbax_params import flatten_params
    from openpi.models_jax import params as jax_params

    return {path: np.asarray(leaf) for path, leaf in flatten_params(jax_params.init_params(train_config.model)).items()}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """Starts three servers from one tiny checkpoint (plain, pruned to 25%, API key), one from a JAX checkpoint of
    the same config (pruned to 25%) and one from a tiny π0-FAST, runs the published client once against them, and
    returns what it saw plus the serving logs."""
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to install the published openpi-client in its own environment")
    workdir = tmp_path_factory.mktemp("client")
    tokenizer_path = tokenizer.train_sentencepiece(PROMPTS, workdir / "tok", vocab_size=300)
    train_config = make_train_config(tokenizer_path, CONFIG_NAME)
    checkpoint = write_checkpoint(workdir / "checkpoint", train_config)
    jax_checkpoint = write_norm_stats(write_orbax(workdir / "jax_checkpoint", _jax_params(train_config)))
    fast_checkpoint, fast_config = _fast_checkpoint(workdir, tokenizer_path)
    good = libero_observation(0)
    bad_key = {k: v for k, v in libero_observation(1).items() if k != "observation/state"}
    bad_shape = {**libero_observation(2), "observation/state": np.zeros(5, np.float32)}
    logs = _ListHandler()
    serve_policy.logger.addHandler(logs)
    previous_level = serve_policy.logger.level
    serve_policy.logger.setLevel(logging.INFO)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.ExitStack() as stack:
            configs = {CONFIG_NAME: train_config, FAST_CONFIG_NAME: fast_config}
            patch.setattr(serve_policy._config, "get_config", configs.__getitem__)
            flags = {"plain": (), "pruned": ("--token-prune-keep-ratio", "0.1"), "guarded": ("--api-key", API_KEY)}
            flags = {name: ("--num-steps", "2", *f) for name, f in flags.items()}
            servers = {name: serve_policy.create_server(_serve_args(checkpoint, *f)) for name, f in flags.items()}
            servers["jax"] = serve_policy.create_server(
                _serve_args(jax_checkpoint, "--num-steps", "2", "--token-prune-keep-ratio", "0.1")
            )
            fast_args = _serve_args(fast_checkpoint, "--max-decoding-steps", "6", config_name=FAST_CONFIG_NAME)
            servers["fast"] = serve_policy.create_server(fast_args)
            ports = {name: stack.enter_context(server.running_in_background()) for name, server in servers.items()}
            plan = {
                "probe": PROBE,
                "connections": {
                    "plain": {"port": ports["plain"], "api_key": None, "requests": [good, bad_key, bad_shape, good]},
                    "pruned": {"port": ports["pruned"], "api_key": None, "requests": [good]},
                    "no_key": {"port": ports["guarded"], "api_key": None, "requests": []},
                    "with_key": {"port": ports["guarded"], "api_key": API_KEY, "requests": [good]},
                    "jax": {"port": ports["jax"], "api_key": None, "requests": [good, bad_key, good]},
                    "fast": {"port": ports["fast"], "api_key": None, "requests": [good, bad_key, good]},
                },
            }
            results = _run_published_client(plan, workdir)
    finally:
        torch.set_num_threads(previous_threads)
        serve_policy.logger.removeHandler(logs)
        serve_policy.logger.setLevel(previous_level)
    horizons = {"horizon": train_config.model.action_horizon, "fast_horizon": fast_config.model.action_horizon}
    return {"results": results, "logs": logs.messages, **horizons}


def test_codec_is_wire_compatible_both_ways(session):
    probe = session["results"]["probe"]
    assert probe.keys() == PROBE.keys()
    for key, expected in PROBE.items():
        assert type(probe[key]) is type(expected), key
        if isinstance(expected, np.ndarray):
            assert probe[key].dtype == expected.dtype and probe[key].shape == expected.shape
        np.testing.assert_array_equal(probe[key], expected)


def test_client_gets_metadata_and_action_chunks(session):
    plain = session["results"]["plain"]
    assert plain["metadata"]["config"] == CONFIG_NAME
    assert plain["metadata"]["action_horizon"] == session["horizon"]
    assert plain["metadata"]["token_prune_keep_ratio"] == get_config(CONFIG_NAME).model.token_prune_keep_ratio == 0.25
    first, last = plain["replies"][0]["reply"], plain["replies"][3]["reply"]
    for reply in (first, last):
        assert reply["actions"].shape == (session["horizon"], libero_policy.ACTION_DIM)
        assert reply["actions"].dtype == np.float32 and np.all(np.isfinite(reply["actions"]))
        assert reply["server_timing"]["infer_ms"] > 0
    assert "prev_total_ms" not in first["server_timing"]
    assert last["server_timing"]["prev_total_ms"] > 0


def test_bad_observations_raise_at_the_client_and_the_connection_recovers(session):
    replies = session["results"]["plain"]["replies"]
    assert "Error in inference server" in replies[1]["error"]
    assert "missing key 'observation/state'" in replies[1]["error"]
    assert "'state' must be a vector of 8 values" in replies[2]["error"]
    assert "reply" in replies[3]


def test_server_keeps_the_configured_budget_or_the_one_it_is_given(session):
    results = session["results"]
    patches_per_camera = get_config(CONFIG_NAME).model.vision_config.num_patches
    valid_image_tokens = 2 * patches_per_camera  # LIBERO: base and left wrist cameras present, right wrist absent
    configured = results["plain"]["replies"][0]["reply"]["token_pruning"]  # the config's 25%
    assert configured["kept_tokens_overall_mean"] == valid_image_tokens // 4
    assert results["pruned"]["metadata"]["token_prune_keep_ratio"] == 0.1
    stats = results["pruned"]["replies"][0]["reply"]["token_pruning"]
    assert stats["kept_tokens_overall_mean"] == math.ceil(0.1 * valid_image_tokens)
    assert stats["kept_ratio_overall_mean"] == pytest.approx(math.ceil(0.1 * valid_image_tokens) / valid_image_tokens)
    assert any("keep_ratio=0.1" in message for message in session["logs"])


def test_api_key_is_enforced_for_the_published_client(session):
    results = session["results"]
    assert "401" in results["no_key"]["connect_error"]
    reply = results["with_key"]["replies"][0]["reply"]
    assert reply["actions"].shape == (session["horizon"], libero_policy.ACTION_DIM)


def test_a_jax_checkpoint_serves_the_published_client(session):
    seen = session["results"]["jax"]
    assert seen["metadata"]["framework"] == "jax" and seen["metadata"]["token_prune_keep_ratio"] == 0.1
    good, bad, again = seen["replies"]
    assert good["reply"]["actions"].shape == (session["horizon"], libero_policy.ACTION_DIM)
    assert np.isfinite(good["reply"]["actions"]).all()
    assert "observation/state" in bad["error"]
    assert again["reply"]["actions"].shape == good["reply"]["actions"].shape  # the server kept serving
    assert good["reply"]["token_pruning"]["kept_ratio_overall_mean"] == pytest.approx(0.1, abs=0.01)


def test_a_pi0_fast_checkpoint_serves_the_published_client(session):
    seen = session["results"]["fast"]
    assert seen["metadata"]["pi0_fast"] is True and seen["metadata"]["config"] == FAST_CONFIG_NAME
    good, bad, again = seen["replies"]
    # Random weights never write "Action: ...": the reply says so and carries the zero normalised chunk, the middle of
    # the action range (q01 = 0.5 - 2, q99 = 0.5 + 2).
    assert bool(good["reply"][DECODING_FAILED_KEY]) is True
    middle = np.full((session["fast_horizon"], libero_policy.ACTION_DIM), 0.5)
    np.testing.assert_allclose(good["reply"]["actions"], middle, atol=1e-6)
    assert "observation/state" in bad["error"]
    np.testing.assert_array_equal(again["reply"]["actions"], good["reply"]["actions"])  # the server kept serving


def test_a_checkpoint_that_fails_verification_is_one_error_line(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint", get_config("debug_pi05"))
    checkpoint_integrity.write_manifest(checkpoint)
    weights_file = checkpoint / "model.safetensors"
    content = bytearray(weights_file.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 16] = b"\xff" * 16
    weights_file.write_bytes(bytes(content))
    script = Path(__file__).parents[2] / "scripts" / "serve_policy.py"
    argv = [sys.executable, str(script), "--pytorch-device", "cpu", "policy:checkpoint", "--policy.config"]
    done = subprocess.run([*argv, "debug_pi05", "--policy.dir", str(checkpoint)], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"error: Refusing to serve {checkpoint}: {weights_file} does not match its checksum. Restore the file, or pass "
        "--skip-verify to serve it anyway"
    )


def test_pi0_fast_decoding_flags_become_sample_settings():
    args = serve_policy.Args(max_decoding_steps=64, temperature=0.7)
    assert serve_policy.sample_settings(args) == {"max_decoding_steps": 64, "temperature": 0.7}
    assert serve_policy.sample_settings(serve_policy.Args(num_steps=5)) == {"num_steps": 5}
    with pytest.raises(ValueError, match="π0-FAST decodes eagerly"):
        serve_policy.with_compile(get_config("debug_pi0_fast"), "default")
