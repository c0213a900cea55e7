"""Open a lecture page in headless Chromium: every image must load; save a screenshot.

    python tests/browser_check.py outputs/lecture/<time>/index.html [screenshot.png]

Needs Chromium (Debian: apt-get install chromium). The page marks each image
data-ok=true|false once loaded; this reads the rendered DOM back.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000", "--run-all-compositor-stages-before-draw"]  # fmt: skip


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check(page: Path, screenshot: Path | None = None) -> tuple[int, int]:
    """(images, images that loaded)."""
    exe = chromium()
    if exe is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        flags = [*FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [exe, *flags, "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        if screenshot is not None:
            subprocess.run(
                [
                    exe,
                    *flags,
                    f"--screenshot={screenshot.resolve()}",
                    "--window-size=1200,2400",
                    url,
                ],
                capture_output=True,
                timeout=120,
                check=True,
            )
    images = re.findall(r"<img [^>]*>", dom)
    ok = [i for i in images if 'data-ok="true"' in i]
    return len(images), len(ok)


if __name__ == "__main__":
    shot = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    total, loaded = check(Path(sys.argv[1]), shot)
    print(f"{loaded}/{total} images loaded")
    sys.exit(0 if total and loaded == total else 1)
