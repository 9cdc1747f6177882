"""The two pages people read in a browser, loaded by Debian's headless Chromium (harness/chromium.py).

* ``/docs`` on the real webhook process over its real TLS (the test CA's serving certificate,
  pinned by key): Swagger UI loads with no console error, CSP violation or request to anywhere
  but the server, and "Try it out" on ``/predict/from-yaml`` with the page's own example returns
  the predictions.
* The trainer's HTML report (``train fit``'s ``model.report.html`` and ``train evaluate``'s
  ``evaluation.html``) opened from the file: no console error, no request but the page itself and
  its embedded images, every image decodes, and the tables hold the numbers of evaluation.json
  and of the model card; text from the data (a join example with markup in it) stays text.

Each test keeps a screenshot under its pytest tmp dir (``docs.png``, ``evaluation.png``,
``fit-report.png``; pytest keeps the last three runs under ``$TMPDIR/pytest-of-$USER``) and
prints where. Without chromium (``make test`` installs it with tests/tools/install-chromium.sh,
which needs root) the tests are skipped and say so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.chromium import Chromium, chromium_binary, spki_pin
from harness.webhook_process import WebhookProcess, create_certs
from tests.trainer.synthetic_dataset import dataset, scaling_pods
from trainer.dataset import JoinSummary, Tally, write_dataset, write_summary
from trainer.evaluate import run_evaluate
from trainer.fit import FitSettings, run_fit
from trainer.report_html import METRIC_COLUMNS, format_number

pytestmark = pytest.mark.skipif(
    chromium_binary() is None,
    reason="chromium is not installed: `make test` installs Debian's with tests/tools/install-chromium.sh (needs root)",
)

HOSTILE_EXAMPLE = 'apps/Deployment/<img src=x onerror="console.error(1)">: no spec'


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[WebhookProcess]:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "webhook.log") as server:
        yield server


def _click(browser: Chromium, selector: str, within: str = "document") -> None:
    browser.wait_for(f"!!{within}.querySelector({json.dumps(selector)})")
    browser.evaluate(f"{within}.querySelector({json.dumps(selector)}).click()")


def test_docs_page_works_offline_and_tries_predict_from_yaml(webhook: WebhookProcess, tmp_path: Path) -> None:
    with webhook.client() as client:
        page = client.get("/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp

    pin = spki_pin((webhook.cert_dir / "tls.crt").read_bytes())
    with Chromium(spki_pins=(pin,)) as browser:
        browser.navigate(f"{webhook.url}/docs")
        assert browser.wait_for("document.querySelectorAll('.opblock').length") == 8
        operation = "document.querySelector('#operations-default-post_predict_from_yaml')"
        _click(browser, "button.opblock-summary-control", within=operation)
        _click(browser, "button.try-out__btn", within=operation)
        body = browser.wait_for(f"{operation}.querySelector('textarea.body-param__text')?.value")
        assert "kind: CronJob" in body and "kind: ConfigMap" in body  # the page's own example
        _click(browser, "button.execute", within=operation)
        status = browser.wait_for(f"{operation}.querySelector('.live-responses-table tr.response .response-col_status')"
                                  "?.textContent.trim()")
        answer = browser.wait_for(f"{operation}.querySelector('.live-responses-table tr.response .highlight-code "
                                  "code')?.textContent")
        browser.pump(0.5)
        shot = browser.screenshot(tmp_path / "docs.png")
        print(f"screenshot of /docs after Try it out: {shot}")
        events = browser.events
    assert status == "200", answer
    result = json.loads(answer)
    assert [p["workload_name"] for p in result["predictions"]] == ["web", "nightly-report"]
    assert all(p["pod_power_watts"] > 0 for p in result["predictions"])
    assert [s["kind"] for s in result["skipped"]] == ["ConfigMap"]
    assert events.console_errors == [] and events.failed_requests == []
    # data: URIs (the stylesheet's icons) are not requests: nothing else may go anywhere but the server.
    network = [url for url in events.requests if not url.startswith("data:")]
    assert network and all(url.startswith(webhook.url + "/") for url in network), network
    assert f"{webhook.url}/openapi.json" in network and f"{webhook.url}/predict/from-yaml" in network


# -- the evaluation report -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fitted model and its dataset, with a join summary that has a row that did not join (one
    fit for both report tests: fitting is the slow part)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    data = write_dataset(dataset(scaling_pods(12)), tmp_path / "train.parquet")
    tally = Tally(rows=144, pods=24, workloads=12, examples=["apps/svc-0-0"])
    write_summary(JoinSummary(label_rows=150, label_pods=25, label_workloads=13, joined=tally,
                              by_rule={"workload": tally},
                              unjoined={"no-spec": Tally(rows=6, pods=1, workloads=1, examples=[HOSTILE_EXAMPLE])},
                              specs=12, specs_joined=12, specs_unused_examples=[]).to_dict(), data)
    run_fit(data, tmp_path / "model.joblib", FitSettings(k_grid=(1, 2, 3)))
    return tmp_path / "model.joblib", data


def _table(browser: Chromium, key: str) -> list[dict[str, Any]]:
    return browser.evaluate(f"""[...document.querySelectorAll('table.metrics[data-set="{key}"] tbody tr')].map(row => ({{
        method: row.querySelector('td.method').textContent,
        cells: [...row.querySelectorAll('td.number')].map(c => [c.dataset.value ?? null, c.textContent])}}))""")


def _assert_table_holds(rows: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> None:
    assert [r["method"] for r in rows] == [m["method"] for m in metrics]
    for row, metric in zip(rows, metrics):
        for (exact, shown), (key, _, decimals, scale, suffix) in zip(row["cells"], METRIC_COLUMNS):
            value = metric[key]
            assert shown == format_number(value, decimals, scale, suffix), (metric["method"], key)
            assert (exact is None) == (value is None) and (value is None or float(exact) == pytest.approx(value, rel=1e-12))


def _open_report(browser: Chromium, path: Path) -> None:
    browser.navigate(path.resolve().as_uri())
    browser.wait_for("[...document.images].every(i => i.complete)")
    browser.pump(0.3)


def _assert_clean(browser: Chromium, path: Path) -> None:
    sizes = browser.evaluate("[...document.images].map(i => i.naturalWidth)")
    assert len(sizes) == 2 and all(width > 0 for width in sizes), sizes
    assert browser.events.console_errors == [] and browser.events.failed_requests == []
    assert all(url == path.resolve().as_uri() or url.startswith("data:image/png;base64,")
               for url in browser.events.requests), [url[:80] for url in browser.events.requests]


def test_evaluation_report_renders_the_numbers_of_evaluation_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = trained
    outcome = run_evaluate(model, data, tmp_path / "evaluation")
    report = outcome.paths["html"]
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    card = json.loads(model.with_name("model.card.json").read_text())
    with Chromium() as browser:
        _open_report(browser, report)
        _assert_clean(browser, report)
        _assert_table_holds(_table(browser, "evaluation"), evaluation["metrics"])
        _assert_table_holds(_table(browser, "cross_validation"), card["cross_validation"]["metrics"])
        worst = max(evaluation["targets"], key=lambda t: abs(math.log(t["predicted_watts"] / t["power_watts"])))
        rows = browser.evaluate("[...document.querySelectorAll('table.largest-errors tbody tr')]"
                                ".map(r => [...r.cells].map(c => c.dataset.value ?? c.textContent))")
        assert len(rows) == min(15, len(evaluation["targets"]))
        assert rows[0][0] == f"{worst['namespace']}/{worst['workload_kind']}/{worst['workload_name']}"
        assert float(rows[0][2]) == worst["power_watts"] and float(rows[0][3]) == worst["predicted_watts"]
        coverage = browser.evaluate("[...document.querySelectorAll('table.coverage td.number')]"
                                    ".map(c => Number(c.dataset.value))")
        inside = sum(t["p10_watts"] <= t["power_watts"] <= t["p90_watts"] for t in evaluation["targets"])
        assert coverage[2] == inside and coverage[3] == pytest.approx(evaluation["metrics"][0]["coverage_p10_p90"])
        unjoined = browser.evaluate("document.querySelector('table.unjoined tbody').textContent")
        assert "no-spec" in unjoined and HOSTILE_EXAMPLE in unjoined  # shown as text, never as markup
        assert browser.evaluate("document.querySelectorAll('table.unjoined img').length") == 0
        print(f"screenshot of evaluation.html: {browser.screenshot(tmp_path / 'evaluation.png')}")


def test_fit_report_renders_the_card_and_out_of_fold_plots(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = trained
    report = model.with_name("model.report.html")
    card = json.loads(model.with_name("model.card.json").read_text())
    with Chromium() as browser:
        _open_report(browser, report)
        _assert_clean(browser, report)
        _assert_table_holds(_table(browser, "cross_validation"), card["cross_validation"]["metrics"])
        text = browser.evaluate("document.body.innerText")
        assert card["model_id"] in text and card["artifact"]["sha256"] in text and "out of fold" in text
        print(f"screenshot of model.report.html: {browser.screenshot(tmp_path / 'fit-report.png')}")
