"""The documentation is tested as a user would read it.

- Every ```bash and ```python block of README.md and docs/*.md runs, one page top to bottom, in a fresh
  temporary directory outside the checkout, with the installed package and its commands on PATH (as after
  `pip install trio-edge`): later blocks of a page may use the files earlier ones wrote, nothing else.
  ```text / ```json / ```console blocks are output and are not run.
- A block that cannot run here carries `<!-- not-run: REASON -->` on the line before its fence; REASON is one of
  NOT_RUN_REASONS, and every such block is listed as a skipped test with its reason.
- docs/cli.md's `$ trio-NAME --help` blocks equal each command's real --help (scripts/cli_reference.py rewrites
  them), and every console script has one.
- Every relative link between README.md and docs/ points at a file that exists, and at a heading in it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import cli_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN_REASONS = {
    "gpu": "needs a CUDA GPU",
    "tensorrt": "needs TensorRT (its builder is not installable where the tests run)",
    "hub": "downloads a checkpoint from the Hugging Face hub",
    "server": "starts a server that runs until it is stopped",
    "cluster": "needs a Ray cluster of several machines",
}
BLOCK_TIMEOUT_S = 900
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S+)\s*-->$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason of a `<!-- not-run: REASON -->` mark

    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        mark = NOT_RUN.match(lines[index - 1].strip()) if index else None
        blocks.append(Block(page, index + 1, opening[1], "\n".join(lines[index + 1:end]) + "\n",
                            mark[1] if mark else None))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]
SKIPPED = [block for block in ALL_BLOCKS if block.not_run]


def run_block(block: Block, workdir: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's commands
    if RUNNABLE[block.language] == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        command = [sys.executable, "-c", block.code]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


def page_params() -> list:
    return [pytest.param(page, id=str(page.relative_to(ROOT)), marks=pytest.mark.slow) for page in PAGES
            if any(b.language in RUNNABLE and not b.not_run for b in code_blocks(page))]


@pytest.mark.parametrize("page", page_params())
def test_page_examples_run(page, tmp_path):
    assert ROOT not in tmp_path.parents, "examples must run outside the checkout"
    for block in code_blocks(page):
        if block.language not in RUNNABLE or block.not_run:
            continue
        done = run_block(block, tmp_path)
        assert done.returncode == 0, (f"{block.name()} ({block.language}) exited {done.returncode}\n"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        if block.language == "python":
            assert done.stdout.strip(), f"{block.name()}: a python example prints what it shows"


@pytest.mark.parametrize("block", SKIPPED, ids=[b.name() for b in SKIPPED])
def test_not_run_block_is_listed(block):
    assert block.not_run in NOT_RUN_REASONS, (f"{block.name()}: unknown not-run reason {block.not_run!r}; use one "
                                              f"of {', '.join(NOT_RUN_REASONS)}")
    assert block.language in RUNNABLE, f"{block.name()}: only runnable blocks need a not-run mark"
    pytest.skip(f"{block.name()} not run: {NOT_RUN_REASONS[block.not_run]}")


def test_every_page_has_runnable_or_output_blocks_only():
    """A fence language we neither run nor know as output is most likely a typo that silently skips a block."""
    known = set(RUNNABLE) | {"text", "json", "console", "toml", "yaml", ""}
    unknown = [f"{b.name()} ```{b.language}" for b in ALL_BLOCKS if b.language not in known]
    assert not unknown, f"unknown code-block languages: {unknown}"
    unfenced = [b.name() for b in ALL_BLOCKS if b.language == ""]
    assert not unfenced, f"give these blocks a language (bash, python, text, ...): {unfenced}"


def test_cli_reference_equals_help():
    markdown = cli_reference.CLI_DOC.read_text()
    documented = cli_reference.documented_help(markdown)
    commands = cli_reference.commands()
    assert sorted(documented) == sorted(commands), "docs/cli.md needs one `$ NAME --help` block per command"
    stale = [name for name, entry in commands.items() if cli_reference.help_text(entry) != documented[name]]
    assert not stale, f"docs/cli.md is stale for {stale}: run `python scripts/cli_reference.py`"


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings, in_fence = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            headings.append(line.lstrip("#"))
    return {github_anchor(h) for h in headings}


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme]
    assert not unlinked, f"README.md links no page for {unlinked}"


def test_user_facing_text_names_no_issue_numbers():
    found = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bissues? \d+\b", line, flags=re.I)]
    assert not found, f"issue numbers in user-facing docs: {found}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
