"""Keep code in docs/ identical to the example DAGs it quotes.

A docs page quotes a snippet with
    <!-- snippet: example_dags/FILE.py NAME -->
    ```python
    ...
    ```
    <!-- /snippet -->
and the source marks it with ``# [START NAME]`` / ``# [END NAME]``. ``python scripts/docs_snippets.py``
rewrites every quoted block from its source; ``--check`` only reports drift (the tests run it).
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- snippet: (\S+) (\S+) -->\n```python\n)(.*?)(```\n<!-- /snippet -->)", re.S)


def snippet(path: str, name: str) -> str:
    """The dedented lines between ``# [START name]`` and ``# [END name]`` in ``path``."""
    text = (ROOT / path).read_text()
    marker = re.escape(name)
    match = re.search(rf"^[ \t]*# \[START {marker}\]\n(.*?)^[ \t]*# \[END {marker}\]", text, re.S | re.M)
    if not match:
        raise SystemExit(f"{path}: no snippet {name!r}")
    return textwrap.dedent(match.group(1))


def render(page: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + snippet(m.group(2), m.group(3)) + m.group(5), page)


def main(check: bool) -> int:
    drifted = []
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        text = page.read_text()
        new = render(text)
        if new != text:
            drifted.append(page.relative_to(ROOT))
            if not check:
                page.write_text(new)
    if drifted and check:
        print("snippets drifted from their sources in:", *drifted, "(run python scripts/docs_snippets.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
