"""Render deploy/ with the real kustomize that tests/e2e/controlplane/build.sh builds.

A real kustomize, not a reimplementation: what the tests render is what
``kubectl apply -k`` / ``kustomize build`` gives a user, patches and namespace
transformers included.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.controlplane import BUILD_DIR, locate_built_binary, required_version

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomize_version() -> str:
    """The kustomize release build.sh builds, e.g. ``v5.8.2``."""
    return required_version(BUILD_DIR / "kustomize" / "go.mod", KUSTOMIZE_MODULE)


def locate_kustomize() -> Path:
    """The built binary; raises BinariesMissing, naming ``make controlplane``, when absent."""
    return locate_built_binary("kustomize", kustomize_version())


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def kustomization_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` holding a kustomization, sorted (base before overlays)."""
    return sorted(path.parent for name in KUSTOMIZATION_FILES for path in root.rglob(name))


def build(kustomize: Path, directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY``, parsed: one dict per rendered object, in kustomize's order."""
    completed = subprocess.run([str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed:\n{completed.stderr}")
    return [document for document in yaml.safe_load_all(completed.stdout) if document]
