"""The serving load test (openpi.serving.load_test, run by scripts/bench/bench_serving.py): accounting of replies,
latency and overhead, and the servers it compares (openpi.cli.random_policies)."""

import numpy as np
import pytest

from openpi.cli.random_policies import ServerSetting, model_policy
from openpi.serving import load_test
from openpi.serving.websocket_policy_server import WebsocketPolicyServer


class MixUpPolicy(load_test.SyntheticPolicy):
    """Answers every third request with another request's id, as a server mixing up replies would."""

    def __init__(self) -> None:
        super().__init__(infer_ms=0.0)
        self.calls = 0

    def infer(self, obs: dict) -> dict:
        self.calls += 1
        result = super().infer(obs)
        if self.calls % 3 == 0:
            result["actions"] = result["actions"] + 1
        return result


def test_concurrent_load_completes_every_request_with_timings():
    with WebsocketPolicyServer(load_test.SyntheticPolicy(infer_ms=2.0), "127.0.0.1", 0).running_in_background() as port:
        result = load_test.run_load(port, num_clients=4, num_requests=5)
    assert result.errors == ()
    assert result.completed == result.expected == 20
    assert np.all(result.infer_ms >= 2.0)
    assert np.all(result.latency_ms >= result.infer_ms + result.queue_ms)
    assert np.all(result.overhead_ms >= 0)
    row = load_test.markdown_row("max_batch 1", 4, 5, result)
    assert row.startswith("| max_batch 1 | 4 | 5 | 20/20 |")
    assert row.count("|") == load_test.MARKDOWN_HEADER.splitlines()[0].count("|")


def test_mixed_up_replies_are_counted_as_errors():
    with WebsocketPolicyServer(MixUpPolicy(), "127.0.0.1", 0).running_in_background() as port:
        result = load_test.run_load(port, num_clients=1, num_requests=6)
    assert result.completed == 4
    assert len(result.errors) == 2 and "another request's reply" in result.errors[0]


def test_load_is_bounded():
    with pytest.raises(ValueError, match="clients"):
        load_test.run_load(1, num_clients=load_test.MAX_CLIENTS + 1, num_requests=1)


def test_server_settings_parse_and_unknown_ones_are_refused():
    setting = ServerSetting.parse("b16+p0.25+untrimmed+compiled")
    assert setting == ServerSetting(max_batch=16, keep_ratio=0.25, trim=False, compiled=True)
    assert ServerSetting.parse("b1") == ServerSetting()
    with pytest.raises(ValueError, match="'fast'"):
        ServerSetting.parse("b16+fast")


def test_a_real_tiny_model_serves_concurrent_clients_in_batches(tmp_path):
    policy = model_policy("tiny", ServerSetting(max_batch=4, keep_ratio=0.25), tmp_path)
    with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=4).running_in_background() as port:
        result = load_test.run_load(port, num_clients=4, num_requests=3, check_ids=False)
    assert result.errors == () and result.completed == 12
    assert np.all((result.batch_size >= 1) & (result.batch_size <= 4))
