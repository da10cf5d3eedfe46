"""A seeded fuzz run (``openpi.serving.fuzz``, small) against a real policy behind a real server on loopback:
bad frames of every kind get a named error, never actions, and never cost the connection; valid requests interleaved
with them all succeed; malformed handshakes get their status; clients that send without reading are throttled while
a client that reads is served."""

from __future__ import annotations

import pytest

from openpi.cli.random_policies import serve_tiny_policy
from openpi.serving import fuzz
from openpi.serving.connection_limits import MIB, ServerLimits

API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def server_port(tmp_path_factory):
    limits = ServerLimits(max_message_bytes=32 * MIB, max_connection_bytes=32 * MIB)
    server = serve_tiny_policy(tmp_path_factory.mktemp("fuzz"), limits=limits, max_batch=4, api_key=API_KEY)
    with server.running_in_background() as port:
        yield port


def test_fuzzed_frames_get_named_errors_and_valid_ones_actions(server_port):
    counts = fuzz.merge([fuzz.fuzz_connection(server_port, rounds=3, seed=seed, api_key=API_KEY) for seed in (0, 1)])
    assert set(counts) == {fuzz.VALID, *fuzz.BAD_FRAMES}
    for kind, c in counts.items():
        assert (c.frames, c.dropped, c.wrong_answers, c.unnamed_errors) == (6, 0, 0, 0), kind


def test_malformed_handshakes_get_their_status(server_port):
    for kind, c in fuzz.handshake_fuzz(server_port, rounds=2, api_key=API_KEY).items():
        assert (c.frames, c.wrong_answers) == (2, 0), kind


def test_clients_that_do_not_read_are_throttled_and_a_reading_client_is_served(server_port, caplog):
    seen = fuzz.slow_reader_probe(server_port, readers=2, frame_mb=12, requests=4, api_key=API_KEY)
    assert len(seen.loaded) == 2 and seen.frames_sent >= 2 and seen.close_reasons == []
    assert "sent a request before its previous reply" in caplog.text
