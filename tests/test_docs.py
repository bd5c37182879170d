"""The README and docs/: short README, working relative links, no issue numbers, and the commands
they give are the ones the repository runs (no module is imported, nothing is run).

Links follow GitHub's rendering: a relative link is resolved from the file's folder; an anchor
(`file.md#heading`, `#heading`) must be the slug of a heading of that Markdown file (lower case,
punctuation other than `-` and `_` dropped, spaces to `-`, a repeated slug gets `-1`, `-2`, ...).
"""

import configparser
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
CHANGELOG = ROOT / "CHANGELOG.md"
PAGES = [README, CHANGELOG, *sorted(DOCS.glob("*.md"))]
# What users read: the README and docs/ (issue numbers mean nothing to them). The changelog too.
USER_FACING = PAGES

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ")".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ISSUE = re.compile(r"\bissues?\s*(?:#\s*)?\d+", re.IGNORECASE)


def prose_lines(path: Path):
    """(line number, line) outside fenced code blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def links(path: Path):
    for number, line in prose_lines(path):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def test_slugs_follow_githubs_rule():
    assert slug("Where this code follows the references, and where it departs") == (
        "where-this-code-follows-the-references-and-where-it-departs"
    )
    assert slug("Energy conservation (NVE)") == "energy-conservation-nve"
    assert slug("The `cpu` preset: σ range") == "the-cpu-preset-σ-range"
    assert slug("Does the decoder use the graph code? Objective variants") == (
        "does-the-decoder-use-the-graph-code-objective-variants"
    )


def test_the_pages_exist():
    assert README.is_file() and CHANGELOG.is_file()
    assert len(PAGES) > 2, "docs/ holds the documentation the README links to"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
            problems.append(f"{where}: points outside the repository")
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor in {dest.name}")
    assert not problems, "\n".join(problems)


def test_the_readme_links_into_docs():
    targets = {target.partition("#")[0] for _, target in links(README)}
    assert any(t.startswith("docs/") for t in targets)
    # Every page of docs/ is reachable from the README, directly or from a page it links to.
    reachable, todo = set(), [README]
    while todo:
        page = todo.pop()
        for _, target in links(page):
            path_part = target.partition("#")[0]
            if not path_part or "://" in path_part:
                continue
            dest = (page.parent / path_part).resolve()
            if dest.suffix == ".md" and dest.exists() and dest not in reachable:
                reachable.add(dest)
                todo.append(dest)
    unreached = [p.name for p in DOCS.glob("*.md") if p.resolve() not in reachable]
    assert not unreached, f"docs/ pages no link from the README leads to: {unreached}"


def test_the_readme_is_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("page", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers(page):
    found = [
        f"{page.relative_to(ROOT)}:{n}: {m.group(0)}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for m in ISSUE.finditer(line)
    ]
    assert not found, "issue numbers mean nothing to a reader:\n" + "\n".join(found)


def code_lines(path: Path):
    """The commands of the ```bash blocks, continuation lines joined."""
    inside, language, out, pending = False, "", [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            language = line.strip().strip("`~").strip() if inside else ""
            continue
        if inside and language == "bash":
            pending += line.rstrip().removesuffix("\\").strip() + " "
            if not line.rstrip().endswith("\\"):
                out.append(pending.strip())
                pending = ""
    return out


def ci_test_command():
    """The pytest command `.ci/run` runs (its unshuffled branch)."""
    commands = [
        line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "-m pytest" in line
    ]
    plain = [c for c in commands if "randomly" not in c]
    assert len(plain) == 1, commands
    return plain[0]


def test_the_readme_test_command_is_the_one_ci_runs():
    command = ci_test_command()
    assert command == "python -m pytest tests -n 2 --dist loadfile"
    assert command in code_lines(README)
    assert command in code_lines(DOCS / "testing.md")


def test_the_readme_gives_the_two_set_up_commands_and_the_benchmark_command():
    code = code_lines(README)
    assert code[:2] == [
        "pip install -r requirements.txt -e .",
        "python -m experiments.pretrain --config=experiments/configs/georecon.py:quick --workdir=runs/quick",
    ]
    bench = [c for c in code if c.startswith("bash benchmarks/")]
    assert bench and all((ROOT / shlex.split(c)[1]).is_file() for c in bench), bench
    assert "--data-root" in (ROOT / "benchmarks" / "run.sh").read_text()


def test_every_command_in_the_readme_names_an_existing_module_and_config():
    """`python -m experiments.<x>` modules, `--config=<file>` configs and scripts the README runs."""
    problems = []
    for command in code_lines(README):
        for module in re.findall(r"python -m ([\w.]+)", command):
            if module == "pytest":
                continue
            path = ROOT / Path(*module.split("."))
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                problems.append(f"{command}: no module {module}")
        for config in re.findall(r"--config=([\w/.]+\.py)", command):
            if not (ROOT / config).is_file():
                problems.append(f"{command}: no config {config}")
        for script in re.findall(r"^python (\S+\.py)", command):
            if not (ROOT / script).is_file():
                problems.append(f"{command}: no script {script}")
    assert not problems, "\n".join(problems)


def console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {line.split("=")[0].strip() for line in lines if line.strip()}


def test_the_docs_list_every_console_script():
    listed = set(re.findall(r"`(georecon-[a-z-]+)`", (DOCS / "install.md").read_text(encoding="utf-8")))
    assert listed == console_scripts(), (
        f"docs/install.md lists {sorted(listed)}; setup.cfg declares {sorted(console_scripts())}"
    )


def test_the_troubleshooting_page_keeps_the_bad_input_table():
    """tests/test_bad_input.py runs the cases this table lists."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    assert "bad-input-at-an-entry-point" in anchors(DOCS / "troubleshooting.md")
    assert "error: <input>: <reason>" in text
    for entry_point in (
        "pretrain",
        "finetune",
        "finetune_pairs",
        "evaluate",
        "export",
        "predict",
        "import_torchmd",
    ):
        assert f"`{entry_point}`" in text, entry_point


def test_the_adding_an_objective_example_is_the_file():
    """The README's worked example is the code of objectives/coord_ladder.py, as it is."""
    source = (ROOT / "georecon_jax" / "objectives" / "coord_ladder.py").read_text(encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n(@register\nclass CoordLadder.*?)```", text, re.DOTALL)
    assert block, "the README shows objectives/coord_ladder.py"
    assert block.group(1).strip() in source
