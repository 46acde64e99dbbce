"""The alert rules and the dashboard against a real Prometheus and Alertmanager watching the lab.

Issue 8 §5, the live half of what ``test_alerts.py`` and ``test_dashboards.py`` check statically.
One namespace lab (``lab/netlab.py``) runs both real controllers until they converge (node1 pool
master and DRBD Primary, node2 Secondary); a real Prometheus and a real Alertmanager run in the
lab's ``sw`` namespace (``lab/prometheus.py``), Prometheus scraping both exporters every second
with the cluster label the dashboard's own test fills in (``pool-a``), so that
``test_dashboards.substitute()`` turns every panel query into one for this lab.

1. Every alert expression and every dashboard query runs without error, and every vector selector
   in them returns at least one series. A quiet alert legitimately returns nothing, so its
   selectors are checked one by one (found with ``vector_selectors()``: Prometheus 2.42 has no
   ``/api/v1/parse_query`` and promtool no ``promql`` command). Enums are one-hot with every value
   present, so ``{state="StandAlone"}`` returns series (of value 0) in a healthy lab. The few
   series that exist only in some situations are produced for the check rather than excused:
   manual mode is switched on for a moment on the standby (``..._manual_mode_since_...``), a
   resync is caused behind the controllers' back (``..._sync_eta_seconds``), and ``ALERTS`` is
   read while the paging test's alerts fire. The exceptions left are listed in
   ``EMPTY_BY_DESIGN`` with their reasons. On the healthy lab every alert expression must also
   return *nothing*: no alert would fire.
2. The paging path, controller killed while the storage serves: the Primary's controller is
   SIGKILLed, so Prometheus cannot scrape it → ``IscsiHaControllerDown`` and, since a host that
   cannot be scraped counts as not holding anything, ``IscsiHaNoPrimary`` and
   ``IscsiHaVipNowhere`` fire in Prometheus, all three as warnings (the ticket receiver), because
   the standby's storage probe still logs in at the VIP and reads the LUN → Alertmanager delivers
   them to a webhook receiver this test runs (an HTTP server thread listening inside ``sw``);
   the pager receives nothing → after the controller is restarted, the ticket receiver gets
   ``"status": "resolved"``.
3. The paging path, target gone while the controllers run: port 3260 of the serving host is
   closed by a firewall rule (iptables in node1's namespace; tgtd, the VIP and the controllers
   carry on and see nothing wrong), so both hosts' storage probes fail →
   ``IscsiHaStorageErrorBudgetBurn`` (critical) reaches the pager within the fast-burn window,
   and nothing else pages. Runs last: the burn alert resolves only when its 5-minute window no
   longer holds the failures.

Timing. The shipped rules wait minutes (``for: 1m`` .. ``1h``, groups evaluated every 15 s) and the
shipped Alertmanager waits ``group_wait: 10s``/``30s`` and ``group_interval: 1m``/``5m``. The test
runs a derived copy of both: every non-zero ``for:`` becomes ``TEST_FOR`` (3 s), every rule group
is evaluated every second (as is the scrape), and ``group_wait``/``group_interval`` become 1 s,
``resolve_timeout`` 10 s. Expressions, labels, annotations, routes, inhibitions and receivers stay
the shipped ones (``test_test_copies_change_only_the_timing`` checks that); only the receivers'
webhook URLs point at the test's server.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socketserver
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml
from iscsi_ha.exporter import audit_collector
from test_dashboards import VARIABLES, dashboard, queries, substitute

from lab import prometheus as lprom
from lab.demo import cfg, converged_on, quiet, start_cluster, tgt_ports, wait_for
from lab.netlab import SWITCH_ADDR, Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not all(
            shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
            for t in ("tgtd", "tgtadm", "arping", "iscsi-inq", "iptables")
        ),
        reason="needs tgt, iputils-arping, libiscsi-bin and iptables",
    ),
    pytest.mark.skipif(
        not all(os.access(p, os.X_OK) for p in (lprom.PROMETHEUS, lprom.ALERTMANAGER)),
        reason="needs prometheus and prometheus-alertmanager",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "iscsi-ha.rules.yml"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"
SHIPPED_WEBHOOKS = "http://127.0.0.1:9095"  # where alertmanager.yml's placeholder receivers post
CLUSTER = VARIABLES["$cluster"]
RESOURCE = "iscsi1"
TEST_FOR = "3s"
RESYNC_SECONDS = 6.0  # the simulator's resync length: several 1 s scrapes see it
CONVERGE = 30.0  # seconds (measured ~5 s)
SIGNAL = 15.0  # seconds for a metric change to reach Prometheus / an alert to fire (~5 s)

# Dashboard queries that return nothing in a healthy lab by design, with the reason; they must
# still run without error, and their selectors must still return data.
EMPTY_BY_DESIGN = {
    ("Primary since", "A"): (
        "the last whole minute at which the holder was not Primary: empty (the panel says "
        "'before the time range') when no minute boundary fell in the few seconds before "
        "node1's promotion; test_dashboards checks its answer on known history"
    ),
}
ALERTS_PANELS = {("Firing alerts", "A"), ("Alerts over time", "A")}  # read while alerts fire
# The data-safety audit's metrics: the namespace lab runs DRBD's simulator, which has no
# `drbdsetup show`, so the lab switches the audit off (lab/netlab.py); the audit's parsers and
# verdicts are tested on real DRBD 8.4 captures (tests/test_audit.py) and its alerts by promtool.
# Their selectors must still run without error here; they return nothing by design.
AUDIT_METRICS = {name for name, _kind, _labels in audit_collector.METRICS}
# Exported once `iscsi-cfg switchover` ran (tests/test_switchover*.py run one); this lab does not.
SWITCHOVER_ONLY = {"iscsi_ha_switchover_duration_seconds"}
SYNC_ONLY = "iscsi_ha_drbd_sync_eta_seconds"  # exported during a resync only

# --------------------------------------------------------------------------------------------
# Vector selectors in PromQL
# --------------------------------------------------------------------------------------------

IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")  # numbers, durations (5m, 1h30m), 0x1f
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}


def _skip_string(text: str, i: int) -> int:
    quote, i = text[i], i + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" and quote != "`" else 1
    return i + 1


def _close(text: str, i: int, opening: str, closing: str) -> int:
    """Index just past the bracket that closes the one at ``i`` (quotes respected)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            i = _skip_string(text, i)
            continue
        depth += (c == opening) - (c == closing)
        i += 1
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {opening!r} in {text!r}")


