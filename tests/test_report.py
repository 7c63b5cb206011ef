import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from prunelab.report import answer, largest_k_within, read_results

from .conftest import run


class TableReader(HTMLParser):
    """The rows of <table id="results"> and every <img> source of a page."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._in_results, self._cell = [], [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._in_results = attrs.get("id") == "results"
        elif tag == "img":
            self.images.append(attrs["src"])
        elif self._in_results and tag == "tr":
            self.rows.append([])
        elif self._in_results and tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_results = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None


def rows_at(ks_and_accuracies, method="weight", phase="finetuned"):
    return [
        {"method": method, "phase": phase, "k": k, "test_accuracy": a} for k, a in ks_and_accuracies
    ]


def test_largest_k_stops_at_the_first_k_outside_the_tolerance():
    rows = rows_at([(0.5, 0.985), (0.9, 0.975), (0.8, 0.981), (0.95, 0.984)])
    k, row = largest_k_within(rows, dense_accuracy=0.986)
    assert k == 0.8 and row["test_accuracy"] == 0.981  # 0.95 is within, but 0.9 is not
    assert largest_k_within(rows_at([(0.5, 0.90)]), 0.986) == (None, None)


def test_answer_sentences_name_the_k_and_both_accuracies():
    rows = rows_at([(0.5, 0.985), (0.9, 0.979)]) + rows_at([(0.5, 0.97)], phase="oneshot")
    dense = {"test_accuracy": 0.986}
    assert answer("weight", rows, dense) == (
        "weight: up to 90% of the weights can be removed, with test accuracy 97.90% vs "
        "98.60% dense after fine-tuning (without fine-tuning, none of the grid)."
    )
    text = answer("unit:obd", rows_at([(0.5, 0.5)], method="unit:obd"), dense)
    assert text.startswith("unit:obd: no k of the grid stays within 1 point") and "50.00%" in text


def test_report_shows_the_numbers_of_results_csv(tiny_run):
    out, result = tiny_run
    assert result.returncode == 0, result.stderr
    reader = TableReader()
    reader.feed((out / "report.html").read_text())
    header, *shown = reader.rows
    expected = read_results(out / "results.csv")
    assert len(shown) == len(expected)
    for cells, row in zip(shown, expected, strict=True):
        values = dict(zip(header, cells, strict=True))
        assert values["method"] == row["method"] and values["phase"] == row["phase"]
        assert float(values["k"]) == row["k"]
        for label, key in (("test accuracy", "test_accuracy"), ("weights zero", "sparsity")):
            assert float(values[label].rstrip("%")) == pytest.approx(100 * row[key], abs=0.005)
        assert float(values["test loss"]) == pytest.approx(row["test_loss"], abs=5e-5)
    dense = json.loads(next((out / "base").glob("*.json")).read_text())
    assert f"{100 * dense['test_accuracy']:.2f}% dense" in (out / "report.html").read_text()


def test_html_report_is_self_contained_and_embeds_every_figure(tiny_run):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    reader = TableReader()
    reader.feed(page)
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(reader.images) == len(pngs) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in reader.images)
    assert "http://" not in page and "https://" not in page


def test_markdown_report_links_figures_that_exist(tiny_run):
    out, _ = tiny_run
    text = (out / "report.md").read_text()
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert links and all((out / link).exists() for link in links)
    with open(out / "results.csv") as f:
        assert text.count("\n| weight |") + text.count("\n| unit |") == len(list(csv.reader(f))) - 1


def test_report_command_rewrites_the_report_and_refuses_a_non_run(tiny_run, tmp_path):
    out, _ = tiny_run
    (out / "report.md").unlink()
    result = run("report", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").exists()
    result = run("report", str(tmp_path))
    assert result.returncode == 2 and "holds no finished study" in result.stderr
    assert "Traceback" not in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", () => {
  const sizes = [...document.images].map(i => i.complete ? i.naturalWidth : 0);
  document.body.setAttribute("data-figures", sizes.join(","));
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_headless_chromium_renders_every_figure_offline(tiny_run, tmp_path):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    probed = tmp_path / "probed.html"  # the report, plus a script that measures its images
    probed.write_text(page.replace("</body>", PROBE))
    dom = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # any request off the machine fails
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
            "--dump-dom", probed.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    widths = dom.split('data-figures="')[1].split('"')[0].split(",")
    assert len(widths) == len(list((out / "figures").glob("*.png")))
    assert all(int(width) > 100 for width in widths)
