"""Sends random observations to a policy server and prints latency statistics.

Runs in its own environment with the published client (it needs numpy<2, so it does not share openpi's env):

    uv run --no-project --with openpi-client --with tyro examples/simple_client/main.py --env LIBERO --num-steps 20
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import urllib.error
import urllib.request

import numpy as np
import tyro
from openpi_client import websocket_client_policy


class EnvMode(enum.Enum):
    """Which robot's observation format to send."""

    LIBERO = "libero"
    DROID = "droid"
    ALOHA = "aloha"
    ALOHA_SIM = "aloha_sim"


ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
ALOHA_SIM_CAMERAS = ("cam_high",)


@dataclasses.dataclass
class Args:
    host: str = "127.0.0.1"
    """Address of the policy server (scripts/serve_policy.py)."""
    port: int = 8000
    """Port of the policy server."""
    api_key: str | None = None
    """Sent as `Authorization: Api-Key <key>` when the server requires one."""
    wait_s: float = 300.0
    """Wait this long for the server's /healthz to answer 200 (it loads and warms up the model first)."""
    env: EnvMode = EnvMode.LIBERO
    """Which observation format to send."""
    num_steps: int = 20
    """Requests to time."""
    num_warmup: int = 2
    """Untimed requests sent first."""
    prompt: str = "pick up the red block"
    seed: int = 0


def random_observation(env: EnvMode, prompt: str, rng: np.random.Generator) -> dict:
    """A random observation in the format the server's policy for ``env`` expects."""

    def image(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, shape, dtype=np.uint8)

    if env is EnvMode.LIBERO:
        return {
            "observation/image": image(224, 224, 3),
            "observation/wrist_image": image(224, 224, 3),
            "observation/state": rng.random(8, dtype=np.float32),
            "prompt": prompt,
        }
    if env is EnvMode.DROID:
        return {
            "observation/exterior_image_1_left": image(224, 224, 3),
            "observation/wrist_image_left": image(224, 224, 3),
            "observation/joint_position": rng.random(7, dtype=np.float32),
            "observation/gripper_position": rng.random(1, dtype=np.float32),
            "prompt": prompt,
        }
    cameras = ALOHA_SIM_CAMERAS if env is EnvMode.ALOHA_SIM else ALOHA_CAMERAS
    return {
        "state": rng.random(14, dtype=np.float32),
        "images": {name: image(3, 224, 224) for name in cameras},
        "prompt": prompt,
    }


def summarize(name: str, values_ms: list[float]) -> str:
    """One table row: mean, std, p50, p90, p99, min and max in milliseconds."""
    if not values_ms:
        return f"{name:<22} (no samples)"
    v = np.asarray(values_ms)
    stats = [v.mean(), v.std(), *np.percentile(v, [50, 90, 99]), v.min(), v.max()]
    return f"{name:<22}" + "".join(f"{s:>9.1f}" for s in stats)


def wait_for_server(host: str, port: int, timeout_s: float) -> None:
    """Polls ``http://host:port/healthz`` until it answers 200; the websocket refuses connections until then."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet (refused) or still warming up (503)
        if time.monotonic() > deadline:
            raise SystemExit(f"error: no policy server ready at {host}:{port} after {timeout_s:.0f} s (--wait-s)")
        logging.info("Waiting for the server at %s:%d (/healthz) ...", host, port)
        time.sleep(2.0)


def main(args: Args) -> None:
    rng = np.random.default_rng(args.seed)
    wait_for_server(args.host, args.port, args.wait_s)
    policy = websocket_client_policy.WebsocketClientPolicy(args.host, args.port, api_key=args.api_key)
    logging.info("Server metadata: %s", policy.get_server_metadata())

    for _ in range(args.num_warmup):
        policy.infer(random_observation(args.env, args.prompt, rng))

    client_ms, infer_ms, overhead_ms = [], [], []
    for _ in range(args.num_steps):
        obs = random_observation(args.env, args.prompt, rng)
        start = time.perf_counter()
        result = policy.infer(obs)
        elapsed = (time.perf_counter() - start) * 1000.0
        if not client_ms:
            logging.info("Actions shape: %s", result["actions"].shape)
        server_infer = result["server_timing"]["infer_ms"]
        client_ms.append(elapsed)
        infer_ms.append(server_infer)
        overhead_ms.append(elapsed - server_infer)

    header = f"{'latency (ms)':<22}" + "".join(f"{h:>9}" for h in ("mean", "std", "p50", "p90", "p99", "min", "max"))
    rows = [
        summarize("client round trip", client_ms),
        summarize("server infer_ms", infer_ms),
        summarize("overhead (trip-infer)", overhead_ms),
    ]
    print("\n".join([header, *rows]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(tyro.cli(Args))
