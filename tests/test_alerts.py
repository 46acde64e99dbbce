"""The alert rules, their unit tests, the runbook and the Alertmanager example, checked with the
real tools.

* ``promtool check rules`` and ``promtool test rules`` (Debian package ``prometheus``) must pass;
* every alert carries the labels and annotations an on-call person needs, its runbook link points
  at a section that exists, and its unit tests show it both firing and staying quiet;
* the rules use only metric names the exporter has, and only DRBD state names DRBD has;
* ``amtool check-config`` accepts the Alertmanager example (also with its commented receivers
  switched on), ``amtool config routes test`` sends each severity to the right receiver, and a real
  Alertmanager on loopback inhibits the alerts of a host whose controller is down, but not the
  cluster-wide page.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from iscsi_ha.controller import model

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "iscsi-ha.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/iscsi-ha/iscsi-ha/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}
RECEIVER_OF = {"critical": "iscsi-ha-pager", "warning": "iscsi-ha-ticket", "info": "iscsi-ha-chat"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed (Debian: prometheus / prometheus-alertmanager)")
    return path


def run(argv: list, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def all_rules() -> list:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list:
    return [rule for rule in all_rules() if "alert" in rule]


def recorded() -> set:
    return {rule["record"] for rule in all_rules() if "record" in rule}


def github_slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set:
    return {
        github_slug(m.group(1))
        for m in re.finditer(r"^#{1,6} +(.+?) *$", RUNBOOK.read_text(), re.M)
    }


# --------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------


@pytest.mark.tools
def test_promtool_check_rules():
    res = run([tool("promtool"), "check", "rules", str(RULES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in res.stdout


@pytest.mark.tools
def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no promtool tests in alerts/tests/"
    res = run([tool("promtool"), "test", "rules", *map(str, RULE_TESTS)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(RULE_TESTS), res.stdout


@pytest.mark.tools
def test_promtool_unit_tests_can_fail(tmp_path):
    """The unit tests see a broken rule: two Primaries counted without the skew window pages
    during a normal switchover, and the switchover test says so."""
    primary = 'iscsi_ha_drbd_role{role="Primary"}'
    broken = RULES.read_text().replace(f"min_over_time({primary}[1m])", primary)
    assert broken != RULES.read_text()
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "alerts" / "iscsi-ha.rules.yml").write_text(broken)
    test_file = tmp_path / "alerts" / "tests" / "switchover.yml"
    shutil.copy(ROOT / "alerts" / "tests" / "switchover.yml", test_file)
    res = run([tool("promtool"), "test", "rules", str(test_file)])
    assert res.returncode != 0
    assert "alertname: IscsiHaTwoPrimaries, time: 2m," in res.stdout + res.stderr


# --------------------------------------------------------------------------------------------
# What every alert carries
# --------------------------------------------------------------------------------------------


def test_every_alert_has_severity_summary_description_and_runbook():
    problems = []
    for rule in alerts():
        name = rule["alert"]
        labels, ann = rule.get("labels", {}), rule.get("annotations", {})
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r}")
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                problems.append(f"{name}: no {key}")
        # A description without a template value says nothing about *this* host or resource.
        if "{{" not in str(ann.get("description", "")):
            problems.append(f"{name}: description quotes no label or value")
        if ann.get("runbook_url") != RUNBOOK_BASE + name.lower():
            problems.append(f"{name}: runbook_url {ann.get('runbook_url')!r}")
    assert not problems, "\n".join(problems)


def test_alert_names_are_unique():
    """A name is used once, or twice as a warning/critical pair: the controller-health alerts
    that page only when the storage probe fails too (same condition, `unless` vs `and` the
    probe's verdict, same summary and runbook)."""
    by_name: dict = {}
    for rule in alerts():
        by_name.setdefault(rule["alert"], []).append(rule)
    served = "on (cluster) (cluster:iscsi_ha_storage_probe_success:min == 1)"
    pairs = {name: rules for name, rules in by_name.items() if len(rules) > 1}
    assert set(pairs) == {
        "IscsiHaNoPrimary",
        "IscsiHaPromotionBlocked",
        "IscsiHaVipNowhere",
        "IscsiHaTargetNotServing",
    }
    for name, (crit, warn) in pairs.items():
        assert (crit["labels"]["severity"], warn["labels"]["severity"]) == ("critical", "warning")
        assert crit["expr"] == warn["expr"].replace(f"and {served}", f"unless {served}"), name
        assert crit["expr"].endswith(f"unless {served}"), name
        assert crit.get("for") == warn.get("for")
        for key in ("summary", "runbook_url"):
            assert crit["annotations"][key] == warn["annotations"][key], (name, key)


def test_docs_alert_list_has_every_alert_with_its_severities():
    text = (ROOT / "docs" / "alerts.md").read_text()
    rows = re.findall(r"^\| (IscsiHa\w+) \| ([a-z /]+) \|", text.split("## Alert list", 1)[1], re.M)
    documented = {name: set(sev.split(" / ")) for name, sev in rows}
    actual: dict = {}
    for rule in alerts():
        actual.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert documented == actual


def test_split_brain_and_two_primaries_page_without_delay():
    by_name = {rule["alert"]: rule for rule in alerts()}
    for name in ("IscsiHaSplitBrain", "IscsiHaTwoPrimaries"):
        assert by_name[name]["labels"]["severity"] == "critical"
        assert by_name[name].get("for", "0s") in ("0s", "0m", 0)


def test_every_runbook_anchor_exists():
    anchors = runbook_anchors()
    missing = [
        rule["alert"]
        for rule in alerts()
        if rule["annotations"]["runbook_url"].split("#", 1)[1] not in anchors
    ]
    assert not missing, f"no section in docs/runbook.md for: {missing}"


def test_runbook_internal_links_resolve():
    anchors = runbook_anchors()
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text())
    assert links
    assert sorted(set(links) - anchors) == []


