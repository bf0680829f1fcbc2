"""The /ui dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

`layercut serve` runs embedded (SQLite, jobs in-process) on a free port in a temporary folder, as in tests/ops;
the key comes from `layercut keys create`. Through the page only: sign in, register the builtin textures set,
get a 422 naming the field, start a tiny pipeline from the form, watch it run and reach `succeeded` with every
step succeeded, list and download a job's files, open the report; a wrong key and a key revoked mid-session
both show "unknown or revoked key". Screenshots go to test-artifacts/ at the repository root.

Chromium missing is a failure (run `make browser`), never a skip: CI installs it.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from layercut.testing import SOURCE_ROOT as ROOT
from layercut.testing.commands import layercut, serving_embedded

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts"
PIPELINE_TIMEOUT = 120


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`layercut serve` embedded on a free port: (base URL, env, folder)."""
    tmp_path = tmp_path_factory.mktemp("serve")
    with serving_embedded(tmp_path) as server:
        yield server


def new_key(server, tenant: str = "ui") -> str:
    _, env, tmp_path = server
    return json.loads(layercut("keys", "create", "--tenant", tenant, "--json", env=env, cwd=tmp_path).stdout)["key"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(
            f"the dashboard test needs Debian's Chromium and ChromeDriver ({', '.join(missing)} missing): "
            "run `make browser` (apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager never looks for one on the network.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


# --- page helpers --------------------------------------------------------------------------------------


def wait_for(driver, condition, timeout: float = 15, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def visible(driver, css: str):
    from selenium.webdriver.common.by import By

    def check(d):
        found = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else False

    return check


def fresh_page(driver, base: str) -> None:
    driver.get(f"{base}/ui")
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    driver.get(f"{base}/ui")
    wait_for(driver, visible(driver, "#api-key"), message="the sign-in form")


def sign_in(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "login-submit").click()


def set_value(element, value: str) -> None:
    element.clear()
    element.send_keys(value)


def severe_console_errors(driver) -> list[str]:
    """Console errors other than the failed requests a test causes on purpose (401, 422, a missing report's 404)."""
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        if "Failed to load resource" in message and any(f"status of {code}" in message for code in (401, 404, 422)):
            continue
        errors.append(message)
    return errors


def screenshot(driver, name: str) -> Path:
    """The whole page (the window is stretched to the page's height first)."""
    ARTIFACTS.mkdir(exist_ok=True)
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)")
    driver.set_window_size(width, max(700, min(int(height) + 140, 3000)))
    time.sleep(0.3)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    return path


# --- tests ---------------------------------------------------------------------------------------------


def test_wrong_key_is_refused_with_the_401_message(server, browser):
    base, _, _ = server
    fresh_page(browser, base)
    sign_in(browser, "lc_not-a-key-this-server-made")
    error = wait_for(browser, visible(browser, "#login-error"), message="no 401 message")
    assert "unknown or revoked key" in error.text.lower()
    assert browser.find_element("id", "login-view").is_displayed()
    assert not browser.find_element("id", "app-view").is_displayed()
    assert (
        browser.execute_script(
            "return sessionStorage.getItem('layercut.apiKey') || localStorage.getItem('layercut.apiKey')"
        )
        is None
    )
    screenshot(browser, "dashboard-401.png")
    assert not severe_console_errors(browser)


def test_pipeline_started_from_the_form_runs_live_and_succeeds(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, _, tmp_path = server
    key = new_key(server)
    auth = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    fresh_page(browser, base)
    sign_in(browser, key)
    wait_for(browser, visible(browser, "#app-view"), message="the dashboard after signing in")
    assert browser.execute_script("return sessionStorage.getItem('layercut.apiKey')") == key  # this tab only
    assert key[:10] in browser.find_element(By.ID, "key-label").text

    # A new tenant has no datasets: the page says so and offers the builtin textures set.
    wait_for(browser, visible(browser, "#datasets-empty"), message="the no-datasets hint")
    assert browser.find_element(By.ID, "pipeline-submit").get_attribute("disabled") is not None
    Select(browser.find_element(By.ID, "builtin")).select_by_value("textures")
    browser.find_element(By.ID, "register-submit").click()
    wait_for(
        browser, lambda d: d.find_element(By.ID, "dataset").get_attribute("value"), message="the registered dataset"
    )
    datasets = httpx.get(f"{base}/v1/datasets", headers=auth, timeout=10).json()["items"]
    assert [d["name"] for d in datasets] == ["textures"]
    assert browser.find_element(By.ID, "dataset").get_attribute("value") == datasets[0]["id"]
    assert "textures" in browser.find_element(By.ID, "datasets-list").text
    assert datasets[0]["id"][:8] in browser.find_element(By.ID, "datasets-list").text  # ids tell entries apart
    # Registering the same built-in again gives back the same dataset: still one entry.
    if not browser.find_element(By.ID, "register-submit").is_displayed():
        browser.find_element(By.CSS_SELECTOR, "#register-box summary").click()
    browser.find_element(By.ID, "register-submit").click()
    time.sleep(1.0)
    assert len(httpx.get(f"{base}/v1/datasets", headers=auth, timeout=10).json()["items"]) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#datasets-list li")) == 1

    # The form: a value the API refuses comes back as a 422 shown next to the field it names.
    Select(browser.find_element(By.ID, "arch")).select_by_value("smallcnn")
    set_value(browser.find_element(By.ID, "image-size"), "16")
    set_value(browser.find_element(By.ID, "epochs"), "1")
    assert Select(browser.find_element(By.ID, "cut")).first_selected_option.get_attribute("value") == "auto"
    assert browser.find_element(By.ID, "max-drop").get_attribute("value") == "1"  # the API's default budget
    set_value(browser.find_element(By.ID, "max-drop"), "-2")
    browser.find_element(By.ID, "pipeline-submit").click()
    field_error = wait_for(
        browser,
        visible(browser, '.field[data-field="data.image_size"] .field-error'),
        message="no 422 message next to the image size",
    )
    assert "data.image_size" in field_error.text and "greater than or equal to 32" in field_error.text
    drop_error = browser.find_element(By.CSS_SELECTOR, '.field[data-field="select.max_drop"] .field-error')
    assert drop_error.is_displayed() and "select.max_drop" in drop_error.text, "the budget's 422 beside its field"
    assert "data.image_size" in browser.find_element(By.ID, "pipeline-errors").text
    assert httpx.get(f"{base}/v1/pipelines", headers=auth, timeout=10).json()["items"] == []

    # The knee ignores the budget (its field is disabled); back to the auto cut with a budget of 2.5 points.
    Select(browser.find_element(By.ID, "cut")).select_by_value("knee")
    assert not browser.find_element(By.ID, "max-drop").is_enabled()
    Select(browser.find_element(By.ID, "cut")).select_by_value("auto")
    set_value(browser.find_element(By.ID, "max-drop"), "2.5")
    set_value(browser.find_element(By.ID, "image-size"), "32")
    browser.find_element(By.ID, "pipeline-submit").click()
    wait_for(browser, visible(browser, "#pipeline-ok"), message="no 'started' message")
    assert not browser.find_element(By.ID, "pipeline-errors").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, ".field.invalid")
    pipelines = httpx.get(f"{base}/v1/pipelines", headers=auth, timeout=10).json()["items"]
    assert len(pipelines) == 1, "one submission, one pipeline"
    pipeline = pipelines[0]
    assert pipeline["params"]["arch"] == "smallcnn" and pipeline["params"]["data"]["image_size"] == 32
    assert pipeline["params"]["train"]["epochs"] == 1 and pipeline["params"]["stop_after"] == "explain"
    assert pipeline["params"]["data"]["dataset_id"] == datasets[0]["id"]
    assert pipeline["params"]["truncate"]["cut"] == "auto" and pipeline["params"]["select"]["max_drop"] == 2.5
    card_css = f'[data-pipeline-id="{pipeline["id"]}"]'
    wait_for(browser, visible(browser, card_css), message="the pipeline never appeared in the list")

    # Watch the page (never reloaded) until the pipeline succeeded, noting what it showed on the way.
    read_page = """
        const card = document.querySelector(arguments[0]);
        if (!card) return null;
        const rows = [...document.querySelectorAll('#jobs tr.job')];
        return {status: card.dataset.status,
                steps: [...card.querySelectorAll('.step')].map(s => [s.dataset.kind, s.dataset.status, s.innerText]),
                jobs: rows.map(r => [r.dataset.status, r.querySelector('.pct').textContent,
                                     r.querySelector('.eta').textContent])};
    """
    seen_status, seen_steps, seen_percent = set(), set(), set()
    snapshot, shot_running = None, False
    deadline = time.monotonic() + PIPELINE_TIMEOUT
    while time.monotonic() < deadline:
        snapshot = browser.execute_script(read_page, card_css)
        if snapshot:
            seen_status.add(snapshot["status"])
            seen_steps.update((kind, status) for kind, status, _ in snapshot["steps"])
            seen_percent.update(pct for status, pct, _ in snapshot["jobs"] if status == "running")
            if not shot_running and ("train", "running") in seen_steps:
                screenshot(browser, "dashboard-running.png")  # what a run looks like while it runs
                shot_running = True
            if snapshot["status"] in ("succeeded", "failed", "cancelled"):
                break
        time.sleep(0.15)
    log_tail = (tmp_path / "serve.log").read_text()[-3000:]
    assert snapshot and snapshot["status"] == "succeeded", (
        f"pipeline did not succeed within {PIPELINE_TIMEOUT} s: {snapshot}\n{log_tail}"
    )
    kinds = ["train", "analyze", "select", "compare", "explain"]  # the default cut: the accuracy budget
    assert [s[0] for s in snapshot["steps"]] == kinds
    assert all(s[1] == "succeeded" for s in snapshot["steps"]), snapshot["steps"]
    # Live progress: the page showed the pipeline and its steps running before they succeeded.
    assert "running" in seen_status, seen_status
    assert ("train", "running") in seen_steps, seen_steps
    assert seen_percent, "a running job's percent was shown"
    assert len(snapshot["jobs"]) == len(kinds) and all(
        j[0] == "succeeded" and j[1] == "100%" for j in snapshot["jobs"]
    ), snapshot["jobs"]
    truth = httpx.get(f"{base}/v1/pipelines/{pipeline['id']}", headers=auth, timeout=10).json()
    assert truth["status"] == "succeeded" and all(s["status"] == "succeeded" for s in truth["steps"])
    title_text = browser.find_element(By.CSS_SELECTOR, f"{card_css} .p-title").text
    assert "auto cut, ≤ 2.5 pts drop" in title_text, title_text  # the card names the budget

    # The report link is there; it is fetched with the key and shown from a blob: URL in a new tab.
    card = browser.find_element(By.CSS_SELECTOR, card_css)
    report = wait_for(
        browser,
        lambda d: (
            card.find_element(By.CSS_SELECTOR, ".report-btn").is_displayed()
            and card.find_element(By.CSS_SELECTOR, ".report-btn")
        ),
        message="no report button",
    )
    served = httpx.get(f"{base}/v1/pipelines/{pipeline['id']}/report", headers=auth, timeout=30)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html"), served.text[:500]
    title = re.search(r"<title>(.*?)</title>", served.text, re.S)
    main_window = browser.current_window_handle
    report.click()
    wait_for(browser, lambda d: len(d.window_handles) == 2, message="the report tab did not open")
    browser.switch_to.window([h for h in browser.window_handles if h != main_window][0])
    wait_for(browser, lambda d: d.current_url.startswith("blob:"), timeout=30, message="the report never loaded")
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    assert browser.execute_script("return document.body.innerText.trim().length") > 0
    if title:
        assert browser.title == html.unescape(title.group(1).strip())
    # The blob: page inherits the dashboard's CSP: the report's inline CSS and embedded pictures must still work.
    assert browser.execute_script(
        "return [...document.querySelectorAll('style')].every(s => s.sheet && s.sheet.cssRules.length > 0)"
    )
    assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    blocked = [m for m in severe_console_errors(browser) if "Content Security Policy" in m]
    assert not blocked, f"the dashboard's CSP (inherited by the blob: page) blocked part of the report: {blocked}"
    browser.close()
    browser.switch_to.window(main_window)

    # Files of the compare job: listed from GET /v1/jobs/{id} and downloaded with the key.
    compare_id = next(s["id"] for s in truth["steps"] if s["kind"] == "compare")
    row = browser.find_element(By.CSS_SELECTOR, f'tr.job[data-job-id="{compare_id}"]')
    assert row.find_element(By.CSS_SELECTOR, ".report-btn").is_displayed()
    assert not row.find_element(By.CSS_SELECTOR, ".cancel-btn").is_displayed()
    row.find_element(By.CSS_SELECTOR, ".files-btn").click()
    files_css = f'tr.files-row[data-files-for="{compare_id}"] li'
    wait_for(browser, visible(browser, files_css), message="the compare job's files were not listed")
    listed = {e.find_element(By.TAG_NAME, "button").text: e for e in browser.find_elements(By.CSS_SELECTOR, files_css)}
    artifacts = httpx.get(f"{base}/v1/jobs/{compare_id}", headers=auth, timeout=10).json()["artifacts"]
    assert set(listed) == {a["name"] for a in artifacts} and "compare.json" in listed
    listed["compare.json"].find_element(By.TAG_NAME, "button").click()
    target = browser.downloads / "compare.json"
    deadline = time.monotonic() + 20
    while not (target.is_file() and target.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    expected = next(a for a in artifacts if a["name"] == "compare.json")
    assert target.is_file(), list(browser.downloads.iterdir())
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected["sha256"]

    # Idle now: the page says so; then the screenshot of the finished run.
    wait_for(browser, lambda d: "idle" in d.find_element(By.ID, "live-text").text, message="the page never went idle")
    path = screenshot(browser, "dashboard.png")
    assert path.stat().st_size > 10_000
    assert not severe_console_errors(browser)
    print(f"pipeline through the dashboard in {time.monotonic() - started:.1f} s; screenshot {path}")


def test_a_key_revoked_mid_session_asks_again_and_sign_out_forgets_the_key(server, browser):
    from selenium.webdriver.common.by import By

    base, env, tmp_path = server
    key = new_key(server, tenant="ui-revoke")
    fresh_page(browser, base)
    browser.find_element(By.ID, "remember").click()
    sign_in(browser, key)
    wait_for(browser, visible(browser, "#app-view"))
    assert browser.execute_script("return localStorage.getItem('layercut.apiKey')") == key  # "Remember" ticked

    browser.refresh()  # a stored key signs in again without asking
    wait_for(browser, visible(browser, "#app-view"), message="the remembered key was not used")
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, visible(browser, "#login-view"))
    assert (
        browser.execute_script(
            "return localStorage.getItem('layercut.apiKey') || sessionStorage.getItem('layercut.apiKey')"
        )
        is None
    )

    sign_in(browser, key)
    wait_for(browser, visible(browser, "#app-view"))
    layercut("keys", "revoke", "--prefix", key[:10], env=env, cwd=tmp_path)
    browser.find_element(By.ID, "refresh").click()
    error = wait_for(browser, visible(browser, "#login-error"), message="the revoked key was not noticed")
    assert "unknown or revoked key" in error.text.lower()
    assert not browser.find_element(By.ID, "app-view").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('layercut.apiKey')") is None
    assert not severe_console_errors(browser)
