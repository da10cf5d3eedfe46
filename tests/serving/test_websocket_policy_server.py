"""The websocket policy server: protocol, errors, health check, API key, limits, concurrency, recording and
shutdown."""

import concurrent.futures
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client

from openpi.serving import msgpack_numpy
from openpi.serving.connection_limits import ServerLimits
from openpi.serving.recorder import RequestRecorder, read_records
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from tests.helpers.serving import HORIZON, EchoPolicy, open_connection, round_trip, state_vector


@pytest.fixture
def echo_server():
    policy = EchoPolicy()
    with WebsocketPolicyServer(policy, "127.0.0.1", 0).running_in_background() as port:
        yield port, policy


def test_metadata_then_actions_with_server_timing(echo_server):
    port, _ = echo_server
    with open_connection(port) as (conn, metadata):
        assert metadata == {"action_horizon": HORIZON, "name": "echo"}
        first = round_trip(conn, {"state": state_vector(1.0)})
        second = round_trip(conn, {"state": state_vector(2.0)})
    np.testing.assert_array_equal(first["actions"], np.ones((HORIZON, 8), np.float32))
    assert set(first["server_timing"]) == {"infer_ms", "queue_ms", "batch_size"}
    assert second["server_timing"]["infer_ms"] >= 0
    assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (msgpack_numpy.packb({"image": np.zeros(3)}), "Invalid observation: missing key 'state'"),
        (msgpack_numpy.packb({"state": np.zeros(5, np.float32)}), "shape (8,), got float32 (5,)"),
        (msgpack_numpy.packb({"state": np.zeros(8, np.float64)}), "float32 of shape (8,), got float64"),
        (b"\xc1 definitely not msgpack", "Invalid request: Message is not valid msgpack"),
        (msgpack_numpy.packb([1, 2, 3]), "must be a msgpack map (dict), got list"),
        ("a text frame", "got a text frame"),
        (
            msgpack_numpy.packb({"state": state_vector(0), "explode": True}),
            "Inference failed: RuntimeError: model blew up",
        ),
    ],
)
def test_bad_request_gets_error_text_and_connection_stays_usable(echo_server, frame, message):
    port, _ = echo_server
    with open_connection(port) as (conn, _):
        conn.send(frame)
        reply = conn.recv(timeout=10)
        assert isinstance(reply, str)
        assert message in reply
        good = round_trip(conn, {"state": state_vector(3.0)})
    np.testing.assert_array_equal(good["actions"][0], state_vector(3.0))


def test_healthz_answers_ok(echo_server):
    port, _ = echo_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        assert response.status == 200
        assert response.read() == b"OK\n"


def test_api_key_is_required_when_configured():
    with WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0, api_key="s3cret").running_in_background() as port:
        twice = [("Authorization", "Api-Key s3cret"), ("Authorization", "Api-Key s3cret")]
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "Bearer s3cret"}, twice):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                websockets.sync.client.connect(f"ws://127.0.0.1:{port}", additional_headers=headers)
            assert refused.value.response.status_code == 401
        with open_connection(port, additional_headers={"Authorization": "Api-Key s3cret"}) as (conn, metadata):
            assert metadata["name"] == "echo"
            assert round_trip(conn, {"state": state_vector(1.0)})["actions"].shape == (HORIZON, 8)
        for path in ("/healthz", "/healthz?probe=1"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                assert response.status == 200


def test_frames_over_the_size_limit_close_the_connection():
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0, limits=ServerLimits(max_message_bytes=4096))
    with server.running_in_background() as port:
        with open_connection(port) as (conn, _):
            assert round_trip(conn, {"state": state_vector(1.0)})["actions"].shape == (HORIZON, 8)
            conn.send(msgpack_numpy.packb({"state": state_vector(1.0), "image": np.zeros(8192, np.uint8)}))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                conn.recv(timeout=10)
        assert closed.value.rcvd.code == 1009
        with open_connection(port) as (conn, _):
            assert round_trip(conn, {"state": state_vector(2.0)})["actions"].shape == (HORIZON, 8)


