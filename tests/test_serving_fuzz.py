"""A seeded fuzz run against a real policy behind a real server on loopback: bad frames of every kind get a named
error, never actions, and never cost the connection; valid requests interleaved with them all succeed."""

from __future__ import annotations

import re

import msgpack
import numpy as np
import pytest
import websockets.sync.client

from openpi.models import tokenizer
from openpi.policies import policy_config
from openpi.serving import msgpack_numpy
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.test_policy import SAMPLE_KWARGS, libero_observation, make_train_config, write_checkpoint

ROUNDS = 6  # frames of each kind


def _with(**changes):
    def make(rng: np.random.Generator) -> bytes:
        obs = libero_observation(int(rng.integers(1 << 30)))
        for key, value in changes.items():
            obs[key] = value(rng) if callable(value) else value
        return msgpack_numpy.packb(obs)

    return make


def _without(key: str):
    def make(rng: np.random.Generator) -> bytes:
        obs = libero_observation(int(rng.integers(1 << 30)))
        del obs[key]
        return msgpack_numpy.packb(obs)

    return make


def _raw(payload) -> callable:
    return lambda rng: msgpack.packb(payload, use_bin_type=True)


BAD_FRAMES = {
    "junk bytes": lambda rng: bytes(rng.integers(0, 256, int(rng.integers(1, 200))).tolist()),
    "0xc1": lambda rng: b"\xc1",
    "deep nesting": lambda rng: b"\x91" * 50_000 + b"\xc0",
    "junk map header": lambda rng: b"\xdf\x7f\xff\xff\xff" + b"\x80" * 4096,
    "not a map": _raw([1, 2, 3]),
    "scalar overflow": _raw({"observation/state": {b"__npgeneric__": True, b"data": 1000, b"dtype": "|u1"}}),
    "structured dtype": _raw({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "i4,)", b"shape": [0]}}),
    "NaN state": _with(**{"observation/state": np.full(8, np.nan, np.float32)}),
    "inf state": _with(**{"observation/state": np.full(8, np.inf, np.float32)}),
    "short state": _with(**{"observation/state": np.zeros(5, np.float32)}),
    "empty image": _with(**{"observation/image": np.zeros((0, 96, 3), np.uint8)}),
    "flat image": _with(**{"observation/image": np.zeros((96, 96), np.uint8)}),
    "int64 image": _with(**{"observation/image": np.full((32, 32, 3), 300, np.int64)}),
    "float image": _with(**{"observation/image": np.full((32, 32, 3), 7.0, np.float32)}),
    "prompt None": _with(prompt=None),
    "prompt int": _with(prompt=5),
    "prompt map": _with(prompt={"a": 1}),
    "prompt bytes": _with(prompt=b"\xff\xfe\xfa"),
    "missing state": _without("observation/state"),
    "missing image": _without("observation/wrist_image"),
}


@pytest.fixture(scope="module")
def server_port(tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("tok")
    tokenizer_path = tokenizer.train_sentencepiece(["pick up the black bowl"], tokenizer_dir / "tok", vocab_size=300)
    train_config = make_train_config(tokenizer_path)
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("ckpt"), train_config)
    policy = policy_config.create_trained_policy(
        train_config, checkpoint, sample_kwargs=SAMPLE_KWARGS, pytorch_device="cpu"
    )
    server = WebsocketPolicyServer(policy, host="127.0.0.1", port=0)
    with server.running_in_background() as port:
        yield port


def _names_the_problem(error: str) -> bool:
    """An error text names the frame (``Invalid request``) or a key / the prompt."""
    return error.startswith("Invalid request: ") or bool(re.search(r"'[^']+'", error))


def test_fuzzed_frames_get_named_errors_and_valid_ones_actions(server_port):
    rng = np.random.default_rng(0)
    frames = [(kind, make(rng)) for _ in range(ROUNDS) for kind, make in BAD_FRAMES.items()]
    order = rng.permutation(len(frames))
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server_port}", max_size=None) as connection:
        connection.recv()  # metadata
        unnamed, answered_bad, valid_ok = [], [], 0
        for i, index in enumerate(order):
            kind, frame = frames[index]
            connection.send(frame)
            reply = connection.recv()
            if not isinstance(reply, str):
                answered_bad.append(kind)
            elif not _names_the_problem(reply):
                unnamed.append((kind, reply))
            if i % 4 == 0:  # a valid request between the bad ones, on the same connection
                connection.send(msgpack_numpy.packb(libero_observation(i)))
                reply = connection.recv()
                valid_ok += isinstance(reply, bytes) and msgpack_numpy.unpackb(reply)["actions"].shape == (10, 7)
    assert answered_bad == [], "bad frames answered with actions"
    assert unnamed == [], "errors that name nothing"
    assert valid_ok == len(range(0, len(order), 4)), "every valid request interleaved with the fuzz succeeded"
