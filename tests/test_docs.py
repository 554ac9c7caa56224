"""The README is for users and tells the truth about the code; how the code is built lives in docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(text: str, heading: str) -> str:
    """The text under a ``## heading`` up to the next heading of the same level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_readme_is_short_enough_to_read_and_links_how_the_code_is_built():
    assert len(README.splitlines()) <= 550
    assert "(docs/architecture.md)" in README
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for heading in ("## Layout", "## Import rules", "## Benchmarks", "## Development"):
        assert heading in architecture, heading
    for heading in ("## Layout", "## Benchmarks", "Imports flow one way"):
        assert heading not in README, heading


def test_every_module_is_on_the_map_in_docs_architecture():
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for package in ("bot", "storage"):
        for path in sorted((ROOT / package).glob("*.py")):
            if path.stem != "__init__":
                assert re.search(rf"\b{path.stem}\.py\b", architecture), path


def test_every_relative_link_of_the_readme_and_docs_points_at_a_file():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), (doc.name, target)


def test_every_in_page_anchor_of_the_readme_names_a_heading():
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", README, re.M)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", README):
        assert anchor in anchors, anchor


def test_slack_set_up_is_on_the_first_screen_and_names_the_app_level_token():
    headings = [line for line in README.splitlines()[:80] if line.startswith("## ")]
    assert "## Slack set-up" in headings
    setup = section(README, "Slack set-up")
    assert "connections:write" in setup and "SLACK_APP_TOKEN" in setup and "xapp-" in setup
    assert "manifest.yml" in setup and "/invite @wflogs" in setup and "SLACK_BOT_TOKEN" in setup


def test_the_quick_start_names_the_dify_url_self_hosted_users_need():
    quick = section(README, "Quick start")
    assert "export DIFY_API_URL=" in quick and "export DIFY_API_KEY=" in quick


def test_every_setting_the_code_reads_is_in_the_readme():
    read = set()
    for path in (ROOT / "bot").glob("*.py"):
        read |= set(re.findall(r'"((?:WFLOGS|DIFY|SLACK)_[A-Z_]+)"', path.read_text()))
    assert read and not {name for name in read if name not in README}
