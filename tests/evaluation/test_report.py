"""The report's two renderings: Markdown with linked figures, self-contained HTML."""

from __future__ import annotations

import re

from osteo_pipeline.evaluation.report import Report


def _report() -> Report:
    doc = Report("Title <&>")
    doc.heading("Cohort")
    doc.text("**174** scans from `data/01_raw`")
    doc.note("Small samples.\nSecond line")
    doc.bullets(["a", "b|c"])
    doc.table(["model", "p"], [["cnn21", "exact McNemar test, n=52 scans: p=0.03"], ["x|y", 1]])
    doc.figure("roc_curves", "ROC curves")
    doc.figure("absent", "never drawn")
    return doc


def test_markdown_links_figures_and_escapes_table_pipes():
    md = _report().markdown("evaluate")
    assert md.startswith("# Title <&>\n")
    assert "![ROC curves](evaluate/roc_curves.png)" in md
    assert "| x\\|y | 1 |" in md and "|---|---|" in md
    assert "> Small samples.\n> Second line" in md


def test_html_is_self_contained_with_inlined_figures():
    page = _report().html({"roc_curves": "iVBORw0KGgo="})
    assert page.startswith("<!DOCTYPE html>") and "Title &lt;&amp;&gt;" in page
    assert '<img alt="ROC curves" src="data:image/png;base64,iVBORw0KGgo=">' in page
    assert "figure absent not available" in page
    # nothing is fetched from elsewhere: every src is a data URI, no stylesheet or script links
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page
    assert "<strong>174</strong>" in page and "<code>data/01_raw</code>" in page
    assert "<td>x|y</td>" in page
