"""Shared fixtures: a tiny random-init BERT and one full pipeline run on it, reused by
the tests that only need its artifacts (the run itself is tested in test_pipeline.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_tiny_model, tiny_recipe, write_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """The real data sets beside the checkout (../shared/data), or $FTEXPORT_DATA."""
    env = os.environ.get("FTEXPORT_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (candidate / "sst2" / "test.tsv").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_model: Path):
    """Write a tiny recipe (with overrides as section__field=value) and return its path."""

    def make(**overrides) -> Path:
        return write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path, tiny_model, **overrides))

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """One complete `ftexport run` on the tiny model; returns (recipe path, RunResult)."""
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("run")
    path = write_recipe(tmp / "recipe.yaml", tiny_recipe(tmp, tiny_model))
    return path, run(load_recipe(path))


@pytest.fixture
def bundle(tiny_run) -> Path:
    return tiny_run[1].bundle
