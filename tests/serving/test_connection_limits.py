"""What one client may cost the server: the inbox's limits, the throttle on clients that do not wait for their
replies, and the memory bound the limits give."""

from __future__ import annotations

import asyncio

import pytest

from openpi.serving.connection_limits import MIB, ConnectionInbox, PipeliningThrottle, ServerLimits


def test_the_inbox_refuses_frames_beyond_either_limit_and_frees_answered_ones():
    async def run() -> list:
        inbox = ConnectionInbox(ServerLimits(max_message_bytes=100, max_queued_frames=3, max_connection_bytes=250))
        outcomes = [inbox.admit(b"x" * 100), inbox.admit(b"y" * 100), inbox.admit(b"z" * 100)]
        first = await inbox.next()
        inbox.answered(first)
        outcomes += [inbox.admit(b"z" * 100), inbox.admit(b"w"), inbox.admit(b"v")]
        return [first, *outcomes, inbox.held_frames]

    first, *outcomes, held = asyncio.run(run())
    assert first == b"x" * 100 and held == 3
    assert outcomes == [
        None,
        None,
        "300 B of unanswered requests, limit 250 B",
        None,
        None,
        "4 unanswered requests, limit 3",
    ]


def test_a_closed_inbox_hands_out_what_it_holds_unless_discarded():
    async def run(discard: bool) -> list:
        inbox = ConnectionInbox(ServerLimits())
        inbox.admit(b"a")
        inbox.close(discard=discard)
        return [await inbox.next(), await inbox.next()]

    assert asyncio.run(run(discard=False)) == [b"a", None]
    assert asyncio.run(run(discard=True)) == [None, None]


def test_the_throttle_doubles_for_each_request_sent_early_and_forgives_three_that_waited():
    throttle = PipeliningThrottle()
    held = [1, 2, 1, 2, 2, 1, 1, 1, 2]  # frames the connection holds once each request arrives
    assert [throttle.pause_s(h) for h in held] == [0, 1.0, 0, 2.0, 4.0, 0, 0, 0, 1.0]


def test_the_memory_bound_counts_held_frames_frames_in_transit_and_preparation():
    limits = ServerLimits(max_connections=10, max_message_bytes=4 * MIB, max_connection_bytes=8 * MIB)
    assert limits.memory_bound_bytes() == 10 * (8 + 2 * 4) * MIB + 2 * 4 * 4 * MIB
    assert limits.memory_bound_bytes(connections=2, frame_bytes=MIB) == 2 * (4 + 2) * MIB + 2 * 4 * MIB
    with pytest.raises(ValueError, match="must hold at least one frame"):
        ServerLimits(max_message_bytes=4 * MIB, max_connection_bytes=MIB)
