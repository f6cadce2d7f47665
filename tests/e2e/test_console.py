"""The write-back console in a real browser: headless chromium (Debian's package), driven
through chromedriver, loads /console from a system of its own started with tokens, and
the page must show what the API says as it changes.

CONSOLE_SCREENSHOT=docs/console.png saves a screenshot of the page while a few bulk
updates drain (the README shows it)."""

import os
import re
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from testkit.api import Api
from testkit.stack import REPO_ROOT, own_stack, tokens_env

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
TOKENS = {"reader": "console-reader-token", "writer": "console-writer-token", "admin": "console-admin-token"}
ALBUMS = 347
WAIT_S = 30


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # Refused writes reach the dead letters in well under a second.
    with own_stack("console", tmp_path_factory.mktemp("console"), {
        "API_TOKENS": tokens_env(TOKENS), "WRITEBACK_MAX_ATTEMPTS": "3", "WRITEBACK_RETRY_BACKOFF_MS": "50",
    }) as stack:
        api = Api(stack)
        api.session.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
        yield stack, api


@pytest.fixture(scope="module")
def browser():
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: the console test needs Debian's chromium and chromium-driver "
                        f"packages (apt-get install {package}; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    # Both paths given: Selenium Manager then has nothing to look up or download.
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The page as a user sees it: its figures, buttons and messages by id."""

    def __init__(self, driver, base_url):
        self.driver = driver
        self.base_url = base_url

    def open(self):
        self.driver.get(f"{self.base_url}/console")

    def text(self, element_id) -> str:
        return self.driver.find_element(By.ID, element_id).text

    def number(self, element_id) -> int:
        return int(self.text(element_id).replace(",", ""))

    def wait(self, condition, message):
        WebDriverWait(self.driver, WAIT_S, poll_frequency=0.1).until(lambda _: condition(), message)

    def wait_text(self, element_id, pattern):
        self.wait(lambda: re.search(pattern, self.text(element_id)),
                  f"#{element_id} never matched {pattern!r}")
        return self.text(element_id)

    def use_token(self, role):
        field = self.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(TOKENS[role])
        self.click("save-token")
        self.wait_text("token-state", "token set")

    def click(self, element_id):
        self.driver.find_element(By.ID, element_id).click()

    def figures_updated_after(self, updated):
        self.wait(lambda: self.text("updated") != updated, "the figures were not updated")

    def dead_letter_row(self, key):
        rows = self.driver.find_elements(By.CSS_SELECTOR, f'#dead-letters tr[data-key="{key}"]')
        return rows[0] if rows else None

    def browser_log(self):
        return self.driver.get_log("browser")


@pytest.fixture(scope="module")
def console(system, browser):
    stack, _ = system
    page = Console(browser, stack.gateway_url)
    page.open()
    return page


@pytest.fixture
def poison_constraint(system):
    """Postgres refuses titles starting with POISON, as a constraint added after the writes were accepted."""
    _, api = system
    with api.poison_titles_refused():
        yield


def test_without_a_token_the_page_says_which_role_it_needs(console):
    message = console.wait_text("poll-error", "polling failed")
    assert "401" in message and "needs a bearer token" in message and "role reader" in message
    assert console.text("pending") == "–"
    assert console.text("token-state") == "no token"


def test_the_page_loads_nothing_from_another_host(console):
    urls = console.driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map((entry) => entry.name)]")
    assert len(urls) >= 4, urls  # the page, its script, style sheet and icon, and API calls
    assert [url for url in urls if not url.startswith(console.base_url + "/")] == []


def test_a_reader_sees_the_figures_but_may_not_run_a_bulk_update(console, system):
    _, api = system
    console.use_token("reader")
    console.wait_text("updated", r"updated \d\d:\d\d:\d\d")
    console.wait(lambda: console.text("poll-error") == "", "the error of the tokenless polls stayed")
    status = api.get("/write-back/status").json()
    assert console.number("pending") == status["pending"]
    assert console.number("accepted-total") == status["accepted_total"]
    assert console.number("failed") == status["failed"] == 0
    assert console.text("dead-letter-count") == "0 dead letters"
    console.click("bulk-random")
    refused = console.wait_text("action-message", "403")
    assert "POST /albums/bulk-random needs role admin; the token's role is reader" in refused
    assert "token of role admin" in refused
    assert api.get("/write-back/status").json()["accepted_total"] == status["accepted_total"]


def test_a_bulk_update_shows_pending_rise_then_drain(console, system):
    stack, api = system
    console.use_token("admin")
    accepted_before = api.get("/write-back/status").json()["accepted_total"]
    flushed_before = api.get("/write-back/status").json()["flushed_total"]
    stack.stop("write-back-worker")  # nothing drains until the page has seen the rows pending
    try:
        console.click("bulk-random")
        assert re.fullmatch(rf"\d\d:\d\d:\d\d {ALBUMS} albums got a random title",
                            console.wait_text("action-message", "albums got a random title"))
        console.wait(lambda: console.number("accepted-total") == accepted_before + ALBUMS,
                     "the accepted total did not grow by the bulk")
        assert console.number("pending") == ALBUMS
        assert re.fullmatch(r"\d+\.\d s", console.text("oldest-age")), console.text("oldest-age")
        console.wait(lambda: console.text("accepted-rate") not in ("–", "0"), "no accepted rate was shown")
        updated = console.text("updated")
        console.figures_updated_after(updated)
        assert console.number("pending") == ALBUMS, "pending rows drained with no worker running"
    finally:
        stack.start("write-back-worker")
    console.click("flush")
    console.wait_text("action-message", "flush scheduled")
    console.wait(lambda: console.number("pending") == 0, "the pending rows never drained")
    assert console.text("oldest-age") == "none pending"
    assert console.number("flushed-total") >= flushed_before + ALBUMS
    assert api.get("/write-back/status").json()["pending"] == 0


def look_up(console, entity, row_id):
    Select(console.driver.find_element(By.ID, "lookup-entity")).select_by_value(entity)
    field = console.driver.find_element(By.ID, "lookup-id")
    field.clear()
    field.send_keys(str(row_id))
    before = console.text("lookup-time")
    console.driver.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    console.wait(lambda: console.text("lookup-error") or console.text("lookup-time") != before,
                 f"the lookup of {entity} {row_id} showed nothing")


def side(console, prefix):
    return {name: console.text(f"{prefix}-{name}") for name in
            (("state", "since", "version", "value") if prefix == "cache" else ("present", "version", "value"))}


def test_a_row_lookup_shows_cache_and_postgres_side_by_side(console, system):
    stack, api = system
    assert api.get("/albums/193").status_code == 200  # the cache holds the whole row, not only the fields written
    stack.stop("write-back-worker")  # the write stays on its way to Postgres while the page looks
    try:
        accepted = api.patch("/albums/193", json={"title": "Looked up in the console"}).json()
        look_up(console, "album", 193)
        cache, postgres = side(console, "cache"), side(console, "pg")
        assert cache["state"] in ("pending", "in flight"), cache
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z \([\d.]+ s ago\)", cache["since"]), cache
        assert int(cache["version"]) == accepted["version"] > int(postgres["version"])
        assert '"title": "Looked up in the console"' in cache["value"]
        assert postgres["present"] == "yes" and "Looked up in the console" not in postgres["value"]
        assert console.text("agree") == "differ" and console.text("lookup-error") == ""
    finally:
        stack.start("write-back-worker")
    api.flush()
    look_up(console, "album", 193)
    cache, postgres = side(console, "cache"), side(console, "pg")
    assert cache["state"] == "clean" and cache["version"] == postgres["version"] == str(accepted["version"])
    assert '"title": "Looked up in the console"' in postgres["value"] and console.text("agree") == "agree"

    look_up(console, "artist", 10**9)
    assert re.fullmatch(r"artist 1000000000: 404: .+", console.text("lookup-error")), console.text("lookup-error")
    assert not console.driver.find_element(By.ID, "lookup-result").is_displayed()
    look_up(console, "artist", 0)
    assert console.text("lookup-error").startswith("artist 0: 400: artist_id"), console.text("lookup-error")


def test_when_polling_fails_the_page_says_so_and_recovers(console, system):
    stack, _ = system
    stack.stop("cache-svc")
    try:
        message = console.wait_text("poll-error", "polling failed")
        assert "503" in message and "cache service unavailable" in message
        assert "stale" in console.driver.find_element(By.TAG_NAME, "body").get_attribute("class")
    finally:
        stack.start("cache-svc")
    console.wait(lambda: console.text("poll-error") == "", "the polling error stayed after cache-svc came back")


def test_dead_letters_are_listed_retried_and_discarded(console, system, poison_constraint):
    _, api = system
    assert api.patch("/albums/70", json={"title": "POISON one"}).status_code == 202
    console.wait(lambda: console.dead_letter_row("album:70") is not None, "album:70 never showed as a dead letter")
    row = console.dead_letter_row("album:70")
    assert "album_no_poison" in row.text and "POISON one" in row.text
    assert console.number("failed") == 1 and console.text("dead-letter-count") == "1 dead letter"

    api.accept_poison_titles()
    row.find_element(By.CLASS_NAME, "retry").click()
    assert console.wait_text("dead-letter-message", "album:70").endswith(" album:70: scheduled again")
    console.wait(lambda: console.dead_letter_row("album:70") is None, "the retried dead letter stayed")
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 70") == [("POISON one",)]

    api.refuse_poison_titles()
    assert api.patch("/albums/72", json={"title": "POISON two"}).status_code == 202
    console.wait(lambda: console.dead_letter_row("album:72") is not None, "album:72 never showed as a dead letter")
    console.dead_letter_row("album:72").find_element(By.CLASS_NAME, "discard").click()
    alert = WebDriverWait(console.driver, WAIT_S).until(lambda driver: driver.switch_to.alert)
    assert "album:72" in alert.text
    alert.accept()
    assert console.wait_text("dead-letter-message", "album:72").endswith(" album:72: discarded")
    console.wait(lambda: console.dead_letter_row("album:72") is None, "the discarded dead letter stayed")
    assert console.number("failed") == 0
    assert api.get("/write-back/dead-letters").json()["total"] == 0


@pytest.mark.skipif(not os.environ.get("CONSOLE_SCREENSHOT"), reason="CONSOLE_SCREENSHOT=<path> saves a screenshot")
def test_screenshot_of_the_page_mid_drain(console, system):
    """Bulk updates of some 10,000 albums a few seconds apart, an artist's write that
    Postgres refuses, a row lookup, and the page as the last bulk drains in small batches."""
    stack, api = system
    api.sql("INSERT INTO album (album_id, title, artist_id) SELECT album_id + 347 * k, title, artist_id "
            "FROM album, generate_series(1, 29) AS k WHERE album_id <= 347")
    api.sql("ALTER TABLE artist ADD CONSTRAINT artist_no_poison CHECK (name NOT LIKE 'POISON%%') NOT VALID")
    # Small batches, so that the drain takes a few polls.
    stack.stop("cache-svc")
    stack.configure("cache-svc", WRITEBACK_BATCH_SIZE="20")
    stack.start("cache-svc")
    try:
        assert api.patch("/artists/5", json={"name": "POISON demo"}).status_code == 202
        for _ in range(4):
            console.click("bulk-random")
            console.wait_text("action-message", "albums got a random title")
            for _ in range(3):
                console.figures_updated_after(console.text("updated"))
        assert api.get("/albums/193").status_code == 200
        stack.stop("write-back-worker")
        try:
            console.click("bulk-random")
            console.wait(lambda: console.number("pending") > ALBUMS, "the bulk never showed as pending")
            look_up(console, "album", 193)
            console.figures_updated_after(console.text("updated"))
        finally:
            stack.launch("write-back-worker")
        console.wait(lambda: console.text("flushed-rate") not in ("–", "0"), "the drain never showed")
        console.driver.set_window_size(1280, 1200)
        target = Path(path) if Path(path := os.environ["CONSOLE_SCREENSHOT"]).is_absolute() else REPO_ROOT / path
        console.driver.save_screenshot(str(target))
        stack.wait_ready("write-back-worker")
        api.flush(120)
    finally:
        api.delete("/write-back/dead-letters/artist:5")
        api.sql("ALTER TABLE artist DROP CONSTRAINT artist_no_poison")


def test_the_browser_logged_no_script_error(console):
    """Over the whole session (the tests above): no script error and no load the policy
    refused; the only errors logged are the API's answers the tests provoked on purpose
    (400 and 404 for lookups, 401 and 403 for missing roles, 503 while cache-svc was down)."""
    problems = [entry for entry in console.browser_log() if entry["level"] in ("SEVERE", "WARNING")
                and not (entry.get("source") == "network"
                         and re.search(r"status of (400|401|403|404|503) ", entry["message"]))]
    assert problems == [], problems
