"""Keep docs/cli.md's `--help` blocks equal to the commands' real `--help`.

    python scripts/cli_reference.py           # rewrite the blocks in docs/cli.md
    python scripts/cli_reference.py --check   # exit 1 and name the commands whose block is stale

Each command's section in docs/cli.md holds one ```text block whose first line is `$ trio-NAME --help`; the rest
of the block is the command's help at a fixed width of 100 columns (argparse wraps to $COLUMNS). The commands are
the console scripts of pyproject.toml, so a new command without a section is caught (tests/test_docs.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
COLUMNS = "100"
HELP_BLOCK = re.compile(r"```text\n\$ (?P<name>[\w-]+) --help\n(?P<body>.*?)```", re.S)


def commands() -> dict[str, str]:
    """Console script name -> 'module:function', from pyproject.toml."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return dict(sorted(scripts.items()))


def help_text(entry_point: str) -> str:
    """What `COMMAND --help` prints at 100 columns, run in a fresh interpreter as the console script would."""
    module, function = entry_point.split(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = ''; main(['--help'])"
    env = {**os.environ, "COLUMNS": COLUMNS}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{entry_point} --help exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def documented_help(markdown: str) -> dict[str, str]:
    """Command name -> the help text its block in docs/cli.md shows."""
    return {match["name"]: match["body"] for match in HELP_BLOCK.finditer(markdown)}


def refreshed(markdown: str, helps: dict[str, str]) -> str:
    """docs/cli.md with every help block replaced by the command's current help."""
    def replace(match):
        name = match["name"]
        return f"```text\n$ {name} --help\n{helps[name]}```" if name in helps else match[0]

    return HELP_BLOCK.sub(replace, markdown)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    helps = {name: help_text(entry) for name, entry in commands().items()}
    markdown = CLI_DOC.read_text()
    missing = sorted(set(helps) - set(documented_help(markdown)))
    if missing:
        print(f"docs/cli.md has no `$ NAME --help` block for: {', '.join(missing)}; add a section for each",
              file=sys.stderr)
        return 1
    updated = refreshed(markdown, helps)
    if "--check" in argv:
        stale = [name for name, body in documented_help(markdown).items() if helps.get(name) != body]
        if stale:
            print(f"stale --help in docs/cli.md: {', '.join(stale)}; run python scripts/cli_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    if updated != markdown:
        CLI_DOC.write_text(updated)
        print(f"updated {CLI_DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