def vector_selectors(expr: str) -> List[str]:
    """Every vector selector of a PromQL expression (``name{matchers}``, ``name`` or
    ``{matchers}``), in order, without its range, offset or ``@``: the metric names, as opposed to
    functions (a name before ``(``), aggregations, keywords, label lists after by/on/...,
    strings, numbers and durations."""
    out: List[str] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "#":  # a comment, to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c == "[":  # a range or subquery: durations only
            i = _close(expr, i, "[", "]")
        elif c == "{":
            end = _close(expr, i, "{", "}")
            out.append(expr[i:end])
            i = end
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            i = NUMBER.match(expr, i).end()  # type: ignore[union-attr]
        elif IDENT.match(expr, i):
            m = IDENT.match(expr, i)
            assert m is not None
            word, i = m.group(), m.end()
            k = i
            while k < len(expr) and expr[k].isspace():
                k += 1
            nxt = expr[k : k + 1]
            if word in GROUPING:
                if nxt == "(":
                    i = _close(expr, k, "(", ")")
            elif nxt == "(" or word.lower() in KEYWORDS | AGGREGATIONS:
                continue  # a function call, an aggregation or a keyword
            elif nxt == "{":
                i = _close(expr, k, "{", "}")
                out.append(word + expr[k:i])
            else:
                out.append(word)
        else:
            i += 1
    return out


