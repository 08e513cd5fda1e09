"""The web console in a real browser: Debian's Chromium, headless, driven by its WebDriver,
against a running `cellar quickstart`. Every page loads without a console error; a lookup
shows values; a dead letter is re-driven and a failed job retried from the pages; without
the permission, the buttons are refused. The screenshots in docs/ are taken here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

from cellar import Client
from conftest import ROOT, Server, digest, start

# A batch ingestion whose file appears only later: its first job fails, a retry succeeds.
LATE_REPO = """kind: Ingestion
name: late_import
batch: {{ files: {{ path: "{path}" }} }}
into: user_profile
key: user_id
event_time: ts
features: {{ country: country }}
"""

# Events dead-lettered at once: one attempt, and an event time that is not a time.
FAST_DEAD_LETTERS = {"CELLAR_INGEST__MAX_ATTEMPTS": "1", "CELLAR_INGEST__RETRY_BACKOFF_MS": "10"}

VIEWER = "cellar_pytest-viewer-7c1e55d0a2"
OPERATOR = "cellar_pytest-operator-9b2f64e1d3"


AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.api_keys]]
name = "console-viewer"
sha256 = "{digest(VIEWER)}"
roles = ["viewer"]

[[auth.api_keys]]
name = "console-operator"
sha256 = "{digest(OPERATOR)}"
roles = ["operator"]

[[auth.roles]]
name = "viewer"
[[auth.roles.grants]]
actions = ["read_metrics", "read_features"]
resources = ["metrics:*", "group:*"]

[[auth.roles]]
name = "operator"
[[auth.roles.grants]]
actions = ["read_features", "write_features", "publish_events", "operate_jobs", "operate_dead_letters", "read_metrics"]
resources = ["*"]
"""


# Two scheduled ingestions, the second after the first: the jobs page's graph.
SCHEDULED_REPO = """kind: Ingestion
name: article_counts
batch: {{ files: {{ path: "{counts}" }}, schedule: "0 4 * * *" }}
into: article_stats
key: article_id
event_time: ts
features: {{ clicks_1h: clicks }}
---
kind: Ingestion
name: article_ctr
batch: {{ files: {{ path: "{ctr}" }}, schedule: "0 4 * * *", depends_on: [article_counts] }}
into: article_stats
key: article_id
event_time: ts
features: {{ ctr_7d: ctr }}
"""


# A group pushed to, that declares how fresh it must be.
SCORES_REPO = """kind: FeatureGroup
name: user_scores
entity: user
type: attribute
features: [{ name: score, type: float64 }]
freshness: 30m
"""


def late_repo(tmp: Path) -> dict[str, str]:
    """The late ingestion, and the scheduled ones with their files."""
    ts = pa.array([1_767_225_600_000] * 3, pa.timestamp("ms", tz="UTC"))
    ids = ["a1", "a2", "a3"]
    pq.write_table(pa.table({"article_id": ids, "ts": ts, "clicks": [5, 6, 7]}), tmp / "counts.parquet")
    pq.write_table(pa.table({"article_id": ids, "ts": ts, "ctr": [0.1, 0.2, 0.3]}), tmp / "ctr.parquet")
    return {
        "late.yaml": LATE_REPO.format(path=tmp / "late.parquet"),
        "scheduled.yaml": SCHEDULED_REPO.format(counts=tmp / "counts.parquet", ctr=tmp / "ctr.parquet"),
        "scores.yaml": SCORES_REPO,
    }


def write_late_file(tmp: Path) -> None:
    table = pa.table(
        {
            "user_id": [f"late{i}" for i in range(10)],
            "ts": pa.array([1_767_225_600_000 + i for i in range(10)], pa.timestamp("ms", tz="UTC")),
            "country": ["NO"] * 10,
        }
    )
    pq.write_table(table, tmp / "late.parquet")