def test_runbook_split_brain_gives_drbd_recovery_commands():
    text = RUNBOOK.read_text()
    section = text[text.index("## IscsiHaSplitBrain") : text.index("## IscsiHaDrbdDiskNotUpToDate")]
    for needle in (
        "drbdadm secondary",
        "drbdadm connect --discard-my-data",
        "drbdadm connect iscsi1",
        "/proc/drbd",
        "drbdadm status",
        "victim",
        "survivor",
        "never resolves a split brain",
    ):
        assert needle in section, needle


# --------------------------------------------------------------------------------------------
# Unit tests cover every alert, both ways
# --------------------------------------------------------------------------------------------


def test_every_alert_is_tested_firing_and_quiet():
    firing, quiet, referenced = set(), set(), set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                referenced.add(case["alertname"])
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert sorted(names - firing) == [], "alerts never shown firing"
    assert sorted(names - quiet) == [], "alerts never shown quiet"
    # promtool accepts `exp_alerts: []` for a name no rule has: such a check proves nothing.
    assert sorted(referenced - names) == [], "tests of alerts that do not exist"


# --------------------------------------------------------------------------------------------
# Names: metrics the exporter has, states DRBD has
# --------------------------------------------------------------------------------------------


# Labels every series gets from the scrape: `job` and `instance` from Prometheus, `cluster` from
# the scrape configuration (docs/alerts.md).
TARGET_LABELS = {"job", "instance", "cluster"}


def exporter_metrics() -> dict:
    """The exporter's own list, name -> label names: exporter/collector.py's METRICS table (the
    same list its module docstring shows), the storage probe's and the audit's (their own
    collectors), all from the catalogue."""
    from iscsi_ha.exporter import audit_collector, collector, probe_collector

    table = {
        name: set(labels)
        for name, _kind, labels in collector.METRICS
        + probe_collector.METRICS
        + audit_collector.METRICS
    }
    assert table, "exporter/collector.py lists no metrics"
    return table


def exporter_metric_names() -> set:
    return set(exporter_metrics())


