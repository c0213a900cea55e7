"""mkdocs hooks: the site's home page is README.md, its Reference page is generated.

mkdocs reads only docs/, and README.md sits at the repository root, where GitHub shows it;
rather than keep a copy that drifts, the home page is made from it at each build, its links
into docs/ made relative to docs/ (`docs/usage.md` -> `usage.md`). A README link to a file
outside docs/ stays as it is, and `mkdocs build --strict` fails on it, as on any broken link.
The Reference page is docs/gen_reference.py's output, so it always matches the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def home_page(readme: str) -> str:
    """README.md as docs/index.md reads it."""
    return readme.replace("](docs/", "](")


def on_files(files: Files, config: Any) -> Files:
    """Add index.md (from README.md) and reference.md (generated) to the site."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's runner, not an installed one
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=home_page(readme)))
    files.append(File.generated(config, "reference.md", content=gen_reference.render()))
    return files
