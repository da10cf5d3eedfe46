"""Dynamic batching in the policy server: requests queued behind a busy model run in one call, every client gets its
own reply (equal to a serial server's), and a bad request in a batch fails alone."""

import concurrent.futures
import threading
import time

import numpy as np
import pytest
import torch

from openpi.models import tokenizer
from openpi.policies import policy_config
from openpi.serving import msgpack_numpy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers.policies import PROMPTS, SAMPLE_KWARGS, libero_observation, make_train_config, write_checkpoint
from tests.helpers.serving import EchoPolicy, open_connection, round_trip, state_vector


class BatchingEchoPolicy(EchoPolicy):
    """EchoPolicy with ``infer_many``; the first call blocks until ``release`` is set, so that requests queue."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def infer(self, obs: dict) -> dict:
        self.release.wait(timeout=10)
        self.batch_sizes.append(1)
        return super().infer(obs)

    def infer_many(self, observations: list[dict]) -> list[dict]:
        self.release.wait(timeout=10)
        replies = [EchoPolicy.infer(self, obs) for obs in observations]  # raises for a bad one, like a real batch
        self.batch_sizes.append(len(observations))
        return replies


def _concurrent_requests(port: int, observations: list[dict], release: threading.Event) -> list[dict | str]:
    """Sends each observation from its own client at once; releases the model once every client has sent (and the
    server has had a moment to read them), so that they queue behind the blocked first call even on a loaded machine."""
    sent = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(observations)) as pool:

        def client(obs: dict) -> dict | str:
            with open_connection(port) as (conn, _):
                conn.send(msgpack_numpy.packb(obs))
                sent.release()
                reply = conn.recv(timeout=30)
                return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)

        futures = [pool.submit(client, obs) for obs in observations]
        for _ in observations:
            assert sent.acquire(timeout=30), "a client could not send"
        time.sleep(0.5)
        release.set()
        return [f.result(timeout=30) for f in futures]


def test_queued_requests_run_as_one_batch_and_each_client_gets_its_own_reply():
    policy = BatchingEchoPolicy()
    observations = [{"state": state_vector(i)} for i in range(6)]
    with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8).running_in_background() as port:
        replies = _concurrent_requests(port, observations, policy.release)
    for i, reply in enumerate(replies):
        assert np.all(reply["actions"] == i)
    # The model is blocked until every client has sent: one call holds what was queued when it started, one the rest
    # (a serial server would make 6 calls).
    assert sum(policy.batch_sizes) == 6 and len(policy.batch_sizes) <= 2, policy.batch_sizes
    assert max(r["server_timing"]["batch_size"] for r in replies) == max(policy.batch_sizes)
    assert policy.max_active == 1


def test_a_bad_request_in_a_batch_fails_alone():
    policy = BatchingEchoPolicy()
    observations = [{"state": state_vector(i)} for i in range(5)]
    observations[2] = {"state": np.zeros(3, np.float32)}
    with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8).running_in_background() as port:
        replies = _concurrent_requests(port, observations, policy.release)
    assert isinstance(replies[2], str) and "must be float32 of shape (8,)" in replies[2]
    for i in (0, 1, 3, 4):
        assert np.all(replies[i]["actions"] == i)


def test_max_batch_bounds_the_batch_and_one_is_no_batching():
    for max_batch, largest in ((3, 3), (1, 1)):
        policy = BatchingEchoPolicy()
        observations = [{"state": state_vector(i)} for i in range(7)]
        with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=max_batch).running_in_background() as port:
            replies = _concurrent_requests(port, observations, policy.release)
        assert all(np.all(r["actions"] == i) for i, r in enumerate(replies))
        assert max(policy.batch_sizes) == largest


def test_a_lone_client_is_not_delayed_by_the_window():
    policy = BatchingEchoPolicy()
    policy.release.set()
    server = WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8)
    with server.running_in_background() as port, open_connection(port) as (conn, _):
        replies = [round_trip(conn, {"state": state_vector(i)}) for i in range(3)]
    assert [r["server_timing"]["batch_size"] for r in replies] == [1, 1, 1]


class SeededNoisePolicy:
    """A real policy whose sampling noise is a function of the observation, so serial and batched runs compare; calls
    wait for ``release``."""

    def __init__(self, policy) -> None:
        self.policy, self.metadata = policy, policy.metadata
        model = policy.model.config
        self.noise_shape = (model.action_horizon, model.action_dim)
        self.release = threading.Event()
        self.release.set()

    def _noise(self, obs: dict) -> np.ndarray:
        seed = int(np.asarray(obs["observation/state"]).view(np.uint32).sum()) % 2**31
        return np.random.default_rng(seed).standard_normal(self.noise_shape).astype(np.float32)

    def infer(self, obs: dict) -> dict:
        self.release.wait(timeout=10)
        return self.policy.infer(obs, noise=self._noise(obs))

    def infer_many(self, observations: list[dict]) -> list[dict]:
        self.release.wait(timeout=10)
        return self.policy.infer_many(observations, noise=np.stack([self._noise(o) for o in observations]))


@pytest.mark.parametrize("config_name", ["debug_pi05", "debug_pi05_lightvla"])
def test_batched_replies_equal_a_serial_servers(tmp_path, config_name):
    config = make_train_config(tokenizer.train_sentencepiece(PROMPTS, tmp_path / "tok", vocab_size=300), config_name)
    trained = policy_config.create_trained_policy(
        config, write_checkpoint(tmp_path / "ckpt", config), sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    policy = SeededNoisePolicy(trained)
    observations = [libero_observation(i, PROMPTS[i % len(PROMPTS)]) for i in range(5)]  # prompts of 3 lengths
    serial = [policy.infer(obs)["actions"] for obs in observations]
    policy.release.clear()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8).running_in_background() as port:
            replies = _concurrent_requests(port, observations, policy.release)
    finally:
        torch.set_num_threads(previous)
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1
    assert all(r["server_timing"]["prefix_ms"] > 0 and r["server_timing"]["denoise_ms"] > 0 for r in replies)
    for reply, expected in zip(replies, serial, strict=True):
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)
