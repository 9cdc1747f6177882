"""Run the real helm that tests/e2e/controlplane/build.sh builds, on deploy/helm/energetiscope.

A real helm, not a reimplementation of its templates: what the tests lint, render and install
is what ``helm install`` gives a user. Every call gets its own HELM_* state directories under
the caller's work directory, so nothing is read from or written to the user's helm setup, and
talks to the test apiserver only through the kubeconfig it is given.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from tests.e2e.controlplane import BUILD_DIR, locate_built_binary, required_version

HELM_MODULE = "helm.sh/helm/v3"
CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "energetiscope"
HELM_TIMEOUT_SECONDS = 120


def helm_version() -> str:
    """The helm release build.sh builds, e.g. ``v3.22.0``."""
    return required_version(BUILD_DIR / "helm" / "go.mod", HELM_MODULE)


def locate_helm() -> Path:
    """The built binary; raises BinariesMissing, naming ``make controlplane``, when absent."""
    return locate_built_binary("helm", helm_version())


def set_flags(values: Mapping[str, Any]) -> list[str]:
    """``--set-json key=value`` for each value: types survive (a bool stays a bool)."""
    import json

    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set-json", f"{key}={json.dumps(value)}"]
    return flags


@dataclass(frozen=True)
class Helm:
    """One helm binary with its own state directories, optionally bound to a kubeconfig."""

    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def environment(self) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("HELM_")}
        for name in ("CACHE", "CONFIG", "DATA"):
            directory = self.home / name.lower()
            directory.mkdir(parents=True, exist_ok=True)
            environment[f"HELM_{name}_HOME"] = str(directory)
        environment["KUBECONFIG"] = str(self.kubeconfig) if self.kubeconfig else str(self.home / "no-kubeconfig")
        environment["NO_PROXY"] = environment["no_proxy"] = "127.0.0.1,localhost"
        return environment

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                                   timeout=HELM_TIMEOUT_SECONDS, env=self.environment())
        if check and completed.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}")
        return completed

    def template(self, release: str, namespace: str, values: Mapping[str, Any] | None = None,
                 extra: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``helm template RELEASE CHART -n NAMESPACE``, parsed: one dict per object, hooks included."""
        completed = self.run("template", release, str(CHART_DIR), "--namespace", namespace,
                             *set_flags(values or {}), *extra)
        return [document for document in yaml.safe_load_all(completed.stdout) if document]
