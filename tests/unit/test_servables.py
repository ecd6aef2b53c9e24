"""The model server's version manager (gpulab.serving.servables) on real SavedModels:
what it loads and unloads as the version policy changes, as TF Serving does."""

from __future__ import annotations

import pytest

from gpulab.serving.config import ModelConfig
from gpulab.serving.servables import AVAILABLE, END, ModelRegistry
from hubfixture import export_line


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("line")
    export_line(base / "1", a=1.0, b=0.0)
    export_line(base / "2", a=2.0, b=0.0)
    return base


def states(registry: ModelRegistry) -> dict[int, str]:
    return {v: s.state for v, s in registry.models["line"].versions.items()}


def serve(registry: ModelRegistry, base, *versions: int) -> None:
    registry.configure(
        [ModelConfig("line", str(base), policy="specific", versions=tuple(versions))]
    )
    registry.poll()


def test_going_back_to_an_unloaded_version_loads_it_again(base, tmp_path) -> None:
    registry = ModelRegistry([], cache_root=str(tmp_path))
    serve(registry, base, 1)
    assert states(registry) == {1: AVAILABLE}
    serve(registry, base, 2)
    assert states(registry) == {1: END, 2: AVAILABLE}
    # back to 1: unloaded in the normal way, so loaded again (as TF Serving does)
    serve(registry, base, 1)
    assert states(registry) == {1: AVAILABLE, 2: END}
    assert registry.servable("line").version == 1


def test_a_version_that_failed_to_load_is_not_tried_again_until_it_changes(base, tmp_path):
    broken = tmp_path / "models"
    (broken / "3").mkdir(parents=True)
    (broken / "3" / "saved_model.pb").write_bytes(b"not a model")
    registry = ModelRegistry([], cache_root=str(tmp_path / "cache"))
    serve(registry, broken, 3)
    failed = registry.models["line"].versions[3]
    assert failed.state == END and failed.error_code != "OK"
    registry.poll()
    assert registry.models["line"].versions[3] is failed  # not tried again
