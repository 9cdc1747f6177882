"""`energetiscope predict FILE` on what users hand it by mistake: the error names the file and what
is wrong, without a traceback, and says nothing it does not do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from webhook.cli import main

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"team": "café"}},
    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx",
                                                    "resources": {"requests": {"cpu": "250m"}}}]}}},
}


def _predict(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["predict", *args])
    assert "Traceback" not in result.output and not isinstance(result.exception, UnicodeDecodeError)
    return result.exit_code, result.output


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    text = "# rendered by a tool\n" + yaml.safe_dump(DEPLOYMENT, allow_unicode=True)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(text.encode("latin-1"))
    code, output = _predict(str(latin))
    line = 1 + text.split("café")[0].count("\n")
    assert code == 1 and f"{latin}: not UTF-8 text (byte 0xe9 on line {line}); save it as UTF-8" in output
    utf16 = tmp_path / "utf16.yaml"  # what Windows PowerShell's > writes
    utf16.write_bytes(text.encode("utf-16"))
    code, output = _predict(str(utf16))
    assert code == 1 and f"{utf16}: not UTF-8 text" in output
    # The same text as UTF-8, with or without a byte-order mark, is predicted.
    for name, data in (("utf8.yaml", text.encode()), ("bom.yaml", text.encode("utf-8-sig"))):
        (tmp_path / name).write_bytes(data)
        code, output = _predict(str(tmp_path / name), "-o", "json")
        assert code == 0 and '"workload_name": "web"' in output


def test_stdin_that_is_not_utf8_is_named_by_predict_and_diff(tmp_path: Path) -> None:
    text = yaml.safe_dump(DEPLOYMENT, allow_unicode=True)
    head = tmp_path / "head.yaml"
    head.write_text(text, encoding="utf-8")
    # Read as UTF-8 (a byte-order mark dropped), predict names the Deployment, and diff finds the
    # piped base the same as the head: no row names it.
    for command, web_listed in ((["predict", "-"], True), (["diff", "-", str(head)], False)):
        result = CliRunner().invoke(main, command, input=text.encode("utf-16"))
        assert result.exit_code != 0 and "<stdin>: not UTF-8 text" in result.output, (command, result.output)
        assert "Traceback" not in result.output and not isinstance(result.exception, UnicodeDecodeError)
        result = CliRunner().invoke(main, command, input=text.encode("utf-8-sig"))
        assert result.exit_code == 0 and ("web" in result.output) == web_listed, (command, result.output)


def test_a_model_that_does_not_load_is_an_error_and_nothing_else(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(DEPLOYMENT, allow_unicode=True), encoding="utf-8")
    # As a user runs it: the logging a server sets up writes to the real stderr.
    result = subprocess.run([sys.executable, "-m", "webhook.cli", "predict", str(manifest), "--model",
                             str(tmp_path / "missing.joblib")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Error:" in result.stderr and "missing.joblib" in result.stderr
    assert "serving the prior" not in result.stderr + result.stdout


def test_directories_several_files_and_stdin_each_answer_naming_its_file(tmp_path: Path) -> None:
    charts = tmp_path / "charts"
    (charts / "web").mkdir(parents=True)
    (charts / "web" / "deployment.yaml").write_text(yaml.safe_dump(DEPLOYMENT, allow_unicode=True), encoding="utf-8")
    typed_list = {"apiVersion": "apps/v1", "kind": "DeploymentList",
                  "items": [{**DEPLOYMENT, "metadata": {"name": "api"}}, {**DEPLOYMENT, "metadata": {"name": "worker"}}]}
    (charts / "list.yml").write_text(yaml.safe_dump(typed_list), encoding="utf-8")
    (charts / "notes.txt").write_text("not a manifest", encoding="utf-8")
    extra = tmp_path / "extra.yaml"
    extra.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["predict", str(charts), str(extra), "-", "-o", "json"],
                                input=yaml.safe_dump({**DEPLOYMENT, "metadata": {"name": "piped"}}))
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [(Path(p["file"]).name, p["document"], p["item"], p["workload_name"]) for p in answer["predictions"]] == [
        ("list.yml", 1, 0, "api"), ("list.yml", 1, 1, "worker"), ("deployment.yaml", 1, None, "web"),
        ("<stdin>", 1, None, "piped")]
    assert [(Path(s["file"]).name, s["kind"]) for s in answer["skipped"]] == [("extra.yaml", "ConfigMap")]
    table = CliRunner().invoke(main, ["predict", str(charts)])
    assert table.exit_code == 0 and f"{charts / 'list.yml'}:1.1" in table.stdout
    single = CliRunner().invoke(main, ["predict", str(charts / "web" / "deployment.yaml")])
    assert single.exit_code == 0 and "deployment.yaml:" not in single.stdout  # one file: documents alone
    missing = CliRunner().invoke(main, ["predict", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "nowhere: no such file or directory" in missing.output


def test_standard_input_may_be_read_once() -> None:
    result = CliRunner().invoke(main, ["predict", "-", "-"], input=yaml.safe_dump(DEPLOYMENT, allow_unicode=True))
    assert result.exit_code == 1 and "'-' (standard input) may be given once" in result.output
