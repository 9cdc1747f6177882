"""The CI example (docs/energy-diff-workflow.yml): its ``diff`` step's script, run for real against
two commits of a temporary git repository, with ``energetiscope`` on PATH as the workflow installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.webhook.test_diff import GUESTBOOK, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / "docs" / "energy-diff-workflow.yml"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def diff_step() -> dict[str, object]:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    steps = workflow["jobs"]["energy-diff"]["steps"]
    return next(step for step in steps if step.get("id") == "diff")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_workflow_diffs_a_pull_requests_base_and_head(shared_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ci@example.com")
    git(repo, "config", "user.name", "ci")
    manifest = repo / "deploy" / "guestbook.yaml"
    manifest.write_text((shared_dir / "fixtures" / "manifests" / GUESTBOOK).read_text(encoding="utf-8"))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    base_sha = git(repo, "rev-parse", "HEAD")
    manifest.write_text(manifest.read_text().replace("replicas: 3", "replicas: 6"))  # frontend doubles
    git(repo, "commit", "-q", "-am", "head")

    runner_temp = tmp_path / "runner"
    runner_temp.mkdir()
    output = tmp_path / "github_output"
    step = diff_step()
    workflow_env = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["energy-diff"]["env"]
    env = {**os.environ, **{k: str(v) for k, v in workflow_env.items()}, "BASE_SHA": base_sha,
           "RUNNER_TEMP": str(runner_temp), "GITHUB_OUTPUT": str(output),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    completed = subprocess.run(["bash", "-e", "-c", str(step["run"])], cwd=repo, env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    # frontend: 3 -> 6 pods, +100%, above the example's 10% gate.
    assert output.read_text().strip() == "status=1"
    rows = markdown_table((runner_temp / "energy.md").read_text())
    assert [row[0] for row in rows[1:]] == ["<code>Deployment</code> default/frontend", "<strong>Total</strong>"]
    assert rows[1][1:3] == ["changed", "3 → 6"]
    assert "::warning file=deploy/guestbook.yaml,line=117," in completed.stdout
    assert not (runner_temp / "base").exists()  # the worktree is cleaned up
