"""The generated references are up to date, and the docs' links and quoted commands point at real things."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script.replace(".py", ""), DOCS / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cli_ref():
    return _load("gen_cli_reference.py")


@pytest.fixture(scope="module")
def api_ref():
    return _load("gen_api_reference.py")


def test_cli_reference_is_up_to_date(cli_ref):
    text = cli_ref.render()
    assert (DOCS / "cli.md").read_text() == text, "docs/cli.md is out of date: run `make docs`"


def test_cli_reference_covers_every_command_and_option(cli_ref):
    import click

    from mirrornet_tvm.cli import cli

    page = (DOCS / "cli.md").read_text()
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert f"## `mirrornet {name}`" in page, name
        for p in cli.get_command(ctx, name).params:
            if isinstance(p, click.Option):
                assert f"`{max(p.opts, key=len)}`" in page, (name, p.opts)


def test_api_reference_names_every_public_name(api_ref):
    page = (DOCS / "api.md").read_text()
    names = api_ref.documented_names()
    assert "mirrornet_tvm.strategy" in names and "Strategy" in names["mirrornet_tvm.strategy"]
    missing = [f"{mod}.{n}" for mod, ns in names.items() for n in ns if f"`{mod}.{n}" not in page]
    assert not missing, f"docs/api.md lacks {missing}: run `make docs`"


def test_api_reference_lists_every_module(api_ref):
    import pkgutil

    import mirrornet_tvm

    page = (DOCS / "api.md").read_text()
    for info in pkgutil.walk_packages(mirrornet_tvm.__path__, "mirrornet_tvm."):
        if info.name.startswith("mirrornet_tvm.cli") or "._" in info.name:
            continue
        assert f"`{info.name}`" in page, f"docs/api.md does not mention {info.name}: run `make docs`"


def test_signatures_are_stable_text(api_ref):
    def f(x=object()):
        """doc"""

    assert " at 0x" not in api_ref._signature(f)
    assert api_ref._signature(lambda a: a) == "(a)"


def _markdown_files():
    return [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)                           # nor is inline code
    text = re.sub(r"^(    |\t).*$", "", text, flags=re.M)            # nor indented code
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_commands_and_scripts_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z-]+)", readme)):
        assert re.search(rf"^{target}:", makefile, re.M), f"README mentions `make {target}`, Makefile lacks it"
    for script in set(re.findall(r"\b((?:bench|scripts|docs|tutorials)/[\w./-]+\.(?:py|sh|ipynb))", readme)):
        assert (ROOT / script).exists(), f"README mentions {script}, which does not exist"


def _results_section(readme: str) -> str:
    m = re.search(r"^## Results\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert m, "README.md has no '## Results' section"
    return m.group(1)


def test_readme_figures_come_from_the_bench_tables():
    """Every measured figure the README quotes (percentages, ratios, ms, KiB, s) appears verbatim in
    bench/RESULTS.md, the tables `bench/run_all.py --publish` wrote."""
    section = _results_section((ROOT / "README.md").read_text())
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    rows = [line for line in section.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    assert len(rows) >= 4, "the README's results table is missing"
    figures = set()
    for row in rows[1:]:                       # the header row names columns, not figures
        figures |= set(re.findall(r"(?<![\w.])\d+\.\d+(?=%|x\b|\b)", row))
    assert len(figures) >= 10, f"too few figures in the README's results table: {sorted(figures)}"
    missing = sorted(f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", results))
    assert not missing, f"README figures not in bench/RESULTS.md (rerun bench/run_all.py --publish): {missing}"
