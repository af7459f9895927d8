"""Profile, profile-driven build, training record and the HTML report, on the host: ``poetc profile`` times every
node and the pager; ``poetc build --profile`` schedules with those times; ``poetc train`` writes train.json;
``poetc report`` writes one self-contained page whose figures and headline match schedule.json and train.json,
checked by parsing the page and in Debian's headless chromium: every figure renders, the console stays silent,
and a screenshot is kept (out/screenshots/, or $POETC_ARTIFACTS)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.conftest import poetc

from poetc.device import profile
from poetc.emit import builddir
from poetc.report import page as report_page


def need(*tools: str) -> None:
    """Skip without the tools, except in CI, where scripts/setup.sh must have installed them."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("prof")
    prof, out = d / "prof", d / "b"
    r = poetc("profile", "digits-mlp", "--board", "host", "--batch", "16", "--out", str(prof))
    prof = prof / "profile.json"
    assert "model/meas." in r.stdout and "FLOP model / measured: step" in r.stdout and "pager:" in r.stdout
    poetc(
        "build", "digits-mlp", "--board", "host", "--batch", "16", "--profile", str(prof), "--out", str(out)
    )
    poetc("train", str(out), "--steps", "12", "--lr", "0.2", "--eval-every", "4")
    poetc("report", str(out))
    return {"profile": prof, "build": out, "dir": d}


def test_profile_times_every_node_and_the_pager(run):
    prof = profile.load(run["profile"])
    doc = json.loads(run["profile"].read_text())
    man = json.loads((run["build"] / "poetc.json").read_text())
    assert [n.name for n in prof.nodes] == [n["name"] for n in man["nodes"]]
    assert (
        prof.board == "host" and prof.batch == 16 and prof.tick_unit == "ns" and prof.strategy == "store-all"
    )
    assert all(n.seconds > 0 and n.runs == 1 for n in prof.nodes)
    assert prof.pager is not None and prof.pager.bytes_per_s and prof.pager.bytes_per_s > 1e6
    assert {"poetc", "cc", "python"} <= set(doc["tools"]) and doc["model_sha256"] == man["model"]["sha256"]


def test_build_with_a_profile_predicts_with_the_measured_times(run):
    b = run["build"]
    assert (b / "profile.json").is_file() and (b / "program.json").is_file()
    prof = profile.load(run["profile"])
    sched = json.loads((b / "schedule.json").read_text())
    # store-all at the host's RAM: one computation of every node at its measured time
    assert sched["floor_energy_j"] == pytest.approx(sum(n.seconds for n in prof.nodes) * 2e9 / 4.01e7)
    assert json.loads((b / "program.json").read_text())["cost_source"] == str(run["profile"])


def test_a_profile_for_another_model_or_board_is_refused(run, tmp_path):
    r = poetc("build", "digits-mlp", "--board", "host", "--profile", str(run["profile"]), "--out", str(tmp_path / "x"),
              check=False)  # fmt: skip
    assert r.returncode != 0 and "run poetc profile for it" in r.stderr  # batch 32, not 16
    r = poetc("solve", "digits-mlp", "--board", "qemu-m4", "--batch", "16", "--profile", str(run["profile"]),
              check=False)  # fmt: skip
    assert r.returncode != 0 and "measured on board host, not qemu-m4" in r.stderr


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.rows: dict[str, str] = {}
        self.energy: dict[str, list[str]] = {}
        self.imgs: dict[str, str] = {}
        self.node_rows = 0
        self.tiles: dict[str, dict[str, str]] = {}
        self.first_in_body = ""
        self._in_body = False
        self._table = ""
        self._row = ""
        self.consistent = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._in_body and not self.first_in_body:
            self.first_in_body = a.get("id") or tag
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
            self._in_body = True
        elif tag == "div" and a.get("class") == "tile":
            self.tiles[a["id"]] = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
        elif tag == "table":
            self._table = a.get("id") or ""
            if self._table == "schedule-figures":
                self.consistent = a.get("data-consistent")
        elif tag == "tr" and self._table == "schedule-figures" and "data-key" in a:
            self.rows[a["data-key"]] = a["data-value"]
        elif tag == "tr" and self._table == "energy-breakdown" and "data-row" in a:
            self._row = a["data-row"]
            self.energy[self._row] = []
        elif tag == "tr" and self._table == "node-table":
            self.node_rows += 1
        elif tag == "td" and self._table == "energy-breakdown" and "data-value" in a:
            self.energy[self._row].append(a["data-value"])
        elif tag == "img":
            self.imgs[a["id"]] = a["src"]

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = ""


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def test_report_figures_match_schedule_json(run):
    b = run["build"]
    page = _parse((b / "report.html").read_text())
    sched = json.loads((b / "schedule.json").read_text())
    assert page.consistent == "yes"  # a replay of program.json reproduced schedule.json
    for key, _label in report_page.SCHEDULE_KEYS:
        v = sched.get(key)
        assert page.rows[key] == (v if isinstance(v, str) else repr(v)), key
    pred = [float(x) for x in page.energy["predicted"]]
    assert pred[0] == pytest.approx(sched["compute_energy_j"], rel=1e-12)
    assert pred[1] + pred[2] == pytest.approx(sched["paging_energy_j"], abs=1e-15)
    assert pred[3] == pytest.approx(sched["energy_j"], rel=1e-12)
    counted = json.loads(builddir.open_build(b).train_record_path().read_text())["counted_energy_per_step"]
    assert float(page.energy["counted"][0]) == pytest.approx(counted["compute_j"], rel=1e-12)
    man = json.loads((b / "poetc.json").read_text())
    assert page.node_rows == 1 + len(man["nodes"])  # header row + one per node
    assert set(page.imgs) == {"fig-schedule", "fig-ram", "fig-energy", "fig-nodes", "fig-loss"}
    for src in page.imgs.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in (b / "report.html").read_text().replace("http://www.w3.org", "")


