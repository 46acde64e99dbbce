"""iscsi-ha: DRBD + iSCSI storage that follows the pool master of a two-host XenServer / XCP-ng pool.

The two source folders are installed under the ``iscsi_ha`` namespace (``controller/`` as
``iscsi_ha.controller``, ``exporter/`` as ``iscsi_ha.exporter``) because PyPI already has
distributions that own the top-level names ``controller`` and ``exporter``.
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
    license="GPL-3.0-or-later",
    python_requires=">=3.9",
    packages=[
        "iscsi_ha.controller",
        "iscsi_ha.controller.systems",
        "iscsi_ha.exporter",
    ],
    package_dir={
        "iscsi_ha.controller": "controller",
        "iscsi_ha.exporter": "exporter",
    },
    install_requires=[
        "prometheus-client>=0.17,<1",
        "APScheduler>=3.9,<4",
        "requests>=2.28,<3",
        "PyYAML>=5.4,<7",
        "XenAPI>=2.14",
        "bcrypt>=4,<6",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "ruff>=0.4", "mypy>=1.5", "types-PyYAML"],
    },
    entry_points={
        "console_scripts": [
            "iscsi-ha = iscsi_ha.controller.daemon:main",
            "iscsi-cfg = iscsi_ha.controller.cli:main",
        ]
    },
)
