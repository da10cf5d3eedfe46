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
    """EchoPolicy that batches: ``prepare`` checks one observation, ``infer_prepared`` answers a batch; model calls
    block until ``release`` is set, so that requests queue."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()  # a model call has started
        self.batch_sizes: list[int] = []

    def prepare(self, obs: dict) -> dict:
        state = obs["state"]
        if state.shape != (8,) or state.dtype != np.float32:
            raise ValueError(f"'state' must be float32 of shape (8,), got {state.dtype} {state.shape}")
        return obs

    def infer_prepared(self, prepared: list[dict]) -> list[dict]:
        self.entered.set()
        self.release.wait(timeout=10)
        self.batch_sizes.append(len(prepared))
        return [EchoPolicy.infer(self, obs) for obs in prepared]


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


def test_a_bad_request_fails_alone_and_the_rest_stay_batched():
    policy = BatchingEchoPolicy()
    policy.release.set()
    observations = [{"state": state_vector(i)} for i in range(5)]
    observations[2] = {"state": np.zeros(3, np.float32)}
    server = WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8)
    with server.running_in_background() as port, open_connection(port) as (first, _):
        policy.release.clear()  # the model is busy with the first request while the others arrive
        first.send(msgpack_numpy.packb({"state": state_vector(9)}))
        assert policy.entered.wait(timeout=30)
        replies = _concurrent_requests(port, observations, policy.release)
        assert first.recv(timeout=30)
    assert isinstance(replies[2], str) and "must be float32 of shape (8,)" in replies[2]
    for i in (0, 1, 3, 4):
        assert np.all(replies[i]["actions"] == i) and replies[i]["server_timing"]["batch_size"] == 4
    # The bad request never reached the model: one call for the first request, one batch of the four good ones.
    assert policy.batch_sizes == [1, 4]


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
    """A real policy whose sampling noise is a function of the observation, so serial and batched runs compare; model
    calls wait for ``release``."""

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

    def prepare(self, obs: dict) -> tuple:
        return self.policy.prepare(obs), self._noise(obs)

    def infer_prepared(self, prepared: list[tuple]) -> list[dict]:
        self.release.wait(timeout=10)
        samples, noise = zip(*prepared, strict=True)
        return self.policy.infer_prepared(samples, noise=np.stack(noise))


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


def test_a_real_policy_serves_the_good_requests_in_one_batch_around_a_bad_one(tmp_path, monkeypatch):
    config = make_train_config(tokenizer.train_sentencepiece(PROMPTS, tmp_path / "tok", vocab_size=300))
    policy = policy_config.create_trained_policy(
        config, write_checkpoint(tmp_path / "ckpt", config), sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    release, entered, model_calls = threading.Event(), threading.Event(), []
    sample = policy.model.sample_actions

    def blocking_sample(observation, **kwargs):
        entered.set()
        release.wait(timeout=30)
        model_calls.append(len(observation.state))
        return sample(observation, **kwargs)

    monkeypatch.setattr(policy.model, "sample_actions", blocking_sample)
    observations = [libero_observation(i) for i in range(5)]
    observations[1]["observation/state"] = np.zeros(5, np.float32)
    server = WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=8)
    with server.running_in_background() as port, open_connection(port) as (first, _):
        first.send(msgpack_numpy.packb(libero_observation(9)))  # holds the model while the others queue
        assert entered.wait(timeout=30)
        replies = _concurrent_requests(port, observations, release)
        assert isinstance(first.recv(timeout=30), bytes)
    assert isinstance(replies[1], str) and "'state' must be a vector of 8 values" in replies[1]
    assert all(replies[i]["server_timing"]["batch_size"] == 4 for i in (0, 2, 3, 4))
    assert model_calls == [1, 4]
