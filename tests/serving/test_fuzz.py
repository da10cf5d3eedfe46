"""A seeded fuzz run (``openpi.serving.fuzz``, small) against a real policy behind a real server on loopback:
bad frames of every kind get a named error, never actions, and never cost the connection; valid requests interleaved
with them all succeed; a 16 MiB junk frame on one connection does not stall another."""

from __future__ import annotations

import pytest

from openpi.cli.random_policies import serve_tiny_policy
from openpi.serving import fuzz


@pytest.fixture(scope="module")
def server_port(tmp_path_factory):
    with serve_tiny_policy(tmp_path_factory.mktemp("fuzz")).running_in_background() as port:
        yield port


def test_fuzzed_frames_get_named_errors_and_valid_ones_actions(server_port):
    counts = [fuzz.fuzz_connection(server_port, frames=160, valid_every=4, seed=seed) for seed in (0, 1)]
    for c in counts:
        assert (c.dropped, c.answered_with_actions, c.unnamed_errors, c.valid_failed) == (0, 0, 0, 0), c
        assert c.frames == 160 and c.valid_sent == 40  # 120 bad frames: every kind six times


def test_a_junk_frame_does_not_stall_other_clients(server_port):
    quiet, loaded = fuzz.stall_probe(server_port, requests=5)
    assert loaded < quiet + 1000, "the 16 MiB junk frame is refused without holding the event loop for seconds"