# --------------------------------------------------------------------------------------------
# The test copies of the rules and the Alertmanager configuration
# --------------------------------------------------------------------------------------------


def _seconds(duration: Any) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", str(duration))
    assert "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def rules_for_test() -> Dict[str, Any]:
    """The shipped rules with every non-zero ``for:`` at TEST_FOR, evaluated every second."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if _seconds(rule.get("for", "0s")) > 0:
                rule["for"] = TEST_FOR
    return doc


def alertmanager_for_test(webhooks: str) -> Dict[str, Any]:
    """The shipped Alertmanager example, waiting 1 s instead of minutes, posting to
    ``webhooks`` (the test's receiver) instead of the placeholder."""
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    doc.setdefault("global", {})["resolve_timeout"] = "10s"

    def shorten(route: Dict[str, Any], root: bool) -> None:
        for key in ("group_wait", "group_interval"):
            if root or key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child, False)

    shorten(doc["route"], True)
    for receiver in doc["receivers"]:
        hooks = receiver.get("webhook_configs", [])
        assert hooks, f"receiver {receiver['name']} has no webhook the test can stand in for"
        for hook in hooks:
            assert hook["url"].startswith(SHIPPED_WEBHOOKS), hook["url"]
            hook["url"] = webhooks + hook["url"][len(SHIPPED_WEBHOOKS) :]
    return doc


