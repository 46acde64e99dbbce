"""The documents generated from the code's single declarations are up to date.

examples/iscsi-ha.yaml and README.md's key table come from the configuration schema
(controller/config.py), docs/metrics.md from the metric catalogue (exporter/catalogue.py). A key
or a metric added in the code without `make docs` fails here, naming the file.
"""

import dataclasses
import importlib.util
from pathlib import Path

import yaml
from iscsi_ha.controller import config
from iscsi_ha.exporter import catalogue

ROOT = Path(__file__).resolve().parent.parent


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date():
    stale = [str(p.relative_to(ROOT)) for p in gen_docs().drifted()]
    assert not stale, f"out of date with the code, run `make docs`: {stale}"


def test_every_key_has_a_check_and_a_help():
    for cls in [config.Config, config.Lun, *config._SECTIONS.values()]:
        for f in dataclasses.fields(cls):
            if f.name in config._SECTIONS:
                continue
            assert callable(f.metadata.get("check")), f"{cls.__name__}.{f.name}"
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name}"


def test_top_order_is_every_field_once():
    assert sorted(config.TOP_ORDER) == sorted(f.name for f in dataclasses.fields(config.Config))


def test_shown_defaults_read_back_as_the_defaults():
    g = gen_docs()
    for _section, path, f in g.keys():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        if f.metadata.get("derived"):
            continue
        default = g.default_of(f)
        shown = yaml.safe_load(g.yaml_value(default))
        assert shown == (list(default) if isinstance(default, tuple) else default), path


def test_every_metric_has_a_help_and_a_known_kind():
    for m in catalogue.CATALOGUE:
        assert m.name.startswith("iscsi_ha_") and m.help.strip(), m.name
        assert m.kind in catalogue.KINDS, m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
