"""The shape of the code: the layer order of the packages, one data pipeline, one image resize."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import openpi
from openpi import transforms
from openpi.models.observation import Observation
from openpi.models_pytorch import preprocessing, weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import data_config, pipeline, policy_config
from openpi.shared import image_tools, normalize
from openpi.training import config as _config
from openpi.training import data_loader
from tests.helpers.lerobot import write_tokenizer

SRC = Path(openpi.__file__).parent
# Lower layers never import higher ones; modules of one layer may import each other, except the two frameworks.
LAYERS = (
    ("shared", "transforms"),
    ("models",),
    ("models_pytorch", "models_jax"),
    ("conversion",),
    ("envs",),
    ("policies", "serving"),
    ("training",),
    ("evaluation", "cli"),
)
# Sibling layers: neither framework imports the other.
FRAMEWORKS = ("models_pytorch", "models_jax")


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages([str(SRC)], prefix="openpi."))


def _openpi_imports(module: str) -> set[str]:
    """Every ``openpi.*`` module imported anywhere in ``module``'s source (function-level imports included)."""
    path = SRC.joinpath(*module.split(".")[1:])
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("openpi.") and name.split(".")[1] in sum(LAYERS, ())}


def test_every_module_imports():
    for module in _modules():
        importlib.import_module(module)


def test_no_module_imports_a_higher_layer():
    violations = [
        f"{module} imports {imported}"
        for module in _modules()
        if module.count(".") >= 1 and module.split(".")[1] in sum(LAYERS, ())
        for imported in _openpi_imports(module)
        if _layer(imported) > _layer(module)
    ]
    assert not violations, "\n".join(violations)


def test_the_layer_check_sees_a_violation(monkeypatch: pytest.MonkeyPatch):
    def policies_import_training(module: str) -> set[str]:
        return {"openpi.training.config"} if ".policies." in module else set()

    monkeypatch.setattr("tests.test_architecture._openpi_imports", policies_import_training)
    with pytest.raises(AssertionError, match=r"imports openpi\.training\.config"):
        test_no_module_imports_a_higher_layer()


def _frameworks(module: str) -> set[str]:
    """The frameworks (``models_pytorch``, ``models_jax``) whose modules ``module`` imports."""
    return {name.split(".")[1] for name in _openpi_imports(module)} & set(FRAMEWORKS)


def test_the_frameworks_do_not_import_each_other():
    violations = [
        f"{module} imports {framework}"
        for module in _modules()
        if module.count(".") >= 1 and module.split(".")[1] in FRAMEWORKS
        for framework in _frameworks(module) - {module.split(".")[1]}
    ]
    assert not violations, "\n".join(violations)


def _may_import_both_frameworks(module: str) -> bool:
    """The JAX -> PyTorch converter's package; and JAX training, which reads the PyTorch data loader's batches through
    the PyTorch augmentation."""
    return module.split(".")[1] == "conversion" or module == "openpi.training.jax_trainer"


def test_only_the_converter_imports_both_frameworks():
    violations = [
        module
        for module in _modules()
        if _frameworks(module) == set(FRAMEWORKS) and not _may_import_both_frameworks(module)
    ]
    assert not violations, f"{violations} import both models_pytorch and models_jax"


def test_the_framework_checks_see_a_violation(monkeypatch: pytest.MonkeyPatch):
    original = _openpi_imports

    def jax_imports_pytorch(module: str) -> set[str]:
        jax_side = module.startswith(("openpi.models_jax.", "openpi.policies."))
        return original(module) | ({"openpi.models_pytorch.weights"} if jax_side else set())

    monkeypatch.setattr("tests.test_architecture._openpi_imports", jax_imports_pytorch)
    with pytest.raises(AssertionError, match=r"openpi\.models_jax\.pi0 imports models_pytorch"):
        test_the_frameworks_do_not_import_each_other()
    with pytest.raises(AssertionError, match=r"openpi\.policies\.jax_model'.* import both"):
        test_only_the_converter_imports_both_frameworks()