def test_concurrent_clients_get_their_own_replies_and_inference_is_serialised():
    policy = EchoPolicy(delay_s=0.002)
    num_clients, num_requests = 8, 10

    def client(client_id: int) -> list[bool]:
        with open_connection(port) as (conn, _):
            values = [client_id * 100 + i for i in range(num_requests)]
            return [bool(np.all(round_trip(conn, {"state": state_vector(v)})["actions"] == v)) for v in values]

    server = WebsocketPolicyServer(policy, "127.0.0.1", 0)
    with server.running_in_background() as port, concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        results = list(pool.map(client, range(num_clients)))
    assert all(all(r) and len(r) == num_requests for r in results)
    assert policy.max_active == 1


def test_a_stalled_client_does_not_block_others():
    with WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0).running_in_background() as port:
        stalled = socket.create_connection(("127.0.0.1", port))
        with stalled:
            handshake = (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            stalled.sendall(handshake.encode())
            # A masked binary frame header announcing 65536 bytes, followed by only a few of them.
            stalled.sendall(bytes([0x82, 0xFF]) + (65536).to_bytes(8, "big") + b"\x00\x00\x00\x00" + b"abc")
            with open_connection(port) as (conn, _):
                start = time.perf_counter()
                for i in range(5):
                    assert round_trip(conn, {"state": state_vector(i)})["actions"][0, 0] == i
                assert time.perf_counter() - start < 5.0


def test_recorder_saves_requests_replies_and_errors(tmp_path):
    recorder = RequestRecorder(tmp_path / "records")
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0, recorder=recorder)
    with server.running_in_background() as port, open_connection(port) as (conn, _):
        round_trip(conn, {"state": state_vector(1.0), "prompt": "stack the cups"})
        round_trip(conn, {"state": np.zeros(3, np.float32)})
        conn.send(b"\xc1junk")
        conn.recv(timeout=10)
        round_trip(conn, {"state": state_vector(2.0)})
    records = read_records(tmp_path / "records")
    assert [r.name for r in records] == ["0001-000000", "0001-000001", "0001-000002", "0001-000003"]
    assert records[0].request["prompt"] == "stack the cups"
    np.testing.assert_array_equal(records[0].reply["actions"], np.ones((HORIZON, 8), np.float32))
    assert records[0].error is None
    assert records[1].reply is None and "shape (8,)" in records[1].error
    assert records[2].request == b"\xc1junk" and "not valid msgpack" in records[2].error
    assert records[3].reply["actions"][0, 0] == 2.0


def test_closed_server_stops_listening():
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0)
    with server.running_in_background() as port:
        pass
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_serve_forever_stops_cleanly_on_sigterm():
    script = (
        "import logging, sys\n"
        "from openpi.serving.websocket_policy_server import WebsocketPolicyServer\n"
        "class Idle:\n"
        "    metadata = {}\n"
        "    def infer(self, obs):\n"
        "        return {}\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "WebsocketPolicyServer(Idle(), '127.0.0.1', 0).serve_forever()\n"
        "print('stopped', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = None
        for line in process.stdout:
            if line.startswith("Policy server listening on"):
                port = int(line.rsplit(":", 1)[1])
                break
        with open_connection(port) as (_, metadata):
            assert metadata == {}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stdout.read()
    finally:
        process.kill()


def test_recording_stops_at_its_size_cap(tmp_path, caplog):
    recorder = RequestRecorder(tmp_path, max_bytes=100)
    recorder.record(0, 0, b"x" * 40, "e" * 40)
    recorder.record(0, 1, b"x" * 40, "e" * 40)  # would exceed the cap
    recorder.record(0, 2, b"x" * 40, "e" * 40)
    assert [r.name for r in read_records(tmp_path)] == ["0000-000000"]
    assert caplog.text.count("Recording stopped") == 1


def test_healthz_answers_503_until_the_warm_up_has_run():
    release, calls = threading.Event(), []

    def warmup() -> None:
        release.wait(timeout=10)
        calls.append("warm")

    policy = EchoPolicy()
    server = WebsocketPolicyServer(policy, "127.0.0.1", 0, warmup=warmup)
    with server.running_in_background() as port:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert error.value.code == 503
        release.set()
        deadline = time.perf_counter() + 10
        while not server.ready and time.perf_counter() < deadline:
            time.sleep(0.01)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
        with open_connection(port) as (conn, _):
            assert round_trip(conn, {"state": state_vector(3.0)})["actions"][0, 0] == 3.0
    assert calls == ["warm"]


def _send_without_reading(port: int, frames: list[bytes]) -> websockets.exceptions.ConnectionClosed:
    """Sends ``frames`` without reading a reply (until the server closes the connection), then reads until it
    does."""
    with open_connection(port) as (conn, _), pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        for frame in frames:
            conn.send(frame)
        while True:
            conn.recv(timeout=30)
    return closed.value


@pytest.mark.parametrize(
    ("limits", "frame", "reason"),
    [
        (ServerLimits(max_queued_frames=1), {"state": state_vector(1)}, "2 unanswered requests, limit 1; read replies"),
        (
            ServerLimits(max_message_bytes=5000, max_connection_bytes=5000),
            {"state": state_vector(1), "pad": np.zeros(4000, np.uint8)},
            "8.1 KiB of unanswered requests, limit 4.9 KiB; read replies",
        ),
    ],
    ids=["frames", "bytes"],
)
def test_a_client_over_its_limits_is_disconnected_and_others_are_served(limits, frame, reason):
    policy = EchoPolicy(delay_s=0.2)
    with WebsocketPolicyServer(policy, "127.0.0.1", 0, limits=limits).running_in_background() as port:
        closed = _send_without_reading(port, [msgpack_numpy.packb(frame)] * 20)
        with open_connection(port) as (conn, _):
            assert round_trip(conn, {"state": state_vector(2.0)})["actions"][0, 0] == 2.0
    assert closed.rcvd.code == 1008 and closed.rcvd.reason == reason


def test_a_client_that_does_not_wait_for_its_replies_is_throttled_and_answered_in_order(caplog):
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0)
    with server.running_in_background() as port, open_connection(port) as (conn, _):
        for i in range(3):
            conn.send(msgpack_numpy.packb({"state": state_vector(i)}))
        replies = [msgpack_numpy.unpackb(conn.recv(timeout=30))["actions"][0, 0] for _ in range(3)]
    assert replies == [0.0, 1.0, 2.0]
    assert "Connection 1 sent a request before its previous reply; reading it again 1.00 s after" in caplog.text


