"""docs/cluster.md's example runs as written."""

from __future__ import annotations

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def test_the_example_in_docs_cluster_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/cluster.md lost its example"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})