def make_browser() -> WebDriver:
    options = Options()
    options.binary_location = os.environ.get("CELLAR_TEST_CHROMIUM", "/usr/bin/chromium")
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CELLAR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console")
    server = start(tmp, extra_env=FAST_DEAD_LETTERS, repo_files=late_repo(tmp))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = make_browser()
    yield driver
    driver.quit()


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visit(driver: WebDriver, url: str) -> str:
    """Loads `url`, checks it rendered without a console error, and returns its heading."""
    driver.get(url)
    errors = console_errors(driver)
    assert errors == [], f"{url}: {errors}"
    assert driver.title.endswith("Cellar"), f"{url}: {driver.title}"
    return driver.find_element(By.TAG_NAME, "h1").text


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def click_through(driver: WebDriver, element: WebElement) -> None:
    """Clicks a link or button that loads another page, and waits for it."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 15).until(staleness_of(page))


def shoot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ROOT / "docs" / "images" / name))


def test_every_page_loads_without_console_errors(console: Server, browser: WebDriver) -> None:
    with Client(console.url) as client:
        client.get_online_features(["user_profile:*"], entities={"user_id": [f"u{i}" for i in range(200)]})
        job = client.backfill("profile_import")
        job.wait(progress=False, poll_interval=0.2, timeout=120)
    base = console.url
    pages = {
        "/ui": "Feature groups",
        "/ui/groups/user_profile": "user_profile",
        "/ui/groups/recent_clicked_articles": "recent_clicked_articles",
        "/ui/groups/article_stats": "article_stats",
        "/ui/groups/feed_context": "feed_context",
        "/ui/stream": "Stream ingestion",
        "/ui/jobs": "Batch jobs",
        f"/ui/jobs/{job.id}": f"Job {job.id}",
        f"/jobs/{job.id}": f"Job {job.id}",
        "/ui/jobs?ingestion=profile_import&state=succeeded": "Batch jobs",
        "/ui/registry": "Registry",
        f"/ui/registry?plan={console.tmp / 'repo'}": "Registry",
    }
    for path, heading in pages.items():
        assert visit(browser, base + path).startswith(heading), path
    # Every group of the overview links to its page, and each of those loads.
    browser.get(base + "/ui")
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#groups td a")]
    assert sorted(link.rsplit("/", 1)[1] for link in links) == [
        "article_stats", "feed_context", "recent_clicked_articles", "user_profile", "user_scores"
    ], links
    for link in links:
        visit(browser, link)
    # The overview reloads itself for a second screen; a finished job's page does not.
    visit(browser, f"{base}/ui")
    reload = browser.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert reload.get_attribute("content") == "30"
    # The job page shows its shards and rows.
    visit(browser, f"{base}/ui/jobs/{job.id}")
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert browser.find_element(By.ID, "state").text == "succeeded"
    assert "100 written" in browser.find_element(By.CSS_SELECTOR, ".kv").text
    # The scheduled ingestions as a graph: each after what it depends on, with its next run.
    visit(browser, f"{base}/ui/jobs")
    levels = browser.find_elements(By.CSS_SELECTOR, "#graph .level")
    names = [[n.get_attribute("data-ingestion") for n in level.find_elements(By.CSS_SELECTOR, ".node")] for level in levels]
    assert names.index(["article_ctr"]) > [i for i, l in enumerate(names) if "article_counts" in l][0], names
    ctr = browser.find_element(By.CSS_SELECTOR, "#graph .node[data-ingestion=article_ctr]").text
    assert "after article_counts" in ctr and "next run" in ctr and "schedule 0 4 * * *" in ctr, ctr
    # The plan preview of the applied repo has nothing to change; a directory outside it is
    # not read.
    visit(browser, f"{base}/ui/registry?plan={console.tmp / 'repo'}")
    assert "no changes" in browser.find_element(By.ID, "plan-output").text
    visit(browser, f"{base}/ui/registry?plan=/etc")
    assert "outside the server's repo directory" in browser.find_element(By.CSS_SELECTOR, "p.error").text


def test_a_lookup_shows_values_with_statuses_and_the_same_request_as_curl_and_python(
    console: Server, browser: WebDriver
) -> None:
    visit(browser, console.url + "/ui/groups/user_profile")
    field = browser.find_element(By.CSS_SELECTOR, "#lookup input[name=user_id]")
    field.send_keys("u1, nobody")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "#lookup button"))
    assert console_errors(browser) == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#answer tbody tr")
    assert len(rows) == 2
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "user_id=u1" and cells[1] == "present", cells
    with Client(console.url) as client:
        expected = client.get_online_features(["user_profile:country", "user_profile:age"], entities={"user_id": ["u1"]}).to_dict()
    assert cells[3] == expected["country"][0]
    assert cells[4] == str(expected["age"][0])
    assert [c.text for c in rows[1].find_elements(By.TAG_NAME, "td")][1] == "not_found"
    curl = browser.find_element(By.ID, "curl").text
    assert f"{console.url}/v1/features" in curl and '"user_id":["u1","nobody"]' in curl
    python = browser.find_element(By.ID, "python").text
    assert 'get_online_features(' in python and '{"user_id": ["u1", "nobody"]}' in python
    # The request the snippet shows answers what the page showed.
    body = curl.split("-d '", 1)[1].rsplit("'", 1)[0]
    answer = httpx.post(f"{console.url}/v1/features", content=body).json()
    assert answer["results"][0]["rows"][0]["values"][0] == cells[3]
    # A time series: each record a row, newest first.
    visit(browser, console.url + "/ui/groups/recent_clicked_articles?user_id=u7&top_n=3")
    assert 1 <= len(browser.find_elements(By.CSS_SELECTOR, "#answer tbody tr")) <= 3
    # A bad form says which field.
    visit(browser, console.url + "/ui/groups/user_profile?user_id=+")
    assert "user_id: give at least one value" in browser.find_element(By.CSS_SELECTOR, "p.error").text


def test_a_dead_letter_is_redriven_from_the_stream_page(console: Server, browser: WebDriver) -> None:
    bad = {"type": "article_clicked", "user_id": "dl-user", "ts": "not a time", "article_id": "a1"}
    with Client(console.url) as client:
        client.produce("user-actions", [bad])
        wait_for("the dead letter", lambda: any(d.get("payload", "").find("dl-user") >= 0 for d in client.dead_letters()))
    visit(browser, console.url + "/ui/stream")
    table = browser.find_element(By.ID, "dead-letters").text
    assert "dl-user" in table and "article_clicks" in table, table
    assert browser.find_elements(By.CSS_SELECTOR, "#partitions tbody tr"), "no partitions listed"
    click_through(browser, browser.find_element(By.ID, "redrive"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Re-drive dead letters"
    click_through(browser, browser.find_element(By.ID, "confirm"))
    assert console_errors(browser) == []
    notice = browser.find_element(By.CSS_SELECTOR, "p.notice").text
    assert notice.startswith("Re-drove 1 dead letter ("), notice
    # It fails again (the time is still not a time) and comes back as a new dead letter.
    with Client(console.url) as client:
        wait_for("the re-driven event's new dead letter", lambda: len(client.dead_letters()) == 1)


def test_a_failed_job_is_retried_from_its_page(console: Server, browser: WebDriver) -> None:
    with Client(console.url) as client:
        job = client.backfill("late_import", max_attempts=1)
        wait_for("the job to fail", lambda: client.job(job.id).state == "failed")
    visit(browser, f"{console.url}/ui/jobs/{job.id}")
    assert browser.find_element(By.ID, "state").text == "failed"
    assert "late.parquet" in browser.find_element(By.ID, "error").text
    visit(browser, f"{console.url}/ui/jobs?state=failed")
    assert browser.find_elements(By.CSS_SELECTOR, f"#jobs tr[data-job='{job.id}']")
    visit(browser, f"{console.url}/ui")
    row = browser.find_element(By.CSS_SELECTOR, "#groups tr[data-group=user_profile]")
    assert "bad" in row.get_attribute("class") and "1 failed job" in row.text
    write_late_file(console.tmp)
    visit(browser, f"{console.url}/ui/jobs/{job.id}")
    click_through(browser, browser.find_element(By.LINK_TEXT, "Retry"))
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Retry job {job.id}?"
    click_through(browser, browser.find_element(By.ID, "confirm"))
    assert browser.find_element(By.CSS_SELECTOR, "p.notice").text.startswith(f"Job {job.id}: retried")

    def succeeded() -> bool:
        browser.refresh()
        return browser.find_element(By.ID, "state").text == "succeeded"

    wait_for("the retried job to succeed", succeeded)
    assert "10 written" in browser.find_element(By.CSS_SELECTOR, ".kv").text
    assert console_errors(browser) == []
    shoot(browser, "console-job.png")
    with Client(console.url) as client:
        got = client.get_online_features(["user_profile:country"], entities={"user_id": ["late3"]}).to_dict()
    assert got["country"] == ["NO"]


def test_the_overview_shows_rates_from_the_servers_own_samples(console: Server, browser: WebDriver) -> None:
    # Reads between two samples (10 s apart) give a rate and hit ratios.
    with Client(console.url) as client:
        def rated() -> bool:
            client.get_online_features(["user_profile:*"], entities={"user_id": [f"u{i}" for i in range(300)]})
            visit(browser, console.url + "/ui")
            row = browser.find_element(By.CSS_SELECTOR, "#groups tr[data-group=user_profile]")
            cells = row.find_elements(By.TAG_NAME, "td")
            return cells[6].text not in ("-", "") and "%" in cells[7].text

        wait_for("a read rate on the overview", rated, timeout=40)
    visit(browser, console.url + "/ui")
    shoot(browser, "console-overview.png")
    visit(browser, console.url + "/ui/groups/user_profile?user_id=u1,u2,u3")
    assert browser.find_elements(By.CSS_SELECTOR, ".chart svg"), "no chart drawn"
    shoot(browser, "console-group.png")


def test_a_group_older_than_its_declared_freshness_is_marked_until_a_newer_event_arrives(
    console: Server, browser: WebDriver
) -> None:
    def push(age_ms: int) -> None:
        record = {"entity": {"user_id": "s1"}, "event_time": int(time.time() * 1000) - age_ms, "features": {"score": 0.5}}
        answer = httpx.post(f"{console.url}/v1/push", json={"group": "user_scores", "records": [record]})
        assert answer.status_code == 200, answer.text

    def row() -> WebElement:
        visit(browser, console.url + "/ui")
        return browser.find_element(By.CSS_SELECTOR, "#groups tr[data-group=user_scores]")

    assert "at most 30 min" in row().text
    # Two hours old: past its 30 minutes, though a stream-fed group would have an hour.
    push(2 * 3_600_000)
    assert "bad" in row().get_attribute("class").split()
    assert "2.0 h ago" in row().text
    # A newer event brings it back; the objective is exported for alerts beside the event time.
    push(60_000)
    assert "bad" not in (row().get_attribute("class") or "").split()
    metrics = httpx.get(f"{console.url}/metrics").text
    assert 'cellar_group_freshness_objective_seconds{group="user_scores"} 1800' in metrics
    # A stream-fed group that declares none has the default hour.
    assert 'cellar_group_freshness_objective_seconds{group="recent_clicked_articles"} 3600' in metrics
    assert 'cellar_group_freshness_objective_seconds{group="user_profile"}' not in metrics
    visit(browser, console.url + "/ui/groups/user_scores")
    assert "stale past 30 min" in browser.find_element(By.TAG_NAME, "main").text
    assert "freshness: 30m" in browser.find_element(By.TAG_NAME, "main").text


def test_freshness_outlives_a_restart_through_the_registry(tmp_path: Path) -> None:
    event_time = int(time.time() * 1000) - 2 * 3_600_000
    first = start(tmp_path, repo_files={"scores.yaml": SCORES_REPO})
    try:
        record = {"entity": {"user_id": "s1"}, "event_time": event_time, "features": {"score": 0.5}}
        answer = httpx.post(f"{first.url}/v1/push", json={"group": "user_scores", "records": [record]})
        assert answer.status_code == 200, answer.text
    finally:
        # Stopped cleanly, a server records what it wrote last.
        first.stop()
    second = start(tmp_path, repo_files={"scores.yaml": SCORES_REPO})
    try:
        metrics = httpx.get(f"{second.url}/metrics").text
        newest = [
            line for line in metrics.splitlines()
            if line.startswith('cellar_group_newest_event_timestamp_seconds{group="user_scores"}')
        ]
        assert newest and float(newest[0].split()[-1]) == event_time / 1000, metrics
        overview = httpx.get(f"{second.url}/ui").text
        assert '<tr class="bad" data-group="user_scores">' in overview, overview
    finally:
        second.stop()


@pytest.fixture(scope="module")
def secured_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("secured-console")
    server = start(tmp, config=AUTH_CONFIG, extra_env=FAST_DEAD_LETTERS, repo_files=late_repo(tmp))
    yield server
    server.stop()


def sign_in(driver: WebDriver, server: Server, key: str, then: str) -> None:
    driver.delete_all_cookies()
    driver.get(server.url + then)
    assert driver.current_url.startswith(server.url + "/ui/login"), driver.current_url
    driver.find_element(By.ID, "key").send_keys(key)
    click_through(driver, driver.find_element(By.CSS_SELECTOR, "form button"))
    wait_for("the answer to the sign-in", lambda: "/ui/login?" in driver.current_url or driver.current_url == server.url + then, 10)
    assert console_errors(driver) == []


def test_without_the_permission_a_button_is_refused(secured_console: Server) -> None:
    with Client(secured_console.url, token=OPERATOR) as client:
        job = client.backfill("late_import", max_attempts=1)
        wait_for("the job to fail", lambda: client.job(job.id).state == "failed")
    driver = make_browser()
    try:
        # No credential: the sign-in form, which refuses a wrong key.
        sign_in(driver, secured_console, "cellar_not-a-key", f"/ui/jobs/{job.id}")
        assert "unknown API key" in driver.find_element(By.CSS_SELECTOR, "p.error").text
        # A viewer sees the job; its buttons are off and say the permission they need.
        driver.find_element(By.ID, "key").send_keys(VIEWER)
        click_through(driver, driver.find_element(By.CSS_SELECTOR, "form button"))
        wait_for("the job page", lambda: driver.current_url == f"{secured_console.url}/ui/jobs/{job.id}", 10)
        assert driver.find_element(By.ID, "state").text == "failed"
        refused = driver.find_element(By.CSS_SELECTOR, "#buttons .button.disabled")
        assert refused.text == "Retry"
        assert "needs operate_jobs on ingestion late_import" in driver.find_element(By.ID, "buttons").text
        assert not driver.find_elements(By.LINK_TEXT, "Retry")
        # Going round the button: the confirmation page and the post are refused.
        driver.get(f"{secured_console.url}/ui/jobs/{job.id}/retry")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Permission denied"
        assert all("403 (Forbidden)" in e for e in console_errors(driver))
        visit(driver, f"{secured_console.url}/ui/jobs/{job.id}")
        driver.execute_script(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
            " document.body.appendChild(f); f.submit();",
            f"/ui/jobs/{job.id}/retry",
        )
        wait_for("the refusal", lambda: driver.find_element(By.TAG_NAME, "h1").text == "Permission denied", 10)
        assert "operate_jobs" in driver.find_element(By.CSS_SELECTOR, "p.error").text
        assert all("403 (Forbidden)" in e for e in console_errors(driver))
        visit(driver, f"{secured_console.url}/ui/stream")
        assert "needs operate_dead_letters" in driver.find_element(By.TAG_NAME, "main").text
        # An operator signed in retries it.
        sign_in(driver, secured_console, OPERATOR, f"/ui/jobs/{job.id}")
        click_through(driver, driver.find_element(By.LINK_TEXT, "Retry"))
        click_through(driver, driver.find_element(By.ID, "confirm"))
        assert driver.find_element(By.CSS_SELECTOR, "p.notice").text.startswith(f"Job {job.id}: retried")
    finally:
        driver.quit()
    # The API is unchanged: the cookie is not a credential there, and a post from another
    # origin is refused even with it.
    assert httpx.get(f"{secured_console.url}/v1/jobs", cookies={"cellar_console": OPERATOR}).status_code == 401
    cross = httpx.post(
        f"{secured_console.url}/ui/jobs/{job.id}/cancel",
        cookies={"cellar_console": OPERATOR},
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status_code == 401
    same = httpx.post(
        f"{secured_console.url}/ui/jobs/{job.id}/cancel",
        cookies={"cellar_console": VIEWER},
        headers={"Origin": secured_console.url},
    )
    assert same.status_code == 403