def metric_names_in(expr: str) -> set:
    """iscsi_ha_* names in a PromQL expression (label values in quotes and the names of
    recording rules, level:metric:operations, removed first)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\b\w*:[\w:]+", " ", bare)
    return set(re.findall(r"\biscsi_ha_[a-z0-9_]+", bare))


def known(name: str, exported: set) -> bool:
    return name in exported or re.sub(r"_(bucket|sum|count)$", "", name) in exported


def test_rules_use_only_exported_metrics():
    exported = exporter_metric_names()
    unknown = {
        rule.get("alert") or rule["record"]: sorted(
            n for n in metric_names_in(rule["expr"]) if not known(n, exported)
        )
        for rule in all_rules()
    }
    assert {k: v for k, v in unknown.items() if v} == {}


def test_recording_rules_used_are_recorded():
    used = {
        name
        for rule in all_rules()
        for name in re.findall(r"\b\w*:[\w:]+", re.sub(r'"(?:[^"\\]|\\.)*"', '""', rule["expr"]))
    }
    assert used and sorted(used - recorded()) == []


def selector_labels(expr: str) -> list:
    """(metric, label name) for every label matcher of an iscsi_ha_* selector."""
    out = []
    for m in re.finditer(r"\b(iscsi_ha_[a-z0-9_]+)\{([^}]*)\}", expr):
        out += [(m.group(1), label) for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))]
    return out


def test_rules_match_only_labels_the_exporter_has():
    table = exporter_metrics()
    bad = [
        f"{rule['alert']}: {metric}{{{label}}}"
        for rule in alerts()
        for metric, label in selector_labels(rule["expr"])
        if metric in table and label not in table[metric] | TARGET_LABELS
    ]
    assert not bad, bad


def test_rules_name_only_real_drbd_states():
    states = set(model.DRBD_CONNECTION_STATES) | set(model.DRBD_DISK_STATES)
    roles = set(model.DRBD_ROLES)
    bad = []
    for rule in alerts():
        for m in re.finditer(r'\b(state|role)(=~|!~|=|!=)"([^"]*)"', rule["expr"]):
            label, values = m.group(1), set(m.group(3).split("|"))
            allowed = states if label == "state" else roles | {"master", "slave", "unknown"}
            bad += [f"{rule['alert']}: {label}={v!r}" for v in values - allowed]
    assert not bad, bad


def test_disconnected_states_are_the_complement_of_peer_reachable():
    rule = next(r for r in alerts() if r["alert"] == "IscsiHaDrbdDisconnected")
    m = re.search(r'state!~"([^"]+)"', rule["expr"])
    assert m, rule["expr"]
    assert set(m.group(1).split("|")) == set(model.DRBD_PEER_REACHABLE)


# --------------------------------------------------------------------------------------------
# Alertmanager
# --------------------------------------------------------------------------------------------


def uncommented(text: str) -> str:
    """The example with its ready-made receiver blocks (`#~ ` lines) switched on."""
    return re.sub(r"^(\s*)#~ ", r"\1", text, flags=re.M)


@pytest.mark.tools
def test_amtool_check_config(tmp_path):
    res = run([tool("amtool"), "check-config", str(ALERTMANAGER)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.tools
def test_amtool_check_config_with_commented_receivers(tmp_path):
    text = ALERTMANAGER.read_text()
    full = uncommented(text)
    for needle in ("pagerduty_configs", "opsgenie_configs", "slack_configs", "email_configs"):
        assert needle in full and needle not in re.sub(r"#.*", "", text)
    path = tmp_path / "alertmanager.yml"
    path.write_text(full)
    res = run([tool("amtool"), "check-config", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.tools
@pytest.mark.parametrize("severity", sorted(SEVERITIES))
def test_amtool_routes_each_severity(severity):
    argv = [
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={RECEIVER_OF[severity]}",
        f"severity={severity}",
        "alertname=IscsiHaNoPrimary",
        "cluster=pool-a",
    ]
    res = run(argv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == [RECEIVER_OF[severity]]


@pytest.mark.tools
def test_amtool_route_verification_can_fail():
    res = run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            "--verify.receivers=iscsi-ha-ticket",
            "severity=critical",
        ]
    )
    assert res.returncode != 0


def test_alertmanager_groups_by_cluster():
    route = yaml.safe_load(ALERTMANAGER.read_text())["route"]
    assert route["group_by"] == ["cluster"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data=None, timeout: float = 2.0):
    req = urllib.request.Request(
        url,
        data=None if data is None else json.dumps(data).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body.strip().startswith((b"[", b"{")) else body


@pytest.fixture
def alertmanager(tmp_path):
    """A real Alertmanager on a loopback port, with the example configuration; its webhooks point
    at a closed loopback port so that nothing leaves the machine. Stopped by PID."""
    binary = tool("prometheus-alertmanager")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(ALERTMANAGER.read_text().replace("127.0.0.1:9095", "127.0.0.1:1"))
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                http(base + "/-/ready")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "alertmanager did not start: "
                        + (tmp_path / "alertmanager.log").read_text()[-2000:]
                    )
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.integration
def test_controller_down_inhibits_that_host_only(alertmanager):
    common = {"job": "iscsi-ha", "cluster": "pool-a"}
    sent = {
        "down": {
            **common,
            "alertname": "IscsiHaControllerDown",
            "severity": "warning",
            "instance": "xs1:19856",
        },
        "same_host": {
            **common,
            "alertname": "IscsiHaTargetNotServing",
            "severity": "critical",
            "instance": "xs1:19856",
        },
        "other_host": {
            **common,
            "alertname": "IscsiHaDrbdDisconnected",
            "severity": "warning",
            "instance": "xs2:19856",
            "resource": "iscsi1",
            "state": "WFConnection",
        },
        "cluster_wide": {
            "cluster": "pool-a",
            "alertname": "IscsiHaNoPrimary",
            "severity": "critical",
            "resource": "iscsi1",
        },
        "other_cluster": {
            "job": "iscsi-ha",
            "cluster": "pool-b",
            "alertname": "IscsiHaTargetNotServing",
            "severity": "critical",
            "instance": "xs1:19856",
        },
        # A split brain explains its resource's disconnection (and nothing about iscsi1's).
        "split_brain": {
            **common,
            "alertname": "IscsiHaSplitBrain",
            "severity": "critical",
            "instance": "xs2:19856",
            "resource": "iscsi2",
        },
        "explained": {
            **common,
            "alertname": "IscsiHaDrbdDisconnected",
            "severity": "warning",
            "instance": "xs2:19856",
            "resource": "iscsi2",
            "state": "StandAlone",
        },
    }
    http(alertmanager + "/api/v2/alerts", [{"labels": labels} for labels in sent.values()])

    def states() -> dict:
        got = http(alertmanager + "/api/v2/alerts?inhibited=true&silenced=true&active=true")
        by_labels = {json.dumps(a["labels"], sort_keys=True): a["status"] for a in got}
        return {k: by_labels.get(json.dumps(v, sort_keys=True)) for k, v in sent.items()}

    def settled(current: dict) -> bool:
        return all(
            (current[k] or {}).get("state") == "suppressed" for k in ("same_host", "explained")
        )

    deadline = time.monotonic() + 10
    current = states()
    while not settled(current) and time.monotonic() < deadline:
        time.sleep(0.2)
        current = states()
    for key in ("same_host", "explained"):
        assert current[key]["state"] == "suppressed", (key, current[key])
        assert current[key]["inhibitedBy"]
    for key in ("down", "other_host", "cluster_wide", "other_cluster", "split_brain"):
        assert current[key]["state"] == "active", (key, current[key])


# --------------------------------------------------------------------------------------------
# The SLO block is generated (alerts/iscsi_ha_slo.py) and configurable
# --------------------------------------------------------------------------------------------


def slo_tool(*args: str) -> subprocess.CompletedProcess:
    import sys

    return run([sys.executable, str(ROOT / "alerts" / "iscsi_ha_slo.py"), *args])


def test_committed_slo_block_is_what_the_generator_makes_by_default():
    res = slo_tool("--check")
    assert res.returncode == 0, res.stderr


@pytest.mark.tools
def test_slo_objective_and_period_change_the_thresholds(tmp_path):
    copy = tmp_path / "rules.yml"
    copy.write_text(RULES.read_text())
    assert slo_tool("--rules", str(copy), "--check", "--objective", "99.5").returncode == 1
    res = slo_tool("--rules", str(copy), "--objective", "99.5", "--period", "28d")
    assert res.returncode == 0, res.stderr
    text = copy.read_text()
    # 2 % of the budget in 1 h over 28 d: burn rate 13.44; x 0.5 % = 0.0672.
    assert "ratio_rate1h > 0.0672" in text and "(iscsi_ha_up) + 0.995" in text
    assert "(iscsi_ha_up) + 2419200" in text  # 28 d in seconds
    assert text.split("# BEGIN storage SLO")[0] == RULES.read_text().split("# BEGIN storage SLO")[0]
    check = run([tool("promtool"), "check", "rules", str(copy)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        slo_tool(
            "--rules", str(copy), "--check", "--objective", "99.5", "--period", "28d"
        ).returncode
        == 0
    )
    bad = slo_tool("--rules", str(copy), "--objective", "100")
    assert bad.returncode == 2 and "between 0 and 100" in bad.stderr
