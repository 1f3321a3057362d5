"""setup.cfg says what the code needs: every third-party import is declared (the package's in
install_requires, the tests' there or in the dev extra), with the versions the code relies on."""

from __future__ import annotations

import ast
import configparser
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def declared() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    """(install_requires, dev extra) of setup.cfg by canonical distribution name."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")

    def by_name(value: str) -> dict[str, Requirement]:
        lines = [line.strip() for line in value.splitlines()]
        requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
        return {canonicalize_name(r.name): r for r in requirements}

    return by_name(config["options"]["install_requires"]), by_name(config["options.extras_require"]["dev"])


def third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under ``folder``, without the standard library and our own."""
    local = {"dlexp", "hydra_plugins"} | {path.stem for folder_name in ("tests", "scripts", "benchmarks")
                                          for path in (ROOT / folder_name).glob("*.py")}
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    installed = packages_distributions()
    return {module: {canonicalize_name(d) for d in installed.get(module, [module])} for module in modules}


def test_every_import_of_the_package_is_an_install_requirement():
    install, _ = declared()
    imported = third_party_imports(ROOT / "dlexp") | third_party_imports(ROOT / "hydra_plugins")
    missing = {m: d for m, d in distributions(imported).items() if not d & install.keys()}
    assert not missing, f"imported by dlexp but not in install_requires: {missing}"


def test_every_import_of_the_tests_is_declared():
    install, dev = declared()
    missing = {m: d for m, d in distributions(third_party_imports(ROOT / "tests")).items()
               if not d & (install.keys() | dev.keys())}
    assert not missing, f"imported by the tests but neither in install_requires nor in [dev]: {missing}"


def test_versions_are_the_ones_the_code_relies_on():
    install, _ = declared()
    # GroupKFold(shuffle=..., random_state=...) (dlexp.data.splits) arrived in scikit-learn 1.6.
    assert not install["scikit-learn"].specifier.contains("1.5.2")
    assert install["scikit-learn"].specifier.contains("1.6.0")
    # dlexp uses MLflow internals (the table-artifact tag, the SQLite store's schema set-up): a new major
    # version must be tried before it is allowed.
    assert not install["mlflow"].specifier.contains("4.0.0")
    assert install["mlflow"].specifier.contains("3.17.2")


def test_setup_cfg_has_no_unused_tool_sections():
    text = (ROOT / "setup.cfg").read_text()
    assert "[flake8]" not in text  # ruff is the linter; it reads pyproject.toml
