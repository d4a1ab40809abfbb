"""Fixtures for the browser tier: an isolated JupyterLab on loopback, headless Debian chromium via
Playwright (sync API), and a probe that evaluates Python expressions in the notebook's kernel.

Env knobs: NBTUNE_CHROMIUM (default /usr/bin/chromium), NBTUNE_ARTIFACTS (default: a pytest temp dir).
Run: python -m pytest tests/browser -m browser -q -p no:cacheprovider -s
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("NBTUNE_CHROMIUM", "/usr/bin/chromium")
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]


def browser_missing() -> str | None:
    """Why the browser tier cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (set NBTUNE_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab server: base URL, token, notebook root and runtime dir."""

    def __init__(self, base: str, token: str, root: Path, runtime_dir: Path, proc: subprocess.Popen) -> None:
        self.base, self.token, self.root, self.runtime_dir, self.proc = base, token, root, runtime_dir, proc

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return json.loads(body) if body else None

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?token={self.token}&reset"

    def kernel_for(self, name: str, timeout_s: float = 120) -> str:
        """The kernel id of the session that has notebook `name` open."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            for s in self.api("/api/sessions") or []:
                if s.get("path", "").endswith(name) and s.get("kernel"):
                    return s["kernel"]["id"]
            time.sleep(0.5)
        raise TimeoutError(f"no kernel session for {name}")


class KernelProbe:
    """Evaluates expressions in a running kernel through a second client on its connection file.

    `value(expr)` uses `user_expressions` with `silent=True`: nothing shows in the notebook, no history.
    """

    def __init__(self, connection_file: Path) -> None:
        from jupyter_client import BlockingKernelClient
        self.kc = BlockingKernelClient()
        self.kc.load_connection_file(str(connection_file))
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def value(self, expr: str, timeout_s: float = 60):
        reply = self.kc.execute_interactive("", silent=True, user_expressions={"v": expr}, timeout=timeout_s,
                                            output_hook=lambda msg: None)
        v = reply["content"]["user_expressions"]["v"]
        if v.get("status") != "ok":
            raise RuntimeError(f"kernel could not evaluate {expr!r}: {v.get('ename')}: {v.get('evalue')}")
        text = v["data"]["text/plain"]
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    def close(self) -> None:
        self.kc.stop_channels()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("NBTUNE_ARTIFACTS")
    d = Path(env).resolve() if env else tmp_path_factory.mktemp("browser-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    print(f"\n[browser] artifacts in {d}")
    return d


@pytest.fixture(scope="session")
def lab(tmp_path_factory, artifacts):
    """`jupyter lab` from this interpreter's environment (so the ipywidgets/anywidget/plotly labextensions
    of the venv are found), isolated HOME/config/runtime dirs, token auth, loopback only."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("nbroot")
    home = tmp_path_factory.mktemp("jhome")
    cfg, runtime = home / "cfg", home / "rt"
    token = os.urandom(16).hex()
    env = dict(os.environ, HOME=str(home), JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(runtime),
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.pop("JUPYTER_PATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Silence the "Jupyter news?" toast, which otherwise covers the bottom-right corner.
    settings = cfg / "lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    port = _free_port()
    log = open(artifacts / "jupyterlab.log", "w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # the server refuses to start as root otherwise (CI containers)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = Lab(f"http://127.0.0.1:{port}", token, root, runtime, proc)
    t0 = time.monotonic()
    while True:
        try:
            server.api("/api/status")
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                proc.kill()
                log.close()
                raise RuntimeError(f"jupyter lab did not start; see {artifacts / 'jupyterlab.log'}")
            time.sleep(0.25)
    print(f"[browser] jupyter lab ready in {time.monotonic() - t0:.1f}s at {server.base}")
    try:
        yield server
    finally:
        try:
            for sess in server.api("/api/sessions") or []:  # shut kernels down before the server
                server.api(f"/api/sessions/{sess['id']}", method="DELETE")
        except Exception as exc:  # noqa: BLE001 - teardown must go on to stop the server
            print(f"[browser] session cleanup failed: {exc}")
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def page(artifacts, request):
    """A headless chromium page (fresh profile, one per test module, so each module's console is its own) that
    records console errors and page errors. The JupyterLab server is shared by all modules."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    profile = tempfile.mkdtemp(prefix="nbtune-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROME_ARGS,
            viewport={"width": 1500, "height": 1100})
        ctx.set_default_timeout(120_000)
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.console_lines = []
        pg.on("console", lambda m: pg.console_lines.append(
            (m.type, m.text, (m.location or {}).get("url", ""))))
        pg.on("pageerror", lambda e: pg.console_lines.append(("pageerror", str(e), "")))
        try:
            yield pg
        finally:
            (artifacts / f"console-{request.module.__name__.rsplit('.', 1)[-1]}.log").write_text(
                "\n".join(f"{t}: {text} [{url}]" for t, text, url in pg.console_lines))
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def poll(fn, cond, timeout_s: float, interval_s: float = 0.25):
    """Call fn() until cond(value) holds; return (value, seconds waited). Raises with the last value."""
    t0 = time.monotonic()
    while True:
        value = fn()
        if cond(value):
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s; last value {str(value)[:500]}")
        time.sleep(interval_s)


def open_and_run_all(lab: Lab, page, name: str, wait_ms: int = 180_000) -> KernelProbe:
    """Open notebook `name` (a unique name means a fresh kernel), wait for its kernel, attach a probe, and click
    Run > Run All Cells (accepting a "Select Kernel" dialog should the session race the click)."""
    import re

    from playwright.sync_api import expect
    page.goto(lab.url(name))
    page.wait_for_selector(".jp-Notebook", timeout=wait_ms)
    # The execution indicator reads "idle" before any kernel exists; the status-bar text does not.
    expect(page.locator("span.jp-StatusBar-TextItem[title^='Change kernel']")).to_have_text(
        re.compile(r"^Python 3.*\| Idle$"), timeout=wait_ms)
    probe = KernelProbe(lab.runtime_dir / f"kernel-{lab.kernel_for(name)}.json")
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
    accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
    if accept.count():
        accept.click()
    return probe


def end_session(lab: Lab, probe: KernelProbe, name: str) -> None:
    """Close the probe and shut down the kernel session of notebook `name`."""
    probe.close()
    try:
        for s in lab.api("/api/sessions") or []:
            if s.get("path", "").endswith(name):
                lab.api(f"/api/sessions/{s['id']}", method="DELETE")
    except Exception as exc:  # noqa: BLE001 - teardown must not hide the test's own result
        print(f"[browser] could not delete the session of {name}: {exc}")
