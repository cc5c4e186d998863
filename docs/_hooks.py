"""MkDocs hooks: the pages take their text from the repository's README files, so the
site and the README never disagree, and the API pages list every public name.

In a page under docs/:
  <!-- readme "## Heading" -->                 the README section under that heading
  <!-- readme "## Heading" minus "### Sub" --> the same without one of its subsections
  <!-- include "benchmarks/README.md" -->      a whole Markdown file of the repository
  <!-- api "cnn_jax.nn" -->                     one mkdocstrings entry per name of
                                                that module's ``__all__``
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files outside docs/ that the site shows: README links are rewritten to these pages.
LINKS = {
    "benchmarks/README.md": "benchmarks.md",
    "examples/README.md": "examples.md",
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
}
FIGURES = "examples/figures"


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line index, level, text) of every Markdown heading outside fenced code."""
    out, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#+) ", line)):
            out.append((i, len(m.group(1)), line.strip()))
    return out


def _section(lines: list[str], heading: str) -> tuple[int, int]:
    heads = _headings(lines)
    for k, (i, level, text) in enumerate(heads):
        if text.startswith(heading):
            end = next((j for j, lv, _ in heads[k + 1 :] if lv <= level), len(lines))
            return i, end
    raise ValueError(f"docs: no heading {heading!r} in the README")


def _readme(heading: str, minus: str | None) -> str:
    lines = _read("README.md").splitlines()
    start, end = _section(lines, heading)
    part = lines[start:end]
    if minus:
        s, e = _section(part, minus)
        part = part[:s] + part[e:]
    # The section's heading becomes the page's title (level 1), the rest follow it.
    heads = {i: level for i, level, _ in _headings(part)}
    shift = heads[0] - 1
    return "\n".join(line[shift:] if i in heads else line for i, line in enumerate(part))


def _relink(text: str, source: str) -> str:
    """Links relative to ``source`` (a repository path) that point at files the site
    shows become links to their pages; figures point at the copied figures; other
    repository files become code spans (the site has no copy of them)."""
    base = os.path.dirname(source)

    def fix(m: re.Match) -> str:
        bang, label, target = m.group(1), m.group(2), m.group(3)
        if re.match(r"[a-z]+:|#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo = os.path.normpath(os.path.join(base, path))
        if repo in LINKS:
            return f"{bang}[{label}]({LINKS[repo]}{'#' + anchor if anchor else ''})"
        if repo.startswith(FIGURES):
            return f"{bang}[{label}]({repo[len('examples/') :]})"
        return f"{label} (`{repo}`)"

    text = re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", fix, text)
    return re.sub(r'src="(figures/[^"]+)"', r'src="\1"', text)


def _defined_in(module: str, name: str) -> str:
    """The dotted path of the module of ``module``'s package that assigns ``name`` at
    top level (constants, partials), found statically: lazy packages (PEP 562) re-export
    names that a static reader cannot follow."""
    folder = os.path.join(ROOT, *module.split("."))
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if file.endswith(".py"):
            text = _read(os.path.join(*module.split("."), file))
            if re.search(rf"^{re.escape(name)}\s*(:[^=]*)?=", text, re.M):
                stem = file[:-3]
                return f"{module}.{name}" if stem == "__init__" else f"{module}.{stem}.{name}"
    return f"{module}.{name}"


def _api(module: str) -> str:
    mod = importlib.import_module(module)
    out = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            continue
        where = getattr(obj, "__module__", None)
        if (
            (inspect.isfunction(obj) or inspect.isclass(obj))
            and where
            and where.startswith("cnn_jax")
            and getattr(obj, "__qualname__", "") == name
        ):
            path = f"{where}.{name}"
        else:
            path = _defined_in(module, name)
        out.append(f"::: {path}\n    options:\n      heading: {name}\n")
    return "\n".join(out)


def on_files(files, config):
    for name in sorted(os.listdir(os.path.join(ROOT, FIGURES))):
        if name.endswith(".png"):
            files.append(
                File.generated(
                    config, f"figures/{name}", abs_src_path=os.path.join(ROOT, FIGURES, name)
                )
            )
    return files


def on_page_markdown(markdown, page, config, files):
    def readme(m: re.Match) -> str:
        return _relink(_readme(m.group(1), m.group(3)), "README.md")

    markdown = re.sub(r'<!-- readme "([^"]+)"( minus "([^"]+)")? -->', readme, markdown)
    markdown = re.sub(
        r'<!-- include "([^"]+)" -->', lambda m: _relink(_read(m.group(1)), m.group(1)), markdown
    )
    return re.sub(r'<!-- api "([^"]+)" -->', lambda m: _api(m.group(1)), markdown)
