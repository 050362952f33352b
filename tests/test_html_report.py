"""index.html: self-contained (no script, no address outside the file), every table and plot
in it; and, where Debian's chromium is installed, rendered by a real headless browser that
is watched for requests (DevTools protocol over a pipe, plus chromium's own net log)."""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from PIL import Image

import report_records as rr
from segbench import report

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_BASELINE = ROOT / "baselines" / "quickstart"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own traffic, switched off so that the net log shows the page's alone: background
# networking, sync and component updates (the environment notes' flags); DNS prefetch and the
# search engine preconnect; the network-time and AI-mode eligibility queries (both seen in
# this chromium's net log at start). Its account reconcilor asks GAIA for the signed-in
# accounts at start and has no switch: it is pointed at a closed loopback port instead.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
                  "--dns-prefetch-disable",
                  "--disable-features=NetworkTimeServiceQuerying,AimEligibilityService,AimServerEligibilityEnabled,"
                  "AimServerRequestOnStartupEnabled,PreconnectToSearch,SearchEnginePreconnector,"
                  "PrewarmDefaultSearchEngine,DSEPrewarmNavigationThrottle",
                  "--gaia-url=http://127.0.0.1:9", "--remote-debugging-pipe"]
LOCAL_SCHEMES = ("file:", "data:", "about:")
LOOPBACK = re.compile(r"^(?:[a-z]+://)?(?:127\.\d+\.\d+\.\d+|localhost|\[::1\])(?::\d+)?(?:/.*)?$")


