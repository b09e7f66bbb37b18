"""report.md / report.html: rendered from evaluation.json, self-contained, and every figure
actually loads in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from nfx import api
from nfx.console import Printer
from nfx.evaluate.report import render_html, render_markdown

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    ev = api.evaluate(tiny_run.run_dir, printer=Printer(quiet=True), n_bootstrap=200, per_patient=True)
    return tiny_run.run_dir, ev


def test_report_states_provenance_and_warnings(evaluated):
    d, ev = evaluated
    md = (d / "report.md").read_text()
    html = (d / "report.html").read_text()
    for text in (md, html):
        assert "trained from scratch" in text and "test_nfnet" in text
        assert "train: 20 images, 10 patients" in text and "valid: 4 images, 2 patients" in text
        assert "nfx 0.1.0" in text and "squish" in text  # the run's resize policy (the default)
        assert "from-scratch schedule" in text
        assert "confidence intervals are wide" in text  # 2 validation patients
        assert "in-sample" in text  # the Youden threshold was chosen on these same images
        assert "Youden" in text and "ECE" in text and "Brier" in text
    for name in ev["plots"]:
        assert f"plots/{name}.png" in md
        assert (d / ev["plots"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(ev["plots"]) == {"roc", "pr", "confusion", "reliability", "training"}


def test_report_html_is_self_contained_and_escaped(evaluated):
    d, ev = evaluated
    html = (d / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(ev["plots"]) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "<script" not in html and "http" not in html
    # rendered from the JSON written beside it, and user text is escaped
    ev2 = json.loads((d / "evaluation.json").read_text())
    ev2["data"] = "<script>alert(1)</script>"
    assert "<script>alert" not in render_html(ev2, {}) and "&lt;script&gt;" in render_html(ev2, {})
    assert render_markdown(ev2).count("|---") >= 3


def test_report_multiclass_without_binary_fields():
    ev = {"run": "r", "data": "d", "n_images": 3, "n_patients": 3, "accuracy": 1.0, "balanced_accuracy": 1.0,
          "roc_auc": None, "classes": ["a", "b", "c"], "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
          "positive_class": None, "threshold": None}
    md = render_markdown(ev)
    assert "one-vs-rest" in md and "n/a" in md and "No bootstrap interval" in md
    assert "<table>" in render_html(ev, {})


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium); "
                    "the browser check of report.html cannot run")
def test_report_html_renders_in_headless_chromium(evaluated, tmp_path):
    d, ev = evaluated
    # a copy with a probe script: after load, record each <img>'s naturalWidth in the DOM
    probe = tmp_path / "probe.html"
    probe.write_text((d / "report.html").read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { document.body.setAttribute('data-img-widths', "
        "JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : 0))); });</script></body>"))

    def chromium(*args):
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # a fresh profile per start
        return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)

    r = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-img-widths="([^"]*)"', r.stdout)
    assert m, "the probe script did not run"
    widths = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(widths) == len(ev["plots"]) == 5
    assert all(w > 0 for w in widths), widths  # every embedded figure decoded
    shot = tmp_path / "report.png"
    r = chromium("--window-size=1200,3000", f"--screenshot={shot}", (d / "report.html").as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    im = Image.open(shot).convert("L")
    assert im.size == (1200, 3000)
    lo, hi = im.getextrema()
    assert hi - lo > 100  # not a blank page
    shutil.copy(shot, d / "report_screenshot.png")  # kept beside the report for a human to look at
