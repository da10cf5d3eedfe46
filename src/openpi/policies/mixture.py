"""A weighted mixture of datasets: several data configs trained as one, each with its own pipeline.

Every member keeps its own repack, robot mapping and default prompt (its own :class:`DataConfigFactory`). Its
samples are normalised with its own norm stats (``shared_norm_stats=False``) or with one set computed over every
member's frames (``shared_norm_stats=True``, in ``assets/<config>/<asset_id>/``). The training loader draws each
sample's dataset by weight (``openpi.training.data_loader``). The mixture serves as its first member: that member's
robot mapping, default prompt and (unless shared) norm stats.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from openpi.models import pi0_config
from openpi.policies.data_config import DataConfig, DataConfigFactory, DataMember, load_norm_stats_if_present


@dataclasses.dataclass(frozen=True)
class MixtureMember:
    """One dataset of a mixture: a name (the ``<name>`` of ``train/loss/<name>``), its data config and its weight."""

    name: str
    """The dataset's name in the logs (train/loss/<name>, val/loss/<name>) and in refusals."""
    data: DataConfigFactory
    """The dataset and its pipeline (its repacking, robot mapping and default prompt)."""
    weight: float = 1.0
    """Relative sampling weight (the mixture draws each sample's dataset with probability weight / sum of weights)."""


@dataclasses.dataclass(frozen=True)
class MixtureDataConfig(DataConfigFactory):
    """Several datasets drawn by weight; ``tokenizer_path``, when set, applies to every member (one model, one
    tokenizer). ``assets.asset_id`` names the shared norm stats' folder (default: the members' names joined by +)."""

    members: tuple[MixtureMember, ...] = ()
    """The datasets, each with its weight."""
    shared_norm_stats: bool = False
    """One set of norm stats over every member's frames (computed by scripts/compute_norm_stats.py) instead of each
    member's own."""

    def __post_init__(self) -> None:
        check_members(self.members)

    def prepare(self) -> None:
        for member in self.members:
            member.data.prepare()

    def create(self, assets_dirs: Path, model_config: pi0_config.Pi0Config) -> DataConfig:
        members = tuple(
            DataMember(m.name, m.weight, self._member_data(m).create(assets_dirs, model_config)) for m in self.members
        )
        if self.shared_norm_stats:
            directory = self._norm_stats_dir(assets_dirs)
            shared = {
                "asset_id": self._asset_id(),
                "norm_stats_dir": str(directory),
                "norm_stats": load_norm_stats_if_present(directory),
            }
            members = tuple(dataclasses.replace(m, config=dataclasses.replace(m.config, **shared)) for m in members)
        return dataclasses.replace(members[0].config, members=members)

    def _member_data(self, member: MixtureMember) -> DataConfigFactory:
        if self.tokenizer_path is None:
            return member.data
        return dataclasses.replace(member.data, tokenizer_path=self.tokenizer_path)

    def _asset_id(self) -> str | None:
        return self.assets.asset_id or "+".join(m.name for m in self.members)


def check_members(members: tuple[MixtureMember, ...]) -> None:
    """Refuses an empty mixture, repeated names, and weights that are negative, not finite or all zero."""
    if not members:
        raise ValueError("A mixture needs at least one dataset in --data.members")
    names = [m.name for m in members]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"Mixture dataset names must be unique; repeated: {repeated}")
    for index, member in enumerate(members):
        if not math.isfinite(member.weight) or member.weight < 0:
            raise ValueError(
                f"Mixture dataset {member.name!r}: --data.members.{index}.weight must be a finite number >= 0, "
                f"got {member.weight}"
            )
    if not any(m.weight > 0 for m in members):
        raise ValueError(
            f"Mixture datasets {names}: every weight (--data.members.N.weight) is 0; at least one must be > 0"
        )