def shipped_alerts() -> List[Dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alert_expressions() -> List[Tuple[str, str]]:
    return [(r["alert"], r["expr"]) for r in shipped_alerts() if "alert" in r]


# --------------------------------------------------------------------------------------------
# The webhook receiver
# --------------------------------------------------------------------------------------------


class Webhook:
    """Alertmanager's webhook receiver, played by the test: an HTTP server whose listening socket
    is made inside the lab's ``sw`` namespace (a socket stays in the namespace it was created
    in, so the serving thread itself can stay here). It records every POST."""

    def __init__(self, netns: str, host: str) -> None:
        self.posts: List[Tuple[float, str, Dict[str, Any]]] = []  # (monotonic, path, payload)
        self._lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"unreadable": body.decode("utf-8", "replace")}
                with hook._lock:
                    hook.posts.append((time.monotonic(), self.path, doc))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:
                # Not HTTPServer's: that resolves the host name (a DNS query) for nothing.
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        self.server = lprom.in_netns(netns, lambda: Server((host, 0), Handler))
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.1,), name="webhook", daemon=True
        )
        self._thread.start()

    def since(self, t: float) -> List[Tuple[float, str, Dict[str, Any]]]:
        with self._lock:
            return [p for p in self.posts if p[0] >= t]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def notifications(
    hook: Webhook, t: float, receiver: str, status: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Payloads posted to ``receiver`` since ``t`` (with that group status, if given)."""
    out = []
    for _, path, doc in hook.since(t):
        if doc.get("receiver") == receiver and status in (None, doc.get("status")):
            # Each receiver has its own URL path: the payload came through the right webhook.
            assert path == "/iscsi-ha/" + receiver.rsplit("-", 1)[1], (path, receiver)
            out.append(doc)
    return out


def alert_names(docs: List[Dict[str, Any]], status: str) -> set:
    return {a["labels"]["alertname"] for d in docs for a in d["alerts"] if a["status"] == status}


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


class Live:
    def __init__(
        self,
        lab: Lab,
        pids: Dict[str, int],
        prom: lprom.Prometheus,
        am: lprom.LabService,
        hook: Webhook,
        timings: Dict[str, float],
    ) -> None:
        self.lab, self.pids, self.prom, self.am, self.hook = lab, pids, prom, am, hook
        self.timings = timings

    def evaluate(self, expr: str) -> Tuple[Optional[List[Dict[str, Any]]], str]:
        """(samples, "") or (None, Prometheus's error): a query that fails is a finding."""
        url = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            doc = self.prom.get_json(url, timeout=10)
        except urllib.error.HTTPError as exc:  # 400/422: the error is in the JSON body
            return None, exc.read().decode("utf-8", "replace")
        if doc.get("status") != "success" or doc["data"]["resultType"] not in ("vector", "scalar"):
            return None, json.dumps(doc)
        result = doc["data"]["result"]
        if doc["data"]["resultType"] == "scalar":
            result = [{"metric": {}, "value": result}]
        return result, ""

    def firing(self) -> List[Dict[str, Any]]:
        alerts = self.prom.get_json("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


@pytest.fixture(scope="module")
def live():
    timings: Dict[str, float] = {}
    t0 = time.monotonic()
    with Lab(tgt_ports=tgt_ports(), resync_seconds=RESYNC_SECONDS) as lab:
        hook = Webhook(lab.sw, SWITCH_ADDR)
        try:
            am = lprom.start_alertmanager(
                lab, yaml.safe_dump(alertmanager_for_test(hook.url), sort_keys=False)
            )
            rules = lab.base / "alerts-test" / "iscsi-ha.rules.yml"
            rules.parent.mkdir(parents=True, exist_ok=True)
            rules.write_text(yaml.safe_dump(rules_for_test(), sort_keys=False))
            pids = start_cluster(lab)
            wait_for("node1 holds the storage", converged_on(lab, lab.node1), CONVERGE, lab)
            wait_for("both controllers quiet", lambda: all(map(quiet, lab.nodes)), 10, lab)
            timings["converged"] = time.monotonic() - t0
            # Started on a converged lab: nothing it ever saw should have alerted before the
            # paging test's fault.
            prom = lprom.start_prometheus(lab, cluster=CLUSTER, rule_files=[rules], alertmanager=am)
            am.wait_ready(lab)
            prom.wait_ready(lab)
            prom.wait_targets_up(2, timeout=20)
            timings["prometheus_up"] = time.monotonic() - t0
            yield Live(lab, pids, prom, am, hook, timings)
        finally:
            hook.close()
            print(
                f"\ntimings (s from the start of the module): "
                f"{ {k: round(v, 1) for k, v in timings.items()} }"
            )


def wait_for_data(live: Live, expr: str, timeout: float = SIGNAL) -> float:
    return wait_for(
        f"Prometheus returns data for {expr}",
        lambda: bool(live.evaluate(expr)[0]),
        timeout,
        period=0.2,
    )


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_vector_selectors_finds_metrics_not_functions_labels_or_keywords():
    expr = """
      sum by (cluster, resource) (
        rate(iscsi_ha_a{state=~"x|}y", role!="by"}[5m] offset 10m)
        or on (cluster, instance) (iscsi_ha_b * 0)   # a comment with iscsi_ha_c
      ) > 0.5 and up{job="j"} unless
      label_replace(min_over_time(iscsi_ha_d[10m:]) @ 1609746000, "e", "f", "", "")
      * on (instance) group_left (address) iscsi_ha_e > bool 1e3
      and max without (role) (ALERTS) and {__name__="iscsi_ha_f"}"""
    assert vector_selectors(expr) == [
        'iscsi_ha_a{state=~"x|}y", role!="by"}',
        "iscsi_ha_b",
        'up{job="j"}',
        "iscsi_ha_d",
        "iscsi_ha_e",
        "ALERTS",
        '{__name__="iscsi_ha_f"}',
    ]
    # Every selector of the shipped rules and panels is found: none is left in what remains
    # once the selectors are cut out.
    for _, expr in alert_expressions() + [(t, e) for t, _, e in queries(dashboard())]:
        rest = expr
        for sel in vector_selectors(expr):
            rest = rest.replace(sel, " ", 1)
        assert not re.search(r"\biscsi_ha_\w+", re.sub(r'"[^"]*"', '""', rest)), expr


def test_test_copies_change_only_the_timing():
    shipped = yaml.safe_load(RULES.read_text())
    copy = rules_for_test()
    assert len(copy["groups"]) == len(shipped["groups"])
    for old_group, new_group in zip(shipped["groups"], copy["groups"]):
        assert new_group["interval"] == "1s"
        assert len(new_group["rules"]) == len(old_group["rules"])
        for old, new in zip(old_group["rules"], new_group["rules"]):
            assert {k: v for k, v in new.items() if k != "for"} == {
                k: v for k, v in old.items() if k != "for"
            }
            assert _seconds(new.get("for", "0s")) == min(
                _seconds(old.get("for", "0s")), _seconds(TEST_FOR)
            )
            assert _seconds(new.get("for", "0s")) > 0 or _seconds(old.get("for", "0s")) == 0
    am_shipped = yaml.safe_load(ALERTMANAGER.read_text())
    am = alertmanager_for_test("http://10.0.0.1:1")
    assert am["inhibit_rules"] == am_shipped["inhibit_rules"]
    assert am["route"]["group_by"] == am_shipped["route"]["group_by"]
    assert [(r["receiver"], r["matchers"]) for r in am["route"]["routes"]] == [
        (r["receiver"], r["matchers"]) for r in am_shipped["route"]["routes"]
    ]
    urls = [h["url"] for r in am["receivers"] for h in r["webhook_configs"]]
    assert urls == [
        "http://10.0.0.1:1/iscsi-ha/pager",
        "http://10.0.0.1:1/iscsi-ha/ticket",
        "http://10.0.0.1:1/iscsi-ha/chat",
    ]


def test_every_alert_expression_runs_and_its_selectors_return_data(live):
    lab, n2 = live.lab, live.lab.node2
    wait_for_recording_rules(live)
    exprs = alert_expressions()
    assert len(exprs) == 47
    selectors = sorted({s for _, e in exprs for s in vector_selectors(e)})
    # The one series of the rules that exists only in manual mode: switch it on, on the
    # standby (nothing moves), while the selectors are read.
    since = "iscsi_ha_manual_mode_since_timestamp_seconds"
    res = cfg(n2, "manual-mode-enable")
    assert res.rc == 0, res.text
    failed, empty = {}, []
    try:
        wait_for_data(live, f'{since}{{node="node2"}}')
        # The holder's periodic duplicate-address probe (vip.probe_interval, 10 s by default)
        # creates iscsi_ha_vip_conflict.
        wait_for_data(live, "iscsi_ha_vip_conflict", timeout=15)
        for sel in selectors:
            result, error = live.evaluate(sel)
            if result is None:
                failed[sel] = error
            elif not result and not any(name in sel for name in AUDIT_METRICS):
                empty.append(sel)
    finally:
        res = cfg(n2, "manual-mode-disable")
        assert res.rc == 0, res.text
    assert not failed, failed
    assert not empty, f"selectors of the alert rules with no data from the live lab: {empty}"
    # The check has teeth: a wrong label value or metric name reads as nothing.
    for typo in ('iscsi_ha_drbd_role{role="primary"}', "iscsi_ha_drbd_roles"):
        assert live.evaluate(typo) == ([], ""), typo
    result, error = live.evaluate("sum by (instance (up)")  # and a broken query fails
    assert result is None and "parse error" in error, error

    # The annotations' own queries (the VIP address in IscsiHaVip*) return data too.
    templates = set()
    for rule in shipped_alerts():
        for text in rule.get("annotations", {}).values():
            templates |= set(re.findall(r'printf "([^"]+)" \$labels\.(\w+)', text))
    assert templates
    values = {"cluster": CLUSTER, "instance": lab.node1.exporter_listen}
    for template, label in sorted(templates):
        expr = template.replace("%q", json.dumps(values[label]))
        result, error = live.evaluate(expr)
        assert result, f"annotation query {expr}: {error or 'no data'}"

    # The lab is healthy and converged: every full expression runs and returns nothing (no
    # alert would fire), and none fires or is pending.
    wait_for(
        "manual mode off again in Prometheus",
        lambda: not live.evaluate(f'{since}{{node="node2"}}')[0],
        SIGNAL,
        period=0.2,
    )
    loud = {}
    for name, expr in exprs:
        result, error = live.evaluate(expr)
        assert result is not None, f"{name}: {error}"
        if result:
            loud[name] = result
    assert not loud, f"alerts whose expression holds on the healthy lab: {loud}"
    alerts = live.prom.get_json("/api/v1/alerts")["data"]["alerts"]
    assert alerts == [], alerts
    assert live.hook.posts == [], live.hook.posts


def wait_for_recording_rules(live: Live) -> None:
    """The SLO's recording rules need two scrapes of the probe's counters before they answer."""
    for window in ("5m", "3d", "30d"):
        wait_for_data(live, f"cluster:iscsi_ha_storage_probe_errors:ratio_rate{window}")


def test_every_dashboard_query_returns_data(live):
    lab = live.lab
    wait_for_recording_rules(live)
    panel_queries = [(t, r, substitute(e)) for t, r, e in queries(dashboard())]
    assert len(panel_queries) >= 30
    healthy = [q for q in panel_queries if (q[0], q[1]) not in ALERTS_PANELS]
    sync_only = [q for q in healthy if SYNC_ONLY in q[2]]
    assert sync_only, "no panel shows the resync ETA any more: update SYNC_ONLY"

    # The cluster variable: label_values(up{job="iscsi-ha"}, cluster) lists this lab.
    up = live.evaluate('up{job="iscsi-ha"}')[0] or []
    assert {s["metric"].get("cluster") for s in up} == {CLUSTER}

    def check(items: List[Tuple[str, str, str]]) -> Tuple[Dict[str, str], List[str], List]:
        failed, empty_selectors, empty_queries = {}, [], []
        for title, ref, expr in items:
            result, error = live.evaluate(expr)
            if result is None:
                failed[f"{title} {ref}"] = error
                continue
            if any(name in expr for name in AUDIT_METRICS | SWITCHOVER_ONLY):
                continue  # runs without error; no data in this lab by design (see above)
            if not result and (title, ref) not in EMPTY_BY_DESIGN:
                empty_queries.append((title, ref, expr))
            for sel in vector_selectors(expr):
                if not live.evaluate(sel)[0]:
                    empty_selectors.append(f"{title} {ref}: {sel}")
        return failed, empty_selectors, empty_queries

    failed, empty_sel, empty = check([q for q in healthy if q not in sync_only])
    assert not failed, failed
    assert not empty_sel, empty_sel
    assert not empty, f"panel queries with no data from the live lab: {empty}"

    # The resync panels: a resync, caused behind the controllers' back (the standby drops the
    # replication link and makes it again; the Primary wrote meanwhile, so it resyncs).
    n2 = lab.node2
    for cmd in ("disconnect", "connect"):
        res = n2.drbdadm(cmd, RESOURCE)
        assert res.returncode == 0, res.stderr
    try:
        seen = wait_for_data(live, f'{SYNC_ONLY}{{cluster="{CLUSTER}"}}', timeout=RESYNC_SECONDS)
        failed, empty_sel, empty = check(sync_only)
    finally:
        wait_for(
            "the resync ends, Connected and UpToDate on both",
            lambda: all(
                live.evaluate(
                    f'iscsi_ha_drbd_connection_state{{node="{n.name}",state="Connected"}} == 1 '
                    f'and on (instance) iscsi_ha_drbd_disk_state{{node="{n.name}",side="local",'
                    f'state="UpToDate"}} == 1'
                )[0]
                for n in lab.nodes
            ),
            RESYNC_SECONDS + SIGNAL,
            lab,
            period=0.2,
        )
    assert not failed, failed
    assert not empty_sel, empty_sel
    assert not empty, f"resync panel queries with no data during a resync: {empty}"
    live.timings["resync_seen_in_prometheus"] = seen


def test_paging_path_controller_killed_fires_delivers_and_resolves(live, record_property):
    lab, hook = live.lab, live.hook
    n1 = lab.node1
    node1 = n1.exporter_listen
    wait_for("both controllers quiet", lambda: all(map(quiet, lab.nodes)), 10, lab)
    assert live.firing() == [], live.firing()
    # The standby's probe reads the LUN before the fault: that is what keeps the pager quiet.
    wait_for_data(live, 'iscsi_ha_storage_probe_success{node="node2",lun="1"} == 1')
    expected = {
        # Prometheus cannot scrape node1: a ticket for that host...
        "IscsiHaControllerDown": ("iscsi-ha-ticket", {"instance": node1, "node": "node1"}),
        # ...and, since what cannot be scraped counts as holding nothing, tickets for the
        # controllers' view; not pages, because node2's storage probe still reads the LUN.
        "IscsiHaNoPrimary": ("iscsi-ha-ticket", {"resource": RESOURCE, "severity": "warning"}),
        "IscsiHaVipNowhere": ("iscsi-ha-ticket", {"severity": "warning"}),
    }
    t_kill = time.monotonic()
    lab.kill_process(live.pids["node1"])  # SIGKILL: the storage stays where it was

    def firing_names() -> set:
        return {a["labels"]["alertname"] for a in live.firing()}

    fired = wait_for(
        "the alerts fire in Prometheus",
        lambda: firing_names() >= set(expected),
        SIGNAL + 5,
        period=0.1,
    )
    assert firing_names() == set(expected), live.firing()
    for alert in live.firing():
        name = alert["labels"]["alertname"]
        assert alert["labels"]["cluster"] == CLUSTER
        assert alert["labels"].items() >= expected[name][1].items(), alert
        ann = alert["annotations"]
        assert "{{" not in json.dumps(ann) and ann["runbook_url"].endswith("#" + name.lower())
    # The dashboard's alert panels show them.
    for title, ref, expr in queries(dashboard()):
        if (title, ref) in ALERTS_PANELS:
            result, error = live.evaluate(substitute(expr))
            assert result is not None, f"{title} {ref}: {error}"
            assert {s["metric"]["alertname"] for s in result} == set(expected), (title, result)

    def delivered(status: str, since: float) -> bool:
        """Each expected alert reached its receiver with ``status``, and each receiver's group
        has that status. (A group notification lists resolved alerts next to firing ones: the
        first alert of a group to resolve is reported in a "firing" notification.)"""
        receivers = {receiver for receiver, _ in expected.values()}
        return all(
            name in alert_names(notifications(hook, since, receiver), status)
            for name, (receiver, _) in expected.items()
        ) and all(notifications(hook, since, r, status) for r in receivers)

    wait_for(
        "Alertmanager delivers them to the webhook",
        lambda: delivered("firing", t_kill),
        SIGNAL,
        period=0.1,
    )
    paged = time.monotonic() - t_kill
    for receiver in ("iscsi-ha-ticket",):
        for doc in notifications(hook, t_kill, receiver, "firing"):
            assert doc["groupLabels"] == {"cluster": CLUSTER}, doc
            for alert in doc["alerts"]:
                assert expected[alert["labels"]["alertname"]][0] == receiver, alert
                assert alert["annotations"]["summary"] and alert["annotations"]["runbook_url"]
    assert not notifications(hook, t_kill, "iscsi-ha-chat", "firing")
    assert not notifications(hook, t_kill, "iscsi-ha-pager"), "the controller's death paged"

    # Repair: the controller is back, Prometheus scrapes it, everything resolves.
    t_restart = time.monotonic()
    live.pids["node1"] = lab.start_controller(n1)
    resolved_in_prom = wait_for(
        "nothing fires in Prometheus any more",
        lambda: not live.firing(),
        SIGNAL + 5,
        lab,
        period=0.1,
    )
    wait_for(
        'each receiver gets "status": "resolved"',
        lambda: delivered("resolved", t_restart),
        SIGNAL,
        lab,
        period=0.1,
    )
    resolved = time.monotonic() - t_restart
    for receiver in ("iscsi-ha-ticket",):
        for doc in notifications(hook, t_restart, receiver, "resolved"):
            assert all(
                a["status"] == "resolved" and not a["endsAt"].startswith("0001")
                for a in doc["alerts"]
            ), doc
    wait_for("node1 still holds the storage", converged_on(lab, n1), 10, lab)
    assert not notifications(hook, t_kill, "iscsi-ha-pager"), "the controller's death paged"

    figures = {
        "kill_to_firing_in_prometheus_s": round(fired, 1),
        "kill_to_webhook_firing_s": round(paged, 1),
        "restart_to_resolved_in_prometheus_s": round(resolved_in_prom, 1),
        "restart_to_webhook_resolved_s": round(resolved, 1),
        "whole_fault_s": round(time.monotonic() - t_kill, 1),
    }
    live.timings.update(figures)
    record_property("paging_path", json.dumps(figures))
    print(f"\npaging path: {figures}")


def test_paging_path_target_gone_while_controllers_run_pages_fast(live, record_property):
    """Runs last (see the module docstring): its page resolves only after the 5 m window."""
    lab, hook = live.lab, live.hook
    n1 = lab.node1
    wait_for("both controllers quiet", lambda: all(map(quiet, lab.nodes)), 10, lab)
    wait_for(
        "node1 restarted in the previous test probes again",
        lambda: bool(
            live.evaluate(
                'min(iscsi_ha_storage_probe_success{lun="1"}) == 1 and '
                "count(iscsi_ha_storage_probe_"
                'success{lun="1"}) == 2'
            )[0]
        ),
        SIGNAL,
        lab,
        period=0.2,
    )
    assert live.firing() == [], live.firing()
    rule = ["INPUT", "-p", "tcp", "--dport", "3260", "-j", "DROP"]
    t_cut = time.monotonic()
    lab.run(n1, ["iptables", "-I", *rule], check=True)
    try:
        wait_for(
            "both probes fail",
            lambda: bool(live.evaluate('max(iscsi_ha_storage_probe_success{lun="1"}) == 0')[0]),
            SIGNAL,
            lab,
            period=0.2,
        )

        def paged() -> set:
            return alert_names(notifications(hook, t_cut, "iscsi-ha-pager"), "firing")

        wait_for(
            "the burn-rate page reaches the pager",
            lambda: "IscsiHaStorageErrorBudgetBurn" in paged(),
            60,
            lab,
            period=0.2,
        )
        to_page = time.monotonic() - t_cut
        # Within the fast-burn window (5 m), and nothing but the probe pages: the controllers
        # see a healthy target, the VIP and a Primary.
        assert to_page < 300
        assert paged() == {"IscsiHaStorageErrorBudgetBurn"}, paged()
        firing = {a["labels"]["alertname"]: a for a in live.firing()}
        burn = firing["IscsiHaStorageErrorBudgetBurn"]
        assert burn["labels"]["severity"] == "critical" and burn["labels"]["cluster"] == CLUSTER
        assert "IscsiHaNoPrimary" not in firing and "IscsiHaTargetNotServing" not in firing
    finally:
        lab.run(n1, ["iptables", "-D", *rule], check=True)
    wait_for(
        "the probes read the LUN again",
        lambda: bool(live.evaluate('min(iscsi_ha_storage_probe_success{lun="1"}) == 1')[0]),
        SIGNAL,
        lab,
        period=0.2,
    )
    figures = {"cut_to_pager_s": round(to_page, 1)}
    live.timings.update(figures)
    record_property("target_gone_paging", json.dumps(figures))
    print(f"\ntarget gone: {figures}")
