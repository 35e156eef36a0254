"""The menu-bar app under Xvfb, with trayer as the tray host, against the real daemon.

It opens the tray menu with a real click on the icon, takes screenshots (artifacts/app/),
and stops/starts serving, switches the SSD cache, turns Launch at login on and off, opens
the dashboard and quits with the menu's keyboard mnemonics
(xdotool sends real X key events to the open GTK menu). The daemon's state is checked
through /admin/api/status.

Environment: WUWEI_APP_BIN (default target/debug/wuwei-app), plus what
tests/e2e/conftest.py needs (WUWEI_BIN, WUWEI_TEST_MODELS).
Needs Debian's xvfb, trayer, xdotool and imagemagick (scripts/setup.sh installs them).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from conftest import running_daemon  # noqa: E402

ARTIFACTS = REPO / "artifacts" / "app"
APP_BIN = Path(os.environ.get("WUWEI_APP_BIN", REPO / "target" / "debug" / "wuwei-app"))
SCREEN = (1024, 768)
# trayer: a 120×32 panel at the bottom right of the screen.
TRAY_W, TRAY_H = 120, 32


def wait_for(what, fn, timeout=60, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def free_display():
    for n in range(90, 140):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return f":{n}"
    pytest.fail("no free X display number")


class Desktop:
    """Xvfb + trayer; every command runs against this display."""

    def __init__(self, tmp):
        for tool in ("Xvfb", "trayer", "xdotool", "import"):
            if not shutil.which(tool):
                pytest.fail(f"{tool} not installed (scripts/setup.sh installs it with WUWEI_SETUP_TEST=1)")
        self.display = free_display()
        self.env = dict(os.environ, DISPLAY=self.display)
        self.procs = []
        self.procs.append(
            subprocess.Popen(
                ["Xvfb", self.display, "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for("Xvfb", lambda: self.run("xdotool", "getdisplaygeometry", check=False).returncode == 0, 20)
        self.procs.append(
            subprocess.Popen(
                ["trayer", "--edge", "bottom", "--align", "right", "--widthtype", "pixel",
                 "--width", str(TRAY_W), "--height", str(TRAY_H), "--SetDockType", "false",
                 "--transparent", "false", "--tint", "0x808080"],
                env=self.env,
                stdout=open(tmp / "trayer.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )

    def run(self, *args, check=True):
        return subprocess.run(args, env=self.env, check=check, capture_output=True, text=True)

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.run("import", "-window", "root", str(path))
        return path

    def visible_windows(self, name=".*"):
        out = self.run("xdotool", "search", "--onlyvisible", "--name", name, check=False).stdout
        return set(out.split())

    def geometry(self, window):
        """(x, y, width, height) of a window."""
        out = self.run("xdotool", "getwindowgeometry", "--shell", window).stdout
        g = dict(line.split("=", 1) for line in out.split())
        return int(g["X"]), int(g["Y"]), int(g["WIDTH"]), int(g["HEIGHT"])

    def tray_icon(self):
        """The app's icon window once trayer has embedded it (inside trayer's panel)."""
        for w in self.visible_windows("^wuwei-app$"):
            x, y, width, height = self.geometry(w)
            if y >= SCREEN[1] - TRAY_H and x >= SCREEN[0] - TRAY_W and width <= TRAY_H + 8:
                return x + width // 2, y + height // 2
        return None

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def desktop(tmp_path):
    d = Desktop(tmp_path)
    yield d
    d.close()


def status(url):
    return requests.get(f"{url}/admin/api/status", timeout=10).json()


class App:
    def __init__(self, desktop, url, tmp):
        self.desktop = desktop
        self.log_path = tmp / "app.log"
        env = dict(desktop.env)
        env.update(
            WUWEI_APP_URL=url,
            # The test's daemon is the one to use; the app must not start its own.
            WUWEI_APP_SUPERVISE="0",
            WUWEI_APP_LOG="info,wuwei_app=debug",
            XDG_CONFIG_HOME=str(tmp / "config"),
            XDG_DATA_HOME=str(tmp / "data"),
        )
        for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            [str(APP_BIN)], env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT
        )

    def log(self):
        return self.log_path.read_text(errors="replace")

    def status_lines(self):
        return re.findall(r'menu status="([^"]*)"', self.log())

    def wait_status(self, line, timeout=60):
        def seen():
            if self.proc.poll() is not None:
                pytest.fail(f"the app exited with {self.proc.returncode}:\n{self.log()}")
            lines = self.status_lines()
            return lines and lines[-1] == line
        wait_for(f"status line {line!r} (log:\n{self.log()[-3000:]})", seen, timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def open_tray_menu(desktop, before):
    """Clicks the tray icon (a real pointer click through X); answers the windows that the
    menu maps."""
    x, y = wait_for("the tray icon", desktop.tray_icon, 30)
    desktop.run("xdotool", "mousemove", str(x), str(y), "click", "1")
    new = wait_for("the tray menu to open", lambda: desktop.visible_windows() - before, 10)
    time.sleep(0.5)  # let GTK draw it
    return new


def press(desktop, key):
    desktop.run("xdotool", "key", key)


def test_tray_menu_drives_the_daemon(desktop, tmp_path):
    if not APP_BIN.exists():
        pytest.fail(f"{APP_BIN} not built (cargo build -p wuwei-app)")
    with running_daemon(tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        app = App(desktop, url, tmp_path)
        try:
            # The daemon loads its default model at start.
            serving = f"Serving on :{port} · 1 model loaded"
            app.wait_status(serving)
            # Without a StatusNotifier host the indicator falls back to an XEmbed icon,
            # which trayer embeds.
            wait_for("the tray icon", desktop.tray_icon, 30)
            desktop.screenshot("tray.png")
            idle = desktop.visible_windows()

            # Stop serving: open the menu with a click, choose the item by its mnemonic.
            open_tray_menu(desktop, idle)
            desktop.screenshot("tray-menu-serving.png")
            press(desktop, "s")
            wait_for("the daemon to stop serving", lambda: not status(url)["serving"], 20)
            app.wait_status("Stopped")
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)

            # Start serving again the same way.
            open_tray_menu(desktop, idle)
            desktop.screenshot("tray-menu-stopped.png")
            press(desktop, "s")
            wait_for("the daemon to serve again", lambda: status(url)["serving"], 20)
            app.wait_status(serving)

            # The default-model submenu, by its mnemonic: a screenshot of the choices.
            open_tray_menu(desktop, idle)
            press(desktop, "f")
            time.sleep(0.5)
            desktop.screenshot("tray-menu-default-model.png")
            press(desktop, "Escape")
            press(desktop, "Escape")
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)

            # SSD cache: the test daemon has a tier of its own, on at start. The menu switches
            # it off and on again, and the app keeps the choice in its app.json.
            def cache():
                return requests.get(f"{url}/admin/api/cache", timeout=10).json()

            assert cache()["available"] and cache()["enabled"]
            open_tray_menu(desktop, idle)
            press(desktop, "c")
            wait_for("the SSD tier off", lambda: not cache()["enabled"], 20)
            prefs = tmp_path / "config" / "wuwei" / "app.json"
            wait_for("the saved choice", lambda: prefs.exists() and '"ssd_cache": false' in prefs.read_text(), 10)
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)
            open_tray_menu(desktop, idle)
            desktop.screenshot("tray-menu-ssd-off.png")
            press(desktop, "c")
            wait_for("the SSD tier on", lambda: cache()["enabled"], 20)
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)

            # Launch at login: the XDG autostart entry appears in XDG_CONFIG_HOME, starting
            # this app; choosing the item again removes it.
            entry = tmp_path / "config" / "autostart" / "wuwei.desktop"
            assert not entry.exists()
            open_tray_menu(desktop, idle)
            press(desktop, "l")
            wait_for("the autostart entry", entry.exists, 10)
            assert f'Exec="{APP_BIN.resolve()}"' in entry.read_text(), entry.read_text()
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)
            open_tray_menu(desktop, idle)
            desktop.screenshot("tray-menu-login-item.png")
            press(desktop, "l")
            wait_for("the autostart entry to go", lambda: not entry.exists(), 10)
            wait_for("the menu to close", lambda: not (desktop.visible_windows() - idle), 10)

            # Open dashboard: the app's window (hidden until now) shows the daemon's page.
            assert not desktop.visible_windows("^Wuwei$")
            open_tray_menu(desktop, idle)
            press(desktop, "d")
            (win, *_) = wait_for("the dashboard window", lambda: desktop.visible_windows("^Wuwei$"), 30)
            time.sleep(3)  # let WebKit load and paint the page
            desktop.screenshot("dashboard-window.png")
            # There is no window manager: the window covers the tray until it is unmapped.
            desktop.run("xdotool", "windowunmap", win)

            # Quit: the app ends; the daemon (not started by it) keeps running.
            open_tray_menu(desktop, desktop.visible_windows())
            press(desktop, "q")
            assert app.proc.wait(timeout=20) == 0, app.log()
            assert status(url)["serving"]
        finally:
            app.stop()
            (ARTIFACTS / "app.log").write_text(app.log())
