"""Packages and package data (metadata and dependencies are in setup.cfg).

The repository keeps conf/ and data/ at the top level; a wheel carries them inside the package, as
``dlexp/conf`` (Hydra's configs) and ``dlexp/data_files`` (the shipped spiral), through setuptools'
``package_dir`` mapping. dlexp/locations.py finds them in either place.
"""

from setuptools import find_namespace_packages, setup

setup(
    # hydra_plugins/: dlexp's SLURM launcher and search sweeper, where Hydra looks for plugins (a namespace
    # package, so no hydra_plugins/__init__.py).
    packages=find_namespace_packages(include=["dlexp", "dlexp.*", "hydra_plugins.*"],
                                     exclude=["*__pycache__*"]) + ["dlexp.conf", "dlexp.data_files"],
    package_dir={"dlexp.conf": "conf", "dlexp.data_files": "data"},
    package_data={"dlexp.conf": ["*.yaml", "**/*.yaml"], "dlexp.data_files": ["*.txt"]},
)