def test_connections_beyond_the_limit_are_refused():
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0, limits=ServerLimits(max_connections=2))
    with server.running_in_background() as port, open_connection(port), open_connection(port):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            websockets.sync.client.connect(f"ws://127.0.0.1:{port}")
        assert refused.value.response.status_code == 503
        assert b"Too many connections (limit 2)" in refused.value.response.body


def test_a_frame_of_too_many_keys_is_refused_before_it_is_decoded():
    many = {"state": state_vector(1.0), **{f"k{i}": np.zeros(1, np.uint8) for i in range(5000)}}
    server = WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0)
    with server.running_in_background() as port, open_connection(port) as (conn, _):
        reply = round_trip(conn, many)
        assert round_trip(conn, {"state": state_vector(2.0)})["actions"][0, 0] == 2.0
    assert reply == "Invalid request: the message holds more than 1024 keys and list items (limit: --max-frame-keys)"


SLOW_SERVER = """
import logging, sys, time
from openpi.serving.websocket_policy_server import WebsocketPolicyServer

class SlowBatchingEcho:
    metadata = {}

    def infer(self, obs):
        return self.infer_prepared([self.prepare(obs)])[0]

    def prepare(self, obs):
        sys.stdout.write("prepared\\n")  # two preparing threads: one write per line
        sys.stdout.flush()
        return obs

    def infer_prepared(self, prepared):
        time.sleep(0.5)
        return [{"actions": obs["state"]} for obs in prepared]

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
WebsocketPolicyServer(SlowBatchingEcho(), "127.0.0.1", 0, max_batch=4, shutdown_timeout_s=30).serve_forever()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_shutdown_answers_the_requests_in_flight_then_exits_0(signum):
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(next(line for line in process.stdout if "listening on" in line).rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(open_connection(port))[0] for _ in range(6)]
            for i, conn in enumerate(clients):
                conn.send(msgpack_numpy.packb({"state": state_vector(i)}))
            prepared = 0
            for line in process.stdout:  # every request has been received and checked: all six are in flight
                prepared += line.count("prepared")
                if prepared == 6:
                    break
            process.send_signal(signum)
            for i, conn in enumerate(clients):
                assert msgpack_numpy.unpackb(conn.recv(timeout=30))["actions"][0] == i
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    conn.recv(timeout=30)
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        process.kill()
