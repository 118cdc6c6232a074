"""The documentation: the site builds strictly, the README stays the short front page, the code in the
pages compiles, and the version agrees across pyproject.toml, the package and the changelog."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import salaug

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_tools() -> list[str]:
    missing = []
    for name in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def _pyproject_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None, "pyproject.toml has no version"
    return match.group(1)


def test_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict`: a broken link, anchor, nav entry or API reference fails."""
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"the documentation tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    log = "\n".join(line for line in (build.stdout + build.stderr).splitlines() if "WARNING" in line or "ERROR" in line)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{log or build.stderr[-3000:]}"
    # the API reference rendered the objects, not just the page titles
    api = (site / "api" / "transforms" / "index.html").read_text(encoding="utf-8")
    for name in ("SnapMix", "PuzzleMix", "SalientBatch", "crop_flip"):
        assert f'id="salaug.transforms.{name}"' in api, name
    loop = (site / "api" / "loop" / "index.html").read_text(encoding="utf-8")
    assert 'id="salaug.augmenter.SaliencyAugmenter"' in loop
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert f"{_pyproject_version()}" in changelog
    # code blocks wrap on screen (the theme wraps them in print only), and the header links the repository
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="stylesheets/extra.css"' in home and f'href="{_repo_url()}"' in home
    css = re.sub(r"\s+", " ", (site / "stylesheets" / "extra.css").read_text(encoding="utf-8"))
    assert ".md-typeset pre > code { white-space: pre-wrap;" in css


def test_readme_is_the_short_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None, "the README opens with its set-up commands"
    commands = first_block.group(1)
    assert "salaug demo" in commands and re.search(r"&& pytest\b", commands), commands
    assert readme.index("```bash") < readme.index("\n## "), "the set-up commands come before the first section"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_in_the_pages_compiles(page: Path):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    for i, block in enumerate(blocks):
        compile(block, f"{page.name}, python block {i + 1}", "exec")


def test_version_agrees_across_pyproject_package_and_changelog():
    version = _pyproject_version()
    assert salaug.__version__ == version, f"salaug.__version__ is {salaug.__version__}, pyproject.toml says {version}"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE)
    assert releases and releases[0] == version, f"the newest release in CHANGELOG.md is {releases[:1]}, not {version}"
    assert re.search(r"^## \[Unreleased\]", changelog, re.MULTILINE)


def test_docstring_rewrite_for_the_site():
    """The griffe extension turns salaug's reST habits into what mkdocstrings renders (docs/_griffe_docstrings.py)."""
    pytest.importorskip("griffe", reason="griffe comes with mkdocstrings[python]: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("_griffe_docstrings", ROOT / "docs" / "_griffe_docstrings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (
        "Mix with :class:`~salaug.transforms.SnapMix` and :func:`crop_flip` of :math:`(B, C)`::\n"
        "\n"
        "    code\n"
        "\n"
        "Args:\n"
        "    low, high: the bounds,\n"
        "        inclusive.\n"
        "    p: a probability.\n"
        "\n"
        "Params:\n"
        "    ``applied`` ``(B,)`` bool.\n"
        "\n"
        "Example:\n"
        "    >>> 1 + 1\n"
        "    2\n"
    )
    assert module.rewrite(text, "salaug.transforms.recipe") == (
        'Mix with <autoref identifier="salaug.transforms.SnapMix" optional><code>SnapMix</code></autoref> and '
        '<autoref identifier="salaug.transforms.recipe.crop_flip" optional><code>crop_flip</code></autoref> '
        "of `(B, C)`:\n"
        "\n"
        "    code\n"
        "\n"
        "Args:\n"
        "    low: the bounds,\n"
        "        inclusive.\n"
        "    high: the bounds,\n"
        "        inclusive.\n"
        "    p: a probability.\n"
        "\n"
        "Sampled parameters:\n"
        "    ``applied`` ``(B,)`` bool.\n"
        "\n"
        "Examples:\n"
        "    >>> 1 + 1\n"
        "    2\n"
    )


def _python_block_after(page: str, heading: str) -> str:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.DOTALL)
    assert block is not None, f"{page} has no python block after {heading!r}"
    return block.group(1)