def test_the_tests_mirror_the_packages():
    """One test folder per package of ``openpi`` (tests of top-level modules at the root), besides the shared
    helpers and the tests of the research home, the examples and the benchmarks."""
    tests = Path(__file__).parent
    folders = {path.name for path in tests.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    packages = {path.name for path in SRC.iterdir() if (path / "__init__.py").is_file()}
    assert folders - {"helpers", "research", "examples", "bench"} <= packages
    assert not [path.name for path in tests.glob("test_*.py") if path.stem.removeprefix("test_") in packages]


# --------------------------------------------------------------------------------------------- one pipeline
def _identity_stats(state_dim: int, action_dim: int) -> dict[str, normalize.NormStats]:
    def identity(dim: int) -> normalize.NormStats:
        return normalize.NormStats(mean=np.zeros(dim), std=np.ones(dim), q01=-np.ones(dim), q99=np.ones(dim))

    return {"state": identity(state_dim), "actions": identity(action_dim)}


def _resolved(name: str, tmp_path: Path) -> data_config.DataConfig:
    """The config's pipeline with a test tokenizer (the steps do not depend on which)."""
    config = _config.get_config(name)
    data = dataclasses.replace(config.data, tokenizer_path=str(write_tokenizer(tmp_path)))
    return data.create(tmp_path / "assets", config.model)


@pytest.mark.parametrize("name", _config.list_configs())
def test_serving_runs_the_training_steps_after_the_dataset_steps(name, tmp_path, embedded_data_home):
    created = _resolved(name, tmp_path)
    stats = created.norm_stats or _identity_stats(created.robot_state_dim or 8, created.robot_action_dim or 8)
    created = dataclasses.replace(created, norm_stats=stats)
    training = data_loader.training_transforms(created)
    serving = list(pipeline.build_pipeline(created, stats, from_dataset=False).inputs)
    dataset_only = len(training) - len(serving)
    assert dataset_only == len(created.repack_transforms.inputs) + int(created.prompt_from_task)
    assert training[dataset_only:] == serving
    resizes = [step for step in serving if isinstance(step, transforms.ResizeImages)]
    size = _config.get_config(name).model.vision_config.image_size
    assert resizes == [transforms.ResizeImages(size, size)], "one resize, to the vision tower's resolution"


def test_policy_serves_exactly_the_pipeline(tmp_path, embedded_data_home, monkeypatch):
    config = _config.get_config("debug")
    config.data.prepare()
    built = []
    original = pipeline.build_pipeline

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(policy_config, "build_pipeline", spy)
    checkpoint = tmp_path / "checkpoint"
    weights.save_weights(PI0Pytorch(config.model), checkpoint)
    policy = policy_config.create_trained_policy(config, checkpoint, pytorch_device="cpu")
    assert policy.input_transforms == built[0].inputs and policy.output_transforms == built[0].outputs


# ------------------------------------------------------------------------------------------------ one resize
def test_a_dataset_image_is_resized_once_to_the_tower(tmp_path, embedded_data_home, monkeypatch):
    config = _config.get_config("debug_pi05")
    config.data.prepare()
    created = config.data.create(tmp_path / "assets", config.model)
    calls = []
    original = image_tools.resize_with_pad

    def counting(image, height, width):
        calls.append((image.shape[:2], (height, width)))
        return original(image, height, width)

    monkeypatch.setattr(image_tools, "resize_with_pad", counting)
    sample = data_loader.create_torch_dataset(created, config.model.action_horizon, config.model)[0]
    out = transforms.compose(data_loader.training_transforms(created))(sample)
    tower = config.model.vision_config.image_size
    # Every camera slot (base, wrist and the absent right wrist's black image) once, 96 px -> the tower's size.
    assert calls == [((96, 96), (tower, tower))] * len(out["image"]) and len(out["image"]) == 3
    assert all(image.shape == (tower, tower, 3) for image in out["image"].values())
    # The model side resizes nothing: a wrong size is an error, not a second resize.
    observation = transforms.stack_samples([out])
    checked = preprocessing.preprocess_observation(
        Observation.from_dict(observation), train=False, image_resolution=(tower, tower)
    )
    assert all(image.shape[-1] == tower for image in checked.images.values())


def test_action_stats_that_do_not_cover_the_robot_are_refused(tmp_path):
    created = _resolved("pi05_libero_pytorch", tmp_path)
    stats = _identity_stats(8, 3)
    with pytest.raises(ValueError, match="'actions' has 3 values but the robot has 7 action dims"):
        pipeline.build_pipeline(created, stats, from_dataset=False)


def test_norm_stats_without_state_or_actions_are_refused(tmp_path):
    created = _resolved("pi05_libero_pytorch", tmp_path)
    stats = _identity_stats(8, 7)
    del stats["state"]
    with pytest.raises(ValueError, match=r"no 'state'.*compute_norm_stats"):
        pipeline.build_pipeline(created, stats, from_dataset=False)
