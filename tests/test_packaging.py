"""Every package in the source tree is one that ``pip install .`` installs.

setup.cfg lists packages by name (``twisted/plugins`` is a dropin folder without
``__init__.py``, which ``find:`` would miss), so a new subpackage must be added there by
hand; CI installs the project and imports it from site-packages, where a forgotten
package is a ModuleNotFoundError at collection.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def source_packages() -> set[str]:
    return {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "streamlog").rglob("__init__.py")}


def test_every_streamlog_package_is_installed():
    missing = source_packages() - listed_packages()
    assert not missing, f"add to [options] packages in setup.cfg: {sorted(missing)}"


def test_every_listed_package_exists():
    for name in listed_packages():
        folder = ROOT.joinpath(*name.split("."))
        assert folder.is_dir(), f"setup.cfg lists {name}, which is not a folder"


def test_the_console_page_is_package_data_in_the_wheel_and_the_sdist():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options.package_data"]["streamlog.console"].strip() == "static/*"
    assert "recursive-include streamlog/console/static *" in (ROOT / "MANIFEST.in").read_text()
    static = sorted(p.name for p in (ROOT / "streamlog" / "console" / "static").iterdir())
    assert static == ["console.css", "console.js", "index.html"]  # static/* takes files, not folders