def quickstart_report(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """The report of the quickstart's records (the committed baseline, which the quickstart's
    `make baseline` writes), with profile records in the profiler's schema where it has none.
    Returns index.html and the table and figure names render() wrote."""
    results = tmp_path / "results"
    if QUICKSTART_BASELINE.is_dir():
        shutil.copytree(QUICKSTART_BASELINE, results)
    else:  # before a baseline is committed: records of the same kinds
        records = [rr.train_record("t1", "segmenter_p8", "segmenter_micro_p8_linear"),
                   rr.eval_record("e1", "segmenter_p8", "segmenter_micro_p8_linear", 40.0),
                   rr.eval_record("e2", "segmenter_p32", "segmenter_micro_p32_linear", 35.0)]
        rr.with_previews(results, records[1])
        rr.with_previews(results, records[2])
        rr.write(results, records)
    from segbench.results import load_records

    records = load_records(results)
    if not any(r["kind"] == "profile" for r in records):
        evaluated = {(r["model"], r["arch"]) for r in records if r["kind"] == "eval"}
        rr.write(results, [rr.profile_record(f"profile-{model}", model, arch, latency=5.0 + i, macs=(i + 1) * 1e8)
                           for i, (model, arch) in enumerate(sorted(evaluated))])
    written = report.render(results, tmp_path / "report")
    tables = sorted(p.stem for p in written if p.suffix == ".csv")
    figures = sorted(p.stem for p in written if p.suffix == ".png")
    return tmp_path / "report" / "index.html", tables, figures


def test_index_html_is_self_contained_with_every_table_and_plot(tmp_path):
    index, tables, figures = quickstart_report(tmp_path)
    html = index.read_text()
    assert {"accuracy", "accuracy_cost", "efficiency", "sizes", "per_class_synthetic_val", "training"} <= set(tables)
    assert {"miou", "miou_vs_macs", "miou_vs_fps", "sizes", "predictions"} <= set(figures)
    if QUICKSTART_BASELINE.is_dir():  # the quickstart's sweep: robustness tables, curves, heatmap, grid
        assert {"robustness", "robustness_summary"} <= set(tables)
        assert {"robustness_curves", "robustness_heatmap", "corruptions"} <= set(figures)
    assert sorted(re.findall(r'data-table="([^"]+)"', html)) == tables
    assert sorted(re.findall(r'data-figure="([^"]+)"', html)) == figures
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    for address in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert address.startswith(("data:image/png;base64,", "#")) or re.fullmatch(r"[\w.-]+\.(csv|tex)", address)
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and min(image.size) > 50


class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out):
    no port, no websocket library. Records every request the page makes."""

    def __init__(self, profile: Path, net_log: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_on_3_and_4():
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--log-net-log={net_log}",
             "--net-log-capture-mode=Everything", "about:blank"],
            preexec_fn=pipes_on_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self.events, self.requests = 0, queue.Queue(), []
        self._replies: dict[int, queue.Queue] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                data = json.loads(message)
                if "id" in data:
                    self._replies.setdefault(data["id"], queue.Queue()).put(data)
                else:
                    if data["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                        self.requests.append(data["params"].get("request", data["params"])["url"])
                    self.events.put(data)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._replies.setdefault(self._next_id, queue.Queue())
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._replies[self._next_id].get(timeout=60)
        assert "error" not in reply, reply
        return reply["result"]

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        while True:
            event = self.events.get(timeout=timeout)
            if event["method"] == method:
                return event

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1440, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session)
        return result["result"]["value"]

    def screenshot(self, session: str, path: Path) -> Path:
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            self.process.wait(timeout=30)
            os.close(self._to_browser)


def net_log_addresses(path: Path) -> list[str]:
    """Addresses off this machine that chromium's net log mentions: network URLs, hosts looked
    up, DNS queries (loopback stays on the machine)."""
    text = path.read_text(errors="replace")
    urls = re.findall(r'"(?:url|original_url)":\s*"((?:https?|wss?|ftp)://[^"]*)"', text)
    hosts = re.findall(r'"(?:host|hostname|qname)":\s*"([^"]+)"', text)
    return [address for address in urls + hosts if not LOOPBACK.match(address)]


def browse(tmp_path: Path, index: Path, screenshot: Path) -> tuple[dict, list[str], list[str]]:
    """Load ``index`` in chromium: the page's contents, its requests, and the net log's addresses."""
    browser = Chromium(tmp_path / "chromium-profile", tmp_path / "netlog.json")
    try:
        session = browser.open(index.as_uri())
        page = browser.evaluate(session, """(async () => {
            await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
            return {title: document.title,
                    tables: [...document.querySelectorAll('[data-table]')].map(e => ({
                        name: e.dataset.table, rows: e.querySelectorAll('tbody tr').length})),
                    figures: [...document.querySelectorAll('[data-figure]')].map(e => {
                        const img = e.querySelector('img');
                        return {name: e.dataset.figure, loaded: img.complete && img.naturalWidth > 0,
                                width: img.naturalWidth};
                    })};
        })()""")
        browser.screenshot(session, screenshot)
    finally:
        browser.close()
    return page, browser.requests, net_log_addresses(tmp_path / "netlog.json")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_quickstart_report_renders_in_headless_chromium_without_network(tmp_path):
    index, tables, figures = quickstart_report(tmp_path)
    screenshot = tmp_path / "index.png"
    page, requests, net_log = browse(tmp_path, index, screenshot)
    assert page["title"].startswith("segbench report")
    assert sorted(t["name"] for t in page["tables"]) == tables
    assert all(t["rows"] > 0 for t in page["tables"])
    assert sorted(f["name"] for f in page["figures"]) == figures
    assert all(f["loaded"] and f["width"] > 50 for f in page["figures"]), page["figures"]
    assert requests and all(url.startswith(LOCAL_SCHEMES) for url in requests), requests
    assert net_log == [], net_log  # nothing left the machine, from the page or from chromium itself
    with Image.open(screenshot) as image:
        assert image.size[0] >= 1400 and image.size[1] > 3000  # the whole page, not one screen
        assert len(image.convert("L").getcolors(1 << 16) or []) > 20  # drawn, not blank
    if os.environ.get("SEGBENCH_SCREENSHOT"):  # keep it (CI artifacts, or to look at)
        shutil.copy(screenshot, os.environ["SEGBENCH_SCREENSHOT"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_the_watch_sees_a_page_that_does_reach_out(tmp_path):
    """The checks above can fail: a page with an outside image and stylesheet is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><title>leaky</title>'
                    '<link rel="stylesheet" href="http://192.0.2.1/style.css"></head>'
                    '<body><img src="http://192.0.2.1/plot.png"></body></html>')
    _, requests, net_log = browse(tmp_path, page, tmp_path / "leaky.png")
    assert "http://192.0.2.1/plot.png" in requests and "http://192.0.2.1/style.css" in requests
    assert any("192.0.2.1" in address for address in net_log)
