"""PyTorch FSDP2 (``--fsdp-devices``) on two gloo CPU processes: the same loss trajectory, weights and EMA of the
weights as DDP, a run cut off mid-way resumes from the shards every rank wrote, and the checkpoint's gathered weights
load into a plain model."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from openpi.models_pytorch import weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared.checkpoint_files import RAW_WEIGHTS_FILE, TRAIN_STATE_DIR, WEIGHTS_FILE
from openpi.training import checkpoints, optimizer, trainer
from tests.helpers.training import Crash, crash_after, free_port, pruned_fake_data_config

WORLD = 2


def _worker(rank: int, port: int, config, out_dir: str, crash_at: int | None) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        if crash_at is not None:
            crash_after(crash_at, patch)
        try:
            result = trainer.train(config)
        except Crash:
            return
    if rank == 0:
        parameters = list(result.model.parameters())
        record = {
            "losses": [h["loss"] for h in result.history],
            "sharded": all(isinstance(p, DTensor) for p in parameters),
            "local_fraction": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in parameters)
            / sum(p.numel() for p in parameters),
        }
        (Path(out_dir) / f"{config.exp_name}.json").write_text(json.dumps(record))


def _run(config, tmp_path: Path, crash_at: int | None = None) -> None:
    mp.spawn(_worker, args=(free_port(), config, str(tmp_path), crash_at), nprocs=WORLD, join=True)


def test_fsdp_matches_ddp_and_resumes_from_its_checkpoint(tmp_path: Path):
    schedule = optimizer.CosineDecaySchedule(warmup_steps=0, peak_lr=1e-3, decay_steps=4, decay_lr=1e-4)
    config = pruned_fake_data_config(
        tmp_path, batch_size=4, num_train_steps=4, save_interval=2, keep_period=2, ema_decay=0.5, lr_schedule=schedule
    )
    _run(dataclasses.replace(config, exp_name="ddp"), tmp_path)
    sharded = dataclasses.replace(config, exp_name="fsdp", fsdp_devices=2)
    _run(sharded, tmp_path, crash_at=3)  # checkpoint 2 is written, then the data "dies" during step 3
    assert checkpoints.complete_steps(sharded.checkpoint_dir) == [2]
    _run(dataclasses.replace(sharded, resume=True), tmp_path)
    assert checkpoints.complete_steps(sharded.checkpoint_dir) == [2, 4]
    shards = sorted(path.name for path in (sharded.checkpoint_dir / "4" / TRAIN_STATE_DIR).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], "each rank writes its own shards"
    assert not (sharded.checkpoint_dir / "4" / checkpoints.OPTIMIZER_FILENAME).exists()

    ddp_run, fsdp_run = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("ddp", "fsdp"))
    assert fsdp_run["losses"] == pytest.approx(ddp_run["losses"][2:], rel=1e-4)  # the resumed run logged steps 2, 3
    assert fsdp_run["sharded"] and fsdp_run["local_fraction"] < 0.6  # each rank holds about half the parameters
    assert not ddp_run["sharded"] and ddp_run["local_fraction"] == 1.0
    # The gathered checkpoint is a plain one: it loads into an unsharded model, with DDP's weights and DDP's average
    # (the average continued across the resume from the saved one, sharded on each rank).
    states = {}
    for filename in (RAW_WEIGHTS_FILE, WEIGHTS_FILE):
        for name, directory in (("ddp", config.checkpoint_dir.parent / "ddp"), ("fsdp", sharded.checkpoint_dir)):
            model = PI0Pytorch(dataclasses.replace(config.model, dtype="float32"))
            weights.load_weights(model, directory / "4", filename)
            states[name, filename] = model.state_dict()
        for key, value in states["ddp", filename].items():
            torch.testing.assert_close(states["fsdp", filename][key], value, rtol=1e-4, atol=1e-6, msg=key)
    average, raw = states["ddp", WEIGHTS_FILE], states["ddp", RAW_WEIGHTS_FILE]
    moved = [key for key in raw if raw[key].is_floating_point() and (average[key] - raw[key]).abs().max() > 1e-4]
    assert len(moved) > len(raw) // 2, "the average must differ from the weights by more than the tolerance"


def test_fsdp_needs_torchrun(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, fsdp_devices=2)
    with pytest.raises(ValueError, match="torchrun"):
        trainer.train(config)