def test_report_headline_states_fit_energy_and_accuracy(run):
    b = run["build"]
    page = _parse((b / "report.html").read_text())
    sched = json.loads((b / "schedule.json").read_text())
    train = json.loads((builddir.open_build(b).run_dir()[1] / "train.json").read_text())  # the latest run
    assert page.first_in_body == "headline"  # the page opens with it
    assert page.tiles["hl-ram"] == {
        "peak": str(sched["peak_ram_bytes"]),
        "budget": str(sched["ram_budget_bytes"]),
    }
    energy = page.tiles["hl-energy"]
    assert float(energy["predicted"]) == pytest.approx(sched["energy_j"], rel=1e-12)
    assert float(energy["counted"]) == pytest.approx(train["counted_energy_per_step"]["total_j"], rel=1e-12)
    assert "metered" not in energy
    acc = page.tiles["hl-accuracy"]
    assert float(acc["first"]) == train["evals"][0][1] and float(acc["last"]) == train["evals"][-1][1]
    text = (b / "report.html").read_text()
    head = text[text.index('<header id="headline">') : text.index("</header>")]
    assert "digits-mlp on host" in head and "batch 16, RAM budget 64.0 MiB" in head
    assert "fits in" in head and "counted" in head and "\u2192" in head


def test_report_of_a_build_never_run(tmp_path):
    """No train.json: the headline has the prediction and says how to get the rest; no run figures."""
    out = tmp_path / "b"
    poetc("build", "digits-mlp", "--board", "qemu-m4", "--ram", "40K", "--out", str(out), "--no-compile")
    r = poetc("report", str(out))
    assert "note: no train.json" in r.stdout
    page = _parse((out / "report.html").read_text())
    sched = json.loads((out / "schedule.json").read_text())
    assert page.first_in_body == "headline"
    assert page.tiles["hl-ram"]["budget"] == str(40 * 1024) == str(sched["ram_budget_bytes"])
    assert set(page.tiles["hl-energy"]) == {"predicted"} and page.tiles["hl-accuracy"] == {}
    assert set(page.energy) == {"predicted"} and set(page.imgs) == {"fig-schedule", "fig-ram", "fig-energy"}
    assert "no training run: poetc train DIR" in (out / "report.html").read_text()


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or "chromium"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",  # the page's console, one "INFO:CONSOLE" line per message
        "--v=0",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console (errors, uncaught exceptions, logs), from chromium's log."""
    return [
        line.split("] ", 1)[-1] for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]


def screenshot_dir(tmp: Path) -> Path:
    """Where the report's screenshot is kept: $POETC_ARTIFACTS, else out/screenshots/ in the checkout."""
    d = Path(os.environ.get("POETC_ARTIFACTS") or Path(__file__).resolve().parents[2] / "out" / "screenshots")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return tmp
    return d


@pytest.mark.slow
def test_the_console_check_sees_a_broken_page(tmp_path):
    need("chromium")
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom"); nope();</script></body></html>')
    r = _chromium("--dump-dom", bad.as_uri(), tmp=tmp_path)
    msgs = console_messages(r.stderr)
    assert any('"boom"' in m for m in msgs) and any("Uncaught ReferenceError" in m for m in msgs), r.stderr[
        -2000:
    ]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run, tmp_path):
    need("chromium")
    url = (run["build"] / "report.html").resolve().as_uri()
    r = _chromium("--dump-dom", url, tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == []
    body = re.search(r"<body[^>]*>", r.stdout).group(0)
    figures = int(re.search(r'data-figures="(\d+)"', body).group(1))
    rendered = int(re.search(r'data-rendered="(\d+)"', body).group(1))
    assert figures == rendered == 5  # every embedded PNG decoded and laid out
    page = _parse(r.stdout)
    sched = json.loads((run["build"] / "schedule.json").read_text())
    assert page.rows["energy_j"] == repr(sched["energy_j"]) and page.consistent == "yes"
    assert page.first_in_body == "headline" and set(page.tiles) >= {"hl-ram", "hl-energy", "hl-accuracy"}
    shot = screenshot_dir(tmp_path) / "report.png"
    shot.unlink(missing_ok=True)
    r = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, tmp=tmp_path)
    assert r.returncode == 0 and console_messages(r.stderr) == []
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    top = img[:260]  # the headline: title and tiles, in the first screenful
    assert (top.max(axis=-1) < 0.3).sum() > 2000, "no dark text at the top of the page"
    assert ((top[..., 2] > 0.5) & (top[..., 0] < 0.3)).sum() > 500, "no headline figures (blue) at the top"
