"""The docs site builds with mkdocs --strict and without a warning; the README's links into it hold."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 110  # seconds; it takes a few


def test_the_docs_site_builds_strictly_without_a_warning(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner, not a build warning
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[docs]'?):\n{output}"
    assert "WARNING" not in output, output
    page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "settings-reference" not in page, "the settings hook did not render the configuration page"
    assert "DPS_REDIS_URL" in page and "drain_on_sigterm" in page


def test_the_readme_links_only_to_files_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert any(target.startswith("docs/") for target in local), "the README links into the docs"
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_docs_name_no_folder_outside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        assert "../shared" not in path.read_text(encoding="utf-8"), path
