"""`python -m runner.lecture quick=true`: every part runs and the page holds what it claims."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest

from runner.lecture import PARTS, main, parse_args
from schedulers.lecture import LECTURE
from tests import browser_check
from tests.test_schedulers import torch_reference


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("lecture")
    return main(["quick=true", f"out={out}"])


def test_every_part_has_a_section_with_its_figures(page):
    text = (page / "index.md").read_text()
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert len(titles) == len(PARTS) == 4
    for section in text.split("\n## ")[1:]:
        assert "**Lecture:**" in section and "**讲座：**" in section and "```bash" in section
        figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
        assert figures, section[:80]
        for f in figures:
            assert (page / f).stat().st_size > 1000, f
    assert "get_lr()" in text  # the documented difference at the milestones


def test_the_toy_curves_on_the_page_equal_torch(page):
    for name in LECTURE:
        with (page / "curves" / f"lecture_{name}.csv").open() as f:
            rows = list(csv.reader(f))[1:]
        assert [[float(v) for v in r[1:]] for r in rows] == torch_reference(name)


def test_html_is_self_contained_and_every_image_decodes(page):
    from PIL import Image

    doc = (page / "index.html").read_text()
    images = re.findall(r"<img [^>]*src='data:image/png;base64,([^']+)'", doc)
    markdown_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (page / "index.md").read_text())
    assert len(images) == len(markdown_figures) >= 10
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.verify()
    assert "src='http" not in doc and 'src="' not in doc  # nothing fetched from elsewhere


def test_rerun_reuses_finished_parts(page, capsys):
    again = main(["quick=true", f"out={page.parent}", "part=lenet"])
    assert again == page
    assert "lenet: done before, reused" in capsys.readouterr().out


@pytest.mark.parametrize("arg", ["part=nope", "quick=maybe", "colour=red", "quick"])
def test_bad_arguments_are_refused(arg):
    with pytest.raises(SystemExit, match="error"):
        parse_args([arg])


@pytest.mark.skipif(
    browser_check.chromium() is None, reason="needs Chromium (apt-get install chromium)"
)
def test_page_renders_in_headless_chromium_with_no_broken_image(page):
    shot = page / "screenshot.png"
    total, loaded = browser_check.check(page / "index.html", shot)
    assert total >= 10 and loaded == total
    assert shot.stat().st_size > 10_000
