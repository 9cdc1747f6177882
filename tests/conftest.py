"""Fixtures every test directory can use."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Test data lives beside the project, never inside it (see ../shared/README.md).
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED_DIR / "fixtures").is_dir():
        pytest.fail(f"the shared test data directory is missing: expected ../shared beside the repository")
    return SHARED_DIR
