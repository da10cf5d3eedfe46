"""The shapes testbed (:mod:`openpi.envs.shapes`): its embedded dataset as a data config.

The recorded scene has LIBERO's features (a third-person and a wrist camera, 8-dim state, 7-dim actions), so it
reuses LIBERO's mapping; what is its own is where the data comes from: :func:`openpi.envs.shapes_dataset.prepare`
generates it (``prepare``), ``create`` only locates it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openpi import transforms
from openpi.envs import shapes_dataset
from openpi.policies.data_config import (
    DataConfig,
    DataConfigFactory,
    ModelConfig,
    fast_tokenizer_spec,
    load_norm_stats_if_present,
    model_transforms,
    uses_quantile_norm,
)
from openpi.policies.libero_policy import (
    ACTION_DIM,
    LIBERO_REPACK,
    LIBERO_TRANSFORMS,
    OBSERVATION_KEYS,
    STATE_DIM,
)


@dataclasses.dataclass(frozen=True)
class EmbeddedDataConfig(DataConfigFactory, shapes_dataset.EmbeddedDatasetSpec):
    """The embedded shapes dataset (LIBERO's features) with its norm stats and tokenizer.

    Its fields are the dataset's (:class:`~openpi.envs.shapes_dataset.EmbeddedDatasetSpec`: size and scene
    difficulty) plus ``mask_images``, which masks every camera (the blind control of the pruning experiment).
    """

    repo_id: str | None = shapes_dataset.REPO_ID
    """Name of the embedded dataset (its folder is generated under $OPENPI_DATA_HOME)."""
    mask_images: bool = False
    """Mask every camera image (the blind control of the pruning experiment)."""

    @property
    def spec(self) -> shapes_dataset.EmbeddedDatasetSpec:
        fields = dataclasses.fields(shapes_dataset.EmbeddedDatasetSpec)
        return shapes_dataset.EmbeddedDatasetSpec(**{f.name: getattr(self, f.name) for f in fields})

    def prepare(self) -> None:
        shapes_dataset.prepare(self.spec)
        shapes_dataset.prepare_fast_tokenizer()

    def create(self, assets_dirs: Path, model_config: ModelConfig) -> DataConfig:
        spec = self.spec
        root = shapes_dataset.dataset_dir(spec)
        tokenizer_path = self.tokenizer_path or str(shapes_dataset.prepared_tokenizer(spec))
        fast_path = str(shapes_dataset.fast_tokenizer_path())
        return DataConfig(
            repo_id=shapes_dataset.REPO_ID,
            root=str(root),
            asset_id=spec.folder_name,
            norm_stats_dir=str(root),
            norm_stats=load_norm_stats_if_present(root),
            repack_transforms=LIBERO_REPACK,
            data_transforms=LIBERO_TRANSFORMS.push(inputs=(transforms.MaskImages(),))
            if self.mask_images
            else LIBERO_TRANSFORMS,
            model_transforms=model_transforms(model_config, tokenizer_path, fast_path),
            use_quantile_norm=uses_quantile_norm(model_config),
            prompt_from_task=True,
            default_prompt=self.default_prompt,
            tokenizer_path=tokenizer_path,
            fast_tokenizer=fast_tokenizer_spec(model_config, tokenizer_path, fast_path),
            robot_action_dim=ACTION_DIM,
            robot_state_dim=STATE_DIM,
            observation_keys=OBSERVATION_KEYS,
            generate_command=shapes_dataset.generate_command(spec),
        )
