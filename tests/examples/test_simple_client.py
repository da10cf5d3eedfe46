"""examples/simple_client/main.py, run as documented in its own environment, against a server on loopback."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers import REPO_ROOT
from tests.helpers.training import free_port

HORIZON = 10


class LiberoShapePolicy:
    """Checks the LIBERO observation format the simple client sends and answers a zero action chunk."""

    def __init__(self) -> None:
        self.metadata = {"policy": "libero-shape-check"}
        self.requests = 0

    def infer(self, obs: dict) -> dict:
        for key in ("observation/image", "observation/wrist_image"):
            if obs[key].shape != (224, 224, 3) or obs[key].dtype != np.uint8:
                raise ValueError(f"{key} must be uint8 (224, 224, 3), got {obs[key].dtype} {obs[key].shape}")
        if obs["observation/state"].shape != (8,) or not isinstance(obs["prompt"], str):
            raise ValueError("bad state or prompt")
        self.requests += 1
        return {"actions": np.zeros((HORIZON, 7), np.float32)}


def test_simple_client_prints_latency_statistics(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to run the example in its own environment")
    policy = LiberoShapePolicy()
    with WebsocketPolicyServer(policy, "127.0.0.1", 0).running_in_background() as port:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        command = ["uv", "run", "--no-project", "--with", "openpi-client", "--with", "tyro"]
        command += [str(REPO_ROOT / "examples" / "simple_client" / "main.py"), "--port", str(port)]
        command += ["--env", "LIBERO", "--num-steps", "5", "--num-warmup", "1"]
        completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr
    assert policy.requests == 6
    lines = completed.stdout.splitlines()
    assert lines[0].split()[:3] == ["latency", "(ms)", "mean"]
    assert [line.split()[0] for line in lines[1:]] == ["client", "server", "overhead"]
    assert "Actions shape: (10, 7)" in completed.stderr


def test_simple_client_started_before_the_server_waits_for_it(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to run the example in its own environment")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    command = ["uv", "run", "--no-project", "--with", "openpi-client", "--with", "tyro"]
    command += [str(REPO_ROOT / "examples" / "simple_client" / "main.py"), "--port", str(port), "--wait-s", "200"]
    command += ["--env", "LIBERO", "--num-steps", "1", "--num-warmup", "0"]
    client = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting = ""
        while "Waiting for the server" not in waiting and client.poll() is None:
            waiting += client.stderr.readline()  # the client has found no server and polls /healthz
        policy = LiberoShapePolicy()
        with WebsocketPolicyServer(policy, "127.0.0.1", port).running_in_background():
            _, stderr = client.communicate(timeout=240)
    finally:
        client.kill()
    assert client.returncode == 0, waiting + stderr
    assert policy.requests == 1
