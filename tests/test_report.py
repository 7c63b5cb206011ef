import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from prunelab.answer import answer, largest_k_within
from prunelab.results import read_results

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


def rows_at(ks_and_accuracies, method="weight", phase="finetuned", seed=0):
    """Result rows; test accuracy is validation accuracy minus a point, so that a
    rule that looked at test accuracy would choose differently."""
    return [
        {"method": method, "schedule": "oneshot", "phase": phase, "seed": seed, "k": k,
         "val_metric": a, "test_metric": a - 0.01}
        for k, a in ks_and_accuracies
    ]  # fmt: skip


DENSE = {"val_metric": 0.986, "test_metric": 0.98}


def test_largest_k_is_chosen_on_validation_accuracy():
    rows = rows_at([(0.5, 0.985), (0.9, 0.975), (0.8, 0.981), (0.95, 0.977)])
    k, row = largest_k_within(rows, dense_val=0.986, max_drop=1)
    assert k == 0.95 and row["val_metric"] == 0.977  # 0.9 is outside, 0.95 within
    assert largest_k_within(rows, 0.986, max_drop=0.5)[0] == 0.8
    assert largest_k_within(rows_at([(0.5, 0.90)]), 0.986, 1) == (None, None)


def test_answer_sentences_name_the_k_and_both_accuracies():
    rows = rows_at([(0.5, 0.985), (0.9, 0.979)]) + rows_at([(0.5, 0.97)], phase="oneshot")
    result = answer("weight", rows, DENSE)
    assert (result.k, result.k_oneshot, result.test_metric) == (0.9, None, 0.969)
    assert result.sentence == (
        "weight: up to 90% of the weights can be removed, with test accuracy 96.90% vs "
        "98.00% dense after fine-tuning (k chosen on validation: 97.90% vs 98.60%; without "
        "fine-tuning, none of the grid)."
    )
    text = answer("unit:obd", rows_at([(0.5, 0.5)], method="unit:obd"), DENSE).sentence
    assert (
        text.startswith("unit:obd: no k > 0 of the grid stays within 1 point") and "50.00%" in text
    )


def test_answer_over_seeds_compares_means_with_the_mean_dense_model():
    rows = rows_at([(0.5, 0.980), (0.9, 0.974)]) + rows_at([(0.5, 0.982), (0.9, 0.978)], seed=1)
    # seed 0's dense model alone (0.986) would reject k = 0.9; the mean (0.984) does not
    result = answer("weight", rows, {"val_metric": 0.984, "test_metric": 0.98})
    assert result.k == 0.9 and result.seeds == 2
    assert abs(result.val_metric - 0.976) < 1e-12


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
        for label, key in (("test accuracy", "test_metric"), ("weights zero", "sparsity")):
            assert float(values[label].rstrip("%")) == pytest.approx(100 * row[key], abs=0.005)
        assert float(values["test loss"]) == pytest.approx(row["test_loss"], abs=5e-5)
    dense = json.loads(next((out / "base").glob("*.json")).read_text())
    assert f"{100 * dense['test_metric']:.2f}% dense" in (out / "report.html").read_text()


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
    assert result.returncode == 2 and "is not a study run directory" in result.stderr
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


def test_the_reports_answer_is_the_largest_k_within_the_tolerance_on_validation(tiny_run):
    """Recomputed from results.csv and the dense model's record, independently."""
    out, result = tiny_run
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(p.read_text()) for p in out.glob("base/*.json")]
    rows = read_results(out / "results.csv")
    answers = {a["method"]: a for a in json.loads((out / "answers.json").read_text())}
    report = (out / "report.md").read_text()
    assert any(a["k"] for a in answers.values())  # the rule is exercised, not only "none"
    for method in ("weight", "unit"):
        tuned = [r for r in rows if r["method"] == method and r["phase"] == "finetuned"]
        within = [r["k"] for r in tuned if r["val_metric"] >= record["val_metric"] - 0.01]
        expected = max(within) if within else None
        assert answers[method]["k"] == expected
        assert answers[method]["dense_val_metric"] == record["val_metric"]
        if expected is not None:
            (row,) = [r for r in tuned if r["k"] == expected]
            assert answers[method]["test_metric"] == row["test_metric"]
            assert f"up to {100 * expected:g}% of the" in report
