"""iscsi-ha: DRBD + iSCSI storage following the pool master of a two-host XenServer / XCP-ng pool.

The two source folders are installed under the ``iscsi_ha`` namespace (``controller/`` as
``iscsi_ha.controller``, ``exporter/`` as ``iscsi_ha.exporter``) because PyPI already has
distributions that own the top-level names ``controller`` and ``exporter``.

Besides the packages, the distribution carries two data files, installed under
``<prefix>/share/iscsi-ha/``: the example configuration and the systemd unit. The RPM
(``packaging/iscsi-ha.spec``) takes them from there for /etc/iscsi-ha and /usr/lib/systemd/system;
an operator installing from the wheel finds them in the virtualenv. Nothing reads them at run
time, and an editable install does not copy them (setuptools installs no ``data_files`` in
editable mode): in a checkout they are ``examples/iscsi-ha.yaml`` and
``packaging/iscsi-ha.service``. Non-Python files placed inside ``controller/`` or ``exporter/``
travel as package data (``include_package_data`` + MANIFEST.in), in the wheel and, through the
``package_dir`` mapping, from the source folders in an editable install.

Supported Pythons: 3.9 and newer (the code keeps 3.9 syntax); the RPM bundles CPython 3.11, the
version CI runs, so ``python_requires`` must keep admitting 3.11 (tests/test_packaging.py checks
it against the interpreter actually bundled).
"""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "controller" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="iscsi-ha",
    version=VERSION,
    description="High-availability iSCSI storage on DRBD for two-host XenServer / XCP-ng pools",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    author="iscsi-ha contributors",
    license="GPL-3.0-or-later",
    keywords="drbd iscsi tgt xcp-ng xenserver high-availability prometheus",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: No Input/Output (Daemon)",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: System :: Clustering",
        "Topic :: System :: Monitoring",
    ],
    python_requires=">=3.9",
    packages=[
        "iscsi_ha.controller",
        "iscsi_ha.controller.systems",
        "iscsi_ha.controller.systems.drbd",
        "iscsi_ha.exporter",
    ],
    package_dir={
        "iscsi_ha.controller": "controller",
        "iscsi_ha.exporter": "exporter",
    },
    include_package_data=True,
    zip_safe=False,
    data_files=[
        ("share/iscsi-ha", ["examples/iscsi-ha.yaml", "packaging/iscsi-ha.service"]),
    ],
    # Lower bounds: the oldest releases with what the code uses; upper bounds: the next major
    # version, where these projects announce breaking changes (APScheduler 4 is a rewrite).
    install_requires=[
        "prometheus-client>=0.17,<1",
        "APScheduler>=3.9,<4",
        "requests>=2.28,<3",
        "PyYAML>=5.4,<7",
        "XenAPI>=2.14",
        "bcrypt>=4,<6",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            # a per-test time limit (pytest.ini): a hung test fails instead of stalling CI
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            "ruff==0.17.6",  # pinned: `ruff format` output changes between releases
            "mypy>=1.5",
            # lint-imports: the layer contracts in .importlinter ("protected" needs 2.x)
            "import-linter>=2.1,<3",
            "types-PyYAML",
            # tests/test_packaging.py: builds the sdist/wheel and checks version specifiers.
            "build>=1.0",
            "packaging>=22",
            # dashboards/: Grafana Labs' dashboards-as-code SDK (grafanalib is unmaintained);
            # alpha versioning, so pinned exactly.
            "grafana-foundation-sdk==1769699379!11.6.0; python_version >= '3.11'",
        ],
    },
    entry_points={
        "console_scripts": [
            "iscsi-ha = iscsi_ha.controller.daemon:main",
            "iscsi-cfg = iscsi_ha.controller.cli:main",
        ]
    },
)
