"""mkdocs hooks: the site's home page is README.md.

mkdocs reads only docs/, and README.md sits at the repository root, where GitHub shows it;
rather than keep a copy that drifts, the home page is made from it at each build, its links
into docs/ made relative to docs/ (`docs/usage.md` -> `usage.md`). A README link to a file
outside docs/ stays as it is, and `mkdocs build --strict` fails on it, as on any broken link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def home_page(readme: str) -> str:
    """README.md as docs/index.md reads it."""
    return readme.replace("](docs/", "](")


def on_files(files: Files, config: Any) -> Files:
    """Add index.md (from README.md) to the site."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=home_page(readme)))
    return files