def test_the_lightning_snippet_of_ways_in_trains_with_the_recipe_before_the_callback(monkeypatch, tmp_path):
    """The page's Lightning block runs as written (1 epoch of 2 batches): the recipe (crop_flip) reaches
    each training batch before the callback mixes it, on a target layer DemoNet has."""
    pl = pytest.importorskip("pytorch_lightning")
    from salaug.augmenter import SaliencyAugmenter

    code = _python_block_after("ways-in.md", "## A Lightning callback")
    assert 'target_layer="net.features"' in code and "crop_flip" in code
    events: list[str] = []
    real_crop_flip, real_call = salaug.crop_flip, SaliencyAugmenter.__call__

    def crop_flip(*args, **kwargs):
        events.append("recipe")
        return real_crop_flip(*args, **kwargs)

    def augment(self, *args, **kwargs):
        events.append("augment")
        return real_call(self, *args, **kwargs)

    class QuickTrainer(pl.Trainer):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, "max_epochs": 1, "limit_train_batches": 2, "logger": False,
                                "enable_checkpointing": False, "enable_progress_bar": False,
                                "enable_model_summary": False, "default_root_dir": str(tmp_path)})

    monkeypatch.setattr(salaug, "crop_flip", crop_flip)
    monkeypatch.setattr(SaliencyAugmenter, "__call__", augment)
    monkeypatch.setattr(pl, "Trainer", QuickTrainer)
    namespace: dict = {}
    exec(compile(code, "ways-in.md, the Lightning block", "exec"), namespace)
    assert events == ["recipe", "augment", "recipe", "augment"]
    callback = namespace["trainer"].callbacks[0]
    assert isinstance(callback, salaug.SaliencyAugmentation) and callback.batches_augmented == 2


#: pages another change owns (issue 31's speed work): their bare repository paths get linked there
NOT_YET_LINKED: set[str] = set()


def _repo_url() -> str:
    match = re.search(r"^repo_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None, "mkdocs.yml has no repo_url: the site would have no link to the repository"
    return match.group(1).rstrip("/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_into_the_repository_use_repo_url_and_name_files_that_exist(page: Path):
    """The site is not the repository: examples/ and benchmarks/results/ are linked at mkdocs.yml's
    repo_url, every such link names a file or folder the repository has, and no page leaves a
    repository path as bare text where a reader would click it."""
    repo = _repo_url()
    text = page.read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for url in re.findall(r"\]\((https?://github\.com/[^)\s]+)\)", prose):
        assert url.startswith(repo + "/"), f"{url} is not under repo_url {repo}"
        kind, branch, path = url[len(repo) + 1:].split("/", 2)
        assert (kind, branch) in {("tree", "main"), ("blob", "main")}, url
        assert (ROOT / path).is_dir() if kind == "tree" else (ROOT / path).is_file(), f"{url}: no {path} here"
    if page.name in NOT_YET_LINKED:
        return
    bare = re.findall(r"(?<!\[)`((?:examples|benchmarks/results)/[^`\s]*|payoff_[a-z0-9_]+\.md)`(?!\])", prose)
    assert not bare, f"{page.name}: link these to the repository ({repo}): {bare}"


@pytest.mark.parametrize("page", ["index.md", "getting-started.md"])
def test_the_pages_pictures_are_drawn_for_the_page_width(page: str):
    """A picture wider than about 1000 px is shrunk to the content column (about 700 px at 1280 px),
    and the demo's 16-tile rows became unreadable there: the pages show 6 tiles (docs/_make_pictures.py)."""
    from PIL import Image

    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", (ROOT / "docs" / page).read_text(encoding="utf-8"))
    assert pictures, f"{page} shows no picture"
    for name in pictures:
        with Image.open(ROOT / "docs" / name) as picture:
            assert picture.size[0] <= 1000, f"{name} is {picture.size[0]} px wide: redraw it for the page"


def test_the_package_and_the_site_name_the_same_repository():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib needs Python 3.11)
    match = re.search(r'^Repository = "([^"]+)"', pyproject, re.MULTILINE)
    assert match is not None, "pyproject.toml's [project.urls] has no Repository"
    assert match.group(1).rstrip("/") == _repo_url()
