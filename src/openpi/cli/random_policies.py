"""Random-weight π0.5 policies behind the LIBERO pipeline, loaded from a checkpoint folder as a trained one is: what
the serving load test (``scripts/bench/bench_serving.py``) and the protocol fuzzer (``scripts/bench/fuzz_server.py``)
serve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from openpi.cli import serve_policy
from openpi.envs import shapes_dataset
from openpi.models import pi0_config, tokenizer
from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import libero_policy, policy_config
from openpi.policies.policy import Policy
from openpi.serving.connection_limits import ServerLimits
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.shared import normalize
from openpi.training import config as _config

ASSET_ID = "physical-intelligence/libero"


@dataclasses.dataclass(frozen=True)
class ServerSetting:
    """One server of the load test, spelled as settings joined with ``+`` (e.g. ``b16+p0.25+untrimmed+compiled``):
    ``bN`` batches up to N requests per call (``b1``: off), ``pR`` prunes to the fraction R of the image patches,
    ``untrimmed`` runs the prompt's padding through the model, ``compiled`` wraps ``sample_actions`` in
    ``torch.compile`` with the serving buckets (kept count in 16s, batch in powers of two)."""

    max_batch: int = 1
    keep_ratio: float | None = None
    trim: bool = True
    compiled: bool = False

    @classmethod
    def parse(cls, spec: str) -> ServerSetting:
        fields: dict = {}
        for part in spec.split("+"):
            if part[:1] == "b" and part[1:].isdigit():
                fields["max_batch"] = int(part[1:])
            elif part[:1] == "p" and _is_float(part[1:]):
                fields["keep_ratio"] = float(part[1:])
            elif part in ("untrimmed", "compiled"):
                fields["trim" if part == "untrimmed" else "compiled"] = part == "compiled"
            else:
                raise ValueError(f"Unknown server setting {part!r} in {spec!r}: use bN, pR, untrimmed, compiled")
        return cls(**fields)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def model_policy(size: str, setting: ServerSetting, workdir: Path) -> Policy:
    """A real π0.5 of ``size`` (``tiny`` or ``mid``; random weights, seeded) behind the LIBERO pipeline, written to
    and loaded from ``workdir``, set up as ``setting`` says (pruning, prompt trimming, compilation with the serving
    buckets)."""
    make = {"tiny": pi0_config.tiny_config, "mid": pi0_config.mid_config}[size]
    ratio = setting.keep_ratio
    pruning = {"token_pruning_enabled": True, "token_prune_keep_ratio": ratio} if ratio else {}
    model = make(action_horizon=10, prompt_trim_multiple=16 if setting.trim else None, **pruning)
    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(shapes_dataset.prepare_tokenizer()))
    train_config = dataclasses.replace(_config.get_config("pi05_libero_pytorch"), model=model, data=data)
    torch.manual_seed(0)
    weights.save_weights(PI0Pytorch(model), workdir)
    if setting.compiled:
        serve_args = serve_policy.Args(compile_mode="default", max_batch=setting.max_batch)
        train_config = serve_policy.with_compile(train_config, serve_args.compile_mode)
        buckets = serve_policy.batch_buckets(serve_args)
    else:
        buckets = None
    stats = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    actions = normalize.NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7))
    normalize.save(workdir / "assets" / data.repo_id, {"state": stats, "actions": actions})
    return policy_config.create_trained_policy(train_config, workdir, pytorch_device="cpu", batch_buckets=buckets)


def serve_tiny_policy(
    workdir: Path, *, limits: ServerLimits | None = None, max_batch: int = 1, api_key: str | None = None
) -> WebsocketPolicyServer:
    """A random-weight ``debug_pi05`` (written to ``workdir``) behind a server on a free loopback port (not yet
    started), with ``limits`` (default: 32 MiB frames), batches of up to ``max_batch`` and ``api_key``."""
    tokenizer_path = tokenizer.train_sentencepiece(["pick up the black bowl"], workdir / "tok", vocab_size=300)
    config = dataclasses.replace(
        _config.get_config("debug_pi05"), data=libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(tokenizer_path))
    )
    checkpoint = workdir / "checkpoint"
    weights.save_weights(PI0Pytorch(config.model), checkpoint)
    identity = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    normalize.save(checkpoint / "assets" / ASSET_ID, {"state": identity, "actions": identity})
    policy = policy_config.create_trained_policy(
        config, checkpoint, sample_kwargs={"num_steps": 2}, pytorch_device="cpu"
    )
    limits = limits or ServerLimits(max_message_bytes=32 * 2**20)
    return WebsocketPolicyServer(policy, host="127.0.0.1", port=0, limits=limits, max_batch=max_batch, api_key=api_key)
