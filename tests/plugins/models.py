"""Model fixtures: the packaged catalog, and its buildable models built once into a cache dir.

The cache is ``$FAILLITE_TEST_MODELS_DIR`` or ``<repo>/.cache/test-models``; files whose build
fingerprint still matches are reused, so only the first run pays the few seconds of building.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faillite.catalog import Catalog, load_catalog
from faillite.config import packaged_config
from faillite.models.build import build_models

REPO = Path(__file__).resolve().parents[2]


def models_cache_dir() -> Path:
    env = os.environ.get("FAILLITE_TEST_MODELS_DIR")
    return Path(env) if env else REPO / ".cache" / "test-models"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(packaged_config("catalog.yaml"))


@pytest.fixture(scope="session")
def models_dir(catalog: Catalog) -> Path:
    path = models_cache_dir()
    build_models(catalog, path, progress=False)
    return path
