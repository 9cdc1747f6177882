"""The image and the manifests agree with the code, proven without a Docker engine.

No engine runs here, so: the Dockerfile's entry command is run as it is in the image
(same program, same arguments), and every container in deploy/ is checked against the
real CLI: its arguments parse, its ENERGETISCOPE_* variables exist, its paths are mounted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterator

import click
import httpx
import pytest
import yaml

from webhook.cli import main

from harness.ports import free_loopback_port
from harness.webhook_process import create_certs

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _instruction(name: str) -> list[str]:
    matches = re.findall(rf"^{name}\s+(\[.*\])\s*$", DOCKERFILE, flags=re.M)
    assert matches, f"Dockerfile has no exec-form {name}"
    return json.loads(matches[-1])


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        # The Helm chart's templates are not YAML until rendered; with default values they render
        # the overlays' objects exactly (tests/e2e/test_helm_chart.py), which are checked here.
        if (REPO / "deploy" / "helm") in path.parents:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                yield path, document


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, obj in _manifests():
        spec = obj.get("spec", {})
        for template_path in (("template",), ("jobTemplate", "spec", "template")):
            node = spec
            for key in template_path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            if node.get("spec"):
                yield f"{path.relative_to(REPO)}:{obj['kind']}/{obj['metadata']['name']}", node["spec"]


def _energetiscope_invocations(container: dict[str, Any]) -> list[list[str]]:
    command = container.get("command")
    if command is None:  # the image's ENTRYPOINT runs the args
        return [_instruction("ENTRYPOINT")[1:] + list(container.get("args") or _instruction("CMD"))]
    assert command[:2] == ["/bin/sh", "-c"], "a container either uses the entrypoint or a shell script"
    script = " ".join(container["args"])
    invocations = []
    for statement in re.split(r";|&&", script):
        words = shlex.split(statement)
        if words and words[0] == "energetiscope":
            invocations.append([re.sub(r"^\$\w+$|^\$\(.*\)$", "1", w) for w in words[1:]])
    return invocations


def _rooted(args: list[str], root: Path) -> list[str]:
    """Container paths moved under ``root`` (files created), so options that must exist do."""
    moved = []
    for word in args:
        if word.startswith("/"):
            local = root / word.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            if local.suffix:
                local.touch()
            word = str(local)
        moved.append(word)
    return moved


def _parse(args: list[str]) -> click.Command:
    """Parse args exactly as `energetiscope` would, without running anything."""
    command: click.Command = main
    with warnings.catch_warnings():  # protected_args: click 8's way to reach a subcommand's words
        warnings.simplefilter("ignore", DeprecationWarning)
        context = command.make_context("energetiscope", list(args), resilient_parsing=False)
        while isinstance(command, click.Group):
            name, command, rest = command.resolve_command(context, context.protected_args + context.args)
            context = command.make_context(name, rest, parent=context)
    return command


def test_every_container_runs_our_image_with_arguments_the_cli_accepts(tmp_path: Path) -> None:
    serve_envvars = {
        option.envvar for option in main.commands["serve"].params if isinstance(option, click.Option) and option.envvar
    }
    seen = 0
    for where, pod_spec in _pod_specs():
        assert pod_spec["securityContext"]["runAsNonRoot"] is True, where
        assert str(pod_spec["securityContext"]["runAsUser"]) == _user_id(), where
        mounts_by_container = {}
        for container in pod_spec["containers"]:
            assert container["image"] == f"energetiscope:{VERSION}", where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            for args in _energetiscope_invocations(container):
                _parse(_rooted(args, tmp_path))
                seen += 1
            mounts_by_container[container["name"]] = [m["mountPath"] for m in container.get("volumeMounts", [])]
            for variable in container.get("env", []):
                if variable["name"].startswith("ENERGETISCOPE_") and "serve" in (container.get("args") or []):
                    assert variable["name"] in serve_envvars, (where, variable["name"])
                if variable["name"].endswith(("_FILE", "_PATH")) and "value" in variable:
                    assert any(variable["value"].startswith(m + "/") for m in mounts_by_container[container["name"]]), (
                        where, variable["name"], "not on a mounted volume")
            args = container.get("args") or []
            if "--cert-dir" in args:
                cert_dir = args[args.index("--cert-dir") + 1]
                assert cert_dir in mounts_by_container[container["name"]], (where, "certificates not mounted")
    assert seen >= 4  # webhook, certificate Job and CronJob, trainer (collect and run)


def _user_id() -> str:
    user = re.findall(r"^USER\s+(\d+)", DOCKERFILE, flags=re.M)
    assert user, "the image must name a numeric non-root USER"
    return user[-1]


def test_bad_arguments_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        _parse(["serve", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        _parse(["certs", "bootstrap"])  # --namespace is required


def test_the_image_entry_command_serves(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "tls")
    port = free_loopback_port()
    command = _instruction("ENTRYPOINT") + _instruction("CMD")
    assert command[:2] == ["energetiscope", "serve"]
    # The image's own command line, with only the paths and port of this machine swapped in.
    args = command[1:]
    args[args.index("--cert-dir") + 1] = str(certs)
    args[args.index("--port") + 1] = str(port)
    executable = Path(sys.executable).with_name("energetiscope")
    process = subprocess.Popen([str(executable), *args], env={**os.environ, "ENERGETISCOPE_HOST": "127.0.0.1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(verify=ssl.create_default_context(cafile=str(certs / "ca.crt"))) as client:
            while True:
                try:
                    ready = client.get(f"https://localhost:{port}/readyz")
                    break
                except httpx.TransportError:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.2)
        assert ready.status_code == 200 and ready.json()["model"]["basis"] == "prior"
    finally:
        process.terminate()
        process.wait(15)


def test_the_image_holds_no_build_tools_and_mounts_artifacts() -> None:
    stages = re.split(r"^FROM\s", DOCKERFILE, flags=re.M)[1:]
    assert len(stages) >= 2, "multi-stage build"
    final = stages[-1]
    assert "pip install" not in final and "apt-get" not in final
    assert "COPY --from=" in final
    assert 'VOLUME ["/var/lib/energetiscope/artifacts"]' in final
