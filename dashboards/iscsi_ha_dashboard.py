"""The iscsi-ha Grafana dashboard, written as code.

Run ``python dashboards/iscsi_ha_dashboard.py`` to regenerate ``dashboards/iscsi-ha.json`` (the
file Grafana loads, committed next to this generator); ``--check`` exits 1 when the committed file
is not what this code produces (tests/test_dashboards.py does the same).

Built with Grafana Labs' own dashboards-as-code SDK (``grafana-foundation-sdk``, the build for
Grafana 11.6 schemas; dev/test dependency only). One dashboard shows one pool: the ``cluster``
variable picks it (the label the scrape configuration sets, see docs/alerts.md), ``datasource``
the Prometheus. Each host exports only itself, so every panel asks for both hosts of the cluster
and the picture of the pool is put together here.

The exporter's one-hot enums (a series per possible value, 0 or 1) are shown two ways: the
current state as a table (the ``== 1`` series and their labels), and roles over time as numbers
(Primary = 2, Secondary = 1, Unknown = 0) mapped back to words, so that a state timeline draws one
row per host and resource whose colour changes at each transition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    FieldColorModeId,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "iscsi-ha.json"
UID = "iscsi-ha-pool"

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'cluster="$cluster"'  # every query is scoped to the chosen pool

# Value mappings: the numbers the role queries encode, and 0/1 flags.
ROLE_WORDS = {"2": ("Primary", "green"), "1": ("Secondary", "blue"), "0": ("Unknown", "red")}
POOL_WORDS = {"2": ("master", "green"), "1": ("slave", "blue"), "0": ("unknown", "red")}
DESIRED_WORDS = {"2": ("primary", "green"), "1": ("secondary", "blue"), "0": ("hold", "orange")}
OUTCOME_WORDS = {"2": ("ok", "green"), "1": ("held", "orange"), "0": ("error", "red")}
YES_NO = {"1": ("yes", "green"), "0": ("no", "transparent")}
ON_OFF = {"1": ("on", "orange"), "0": ("off", "transparent")}


def mapping(words: Dict[str, tuple]) -> ValueMap:
    return ValueMap(
        {
            value: ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(words.items())
        }
    )


def one_hot_number(metric: str, by: str, values: Dict[str, int], extra: str = "") -> str:
    """A one-hot enum as one number per `by` group: sum of value * weight (see the mappings)."""
    terms = [
        f"{weight} * sum by ({by}) ({metric}{{{SEL}, {label}{extra}}})"
        for label, weight in values.items()
    ]
    return f"\n  + on ({by}) ".join(terms)


def query(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, as_table: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    else:
        q = q.range()
    if as_table:
        q = q.format(PromQueryFormat.TABLE)
    return q


def override_name(
    panel,
    field: str,
    display: str,
    unit: Optional[str] = None,
    words: Optional[Dict[str, tuple]] = None,
):
    props = [DynamicConfigValue(id_val="displayName", value=display)]
    if unit:
        props.append(DynamicConfigValue(id_val="unit", value=unit))
    if words:
        props.append(DynamicConfigValue(id_val="mappings", value=[mapping(words)]))
        props.append(DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}))
    return panel.override_by_name(field, props)


def hide_fields(names: List[str]) -> DataTransformerConfig:
    return DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": {name: True for name in names}, "renameByName": {}},
    )


MERGE = DataTransformerConfig(id_val="merge", options={})


# --------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------


def holder_stat():
    return (
        stat.Panel()
        .title("Storage held by")
        .description("The host that is DRBD Primary, per resource. Empty: nobody is.")
        .datasource(DS)
        .with_target(
            query(
                f'iscsi_ha_drbd_role{{{SEL}, role="Primary"}} == 1',
                "{{resource}}: {{instance}}",
                instant=True,
            )
        )
        .text_mode(common.BigValueTextMode.NAME)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value("no Primary")
        .span(8)
        .height(4)
    )


def holder_since_stat():
    # The last sample in which the current holder was NOT Primary, to the minute, within the
    # dashboard's time range: the moment it took over. None inside the range -> "before".
    expr = (
        "1000 * max by (instance, resource) (\n"
        "  max_over_time(\n"
        f'    timestamp(iscsi_ha_drbd_role{{{SEL}, role="Primary"}} == 0)[$__range:1m]\n'
        "  )\n"
        ")\n"
        "and on (instance, resource)\n"
        f'  (iscsi_ha_drbd_role{{{SEL}, role="Primary"}} == 1)'
    )
    return (
        stat.Panel()
        .title("Primary since")
        .description(
            "When the current holder became Primary (the last sample in which it was not, to "
            "the minute). Empty: it has been Primary since before the start of the time range."
        )
        .datasource(DS)
        .with_target(query(expr, "{{resource}}: {{instance}}", instant=True))
        .unit("dateTimeFromNow")
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value("before the time range")
        .span(8)
        .height(4)
    )


def vip_stat():
    return (
        stat.Panel()
        .title("VIP bound on")
        .description("The host that holds the floating IP. Two names: the VIP is on both.")
        .datasource(DS)
        .with_target(
            query(
                f"(iscsi_ha_vip_local{{{SEL}}} == 1)\n"
                f"* on (instance) group_left (address) iscsi_ha_vip_info{{{SEL}}}",
                "{{address}}: {{instance}}",
                instant=True,
            )
        )
        .text_mode(common.BigValueTextMode.NAME)
        .color_mode(common.BigValueColorMode.NONE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value("VIP bound nowhere")
        .span(8)
        .height(4)
    )


def hosts_table():
    queries = [
        (
            "A",
            one_hot_number(
                "iscsi_ha_pool_role", "instance", {'role="master"': 2, 'role="slave"': 1}
            ),
            "Pool role",
            None,
            POOL_WORDS,
        ),
        ("B", f"max by (instance) (iscsi_ha_manual_mode{{{SEL}}})", "Manual mode", None, ON_OFF),
        (
            "C",
            one_hot_number(
                "iscsi_ha_desired_role", "instance", {'role="primary"': 2, 'role="secondary"': 1}
            ),
            "Wants",
            None,
            DESIRED_WORDS,
        ),
        ("D", f"max by (instance) (iscsi_ha_vip_local{{{SEL}}})", "VIP", None, YES_NO),
        (
            "E",
            f"max by (instance) (iscsi_ha_target_serving{{{SEL}}})",
            "Target serving",
            None,
            YES_NO,
        ),
        ("F", f"max by (instance) (iscsi_ha_target_daemon_up{{{SEL}}})", "tgtd", None, YES_NO),
        (
            "G",
            f"max by (instance) (iscsi_ha_target_sessions{{{SEL}}})",
            "iSCSI sessions",
            "none",
            None,
        ),
        (
            "H",
            one_hot_number(
                "iscsi_ha_last_cycle_outcome", "instance", {'outcome="ok"': 2, 'outcome="held"': 1}
            ),
            "Last cycle",
            None,
            OUTCOME_WORDS,
        ),
        (
            "I",
            f"time() - max by (instance) (iscsi_ha_last_cycle_timestamp_seconds{{{SEL}}})",
            "Last cycle age",
            "s",
            None,
        ),
        (
            "J",
            f"max by (instance) (iscsi_ha_drbd_split_brain{{{SEL}}})",
            "Split brain",
            None,
            {"1": ("SPLIT BRAIN", "red"), "0": ("no", "transparent")},
        ),
    ]
    panel = (
        table.Panel()
        .title("Hosts")
        .description(
            "One row per host: pool role, manual mode, the role the controller wants, VIP, "
            "target, tgtd, iSCSI sessions, the last cycle's outcome and age."
        )
        .datasource(DS)
        .with_transformation(MERGE)
        .with_transformation(hide_fields(["Time"]))
        .span(24)
        .height(5)
    )
    for ref, expr, display, unit, words in queries:
        panel = panel.with_target(query(expr, ref=ref, instant=True, as_table=True))
        panel = override_name(panel, f"Value #{ref}", display, unit, words)
    return panel.override_by_name("instance", [DynamicConfigValue("displayName", "Host")])


def resources_table():
    relabel = 'label_replace({expr}, "{new}", "$1", "state", "(.*)")'
    queries = [
        ("A", f"max by (instance, resource, role) (iscsi_ha_drbd_role{{{SEL}}} == 1)"),
        (
            "B",
            "max by (instance, resource, connection) ("
            + relabel.format(expr=f"iscsi_ha_drbd_connection_state{{{SEL}}} == 1", new="connection")
            + ")",
        ),
        (
            "C",
            "max by (instance, resource, disk) ("
            + relabel.format(
                expr=f'iscsi_ha_drbd_disk_state{{{SEL}, side="local"}} == 1', new="disk"
            )
            + ")",
        ),
        (
            "D",
            "max by (instance, resource, peer_disk) ("
            + relabel.format(
                expr=f'iscsi_ha_drbd_disk_state{{{SEL}, side="peer"}} == 1', new="peer_disk"
            )
            + ")",
        ),
        ("E", f"max by (instance, resource) (iscsi_ha_drbd_sync_progress_ratio{{{SEL}}})"),
        ("F", f"max by (instance, resource) (iscsi_ha_drbd_out_of_sync_bytes{{{SEL}}})"),
        ("G", f"max by (instance, resource) (iscsi_ha_drbd_sync_eta_seconds{{{SEL}}})"),
    ]
    panel = (
        table.Panel()
        .title("DRBD resources now")
        .description(
            "Per host and resource: role, connection state, local and peer disk state, how much "
            "is in sync, what is still out of sync and, during a resync, the estimated time left."
        )
        .datasource(DS)
        .with_transformation(MERGE)
        .with_transformation(hide_fields(["Time", "Value #A", "Value #B", "Value #C", "Value #D"]))
        .span(24)
        .height(6)
    )
    for ref, expr in queries:
        panel = panel.with_target(query(expr, ref=ref, instant=True, as_table=True))
    panel = override_name(panel, "Value #E", "In sync", "percentunit")
    panel = override_name(panel, "Value #F", "Out of sync", "bytes")
    panel = override_name(panel, "Value #G", "Resync ETA", "s")
    for field, display in (
        ("instance", "Host"),
        ("resource", "Resource"),
        ("role", "Role"),
        ("connection", "Connection"),
        ("disk", "Disk"),
        ("peer_disk", "Peer disk"),
    ):
        panel = panel.override_by_name(field, [DynamicConfigValue("displayName", display)])
    return panel


def timeline(title: str, description: str, targets, words: Dict[str, tuple], height: int = 6):
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .mappings([mapping(words)])
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .color_scheme(gd.FieldColor().mode(FieldColorModeId.FIXED).fixed_color("transparent"))
        .span(24)
        .height(height)
    )
    for t in targets:
        panel = panel.with_target(t)
    return panel


def role_timeline():
    expr = one_hot_number(
        "iscsi_ha_drbd_role", "instance, resource", {'role="Primary"': 2, 'role="Secondary"': 1}
    )
    return timeline(
        "DRBD role over time",
        "Each host's role per resource: every colour change is a role transition.",
        [query(expr, "{{instance}} {{resource}}")],
        ROLE_WORDS,
    )


def pool_role_timeline():
    expr = one_hot_number("iscsi_ha_pool_role", "instance", {'role="master"': 2, 'role="slave"': 1})
    return timeline(
        "Pool role over time",
        "Which host was pool master (from pool.conf).",
        [query(expr, "{{instance}}")],
        POOL_WORDS,
        height=4,
    )


def vip_target_timeline():
    return timeline(
        "VIP and target per host",
        "Where the VIP was bound, where the target served, where tgtd ran.",
        [
            query(f"iscsi_ha_vip_local{{{SEL}}}", "{{instance}} VIP", ref="A"),
            query(f"iscsi_ha_target_serving{{{SEL}}}", "{{instance}} target serving", ref="B"),
            query(f"iscsi_ha_target_daemon_up{{{SEL}}}", "{{instance}} tgtd running", ref="C"),
            query(f"iscsi_ha_manual_mode{{{SEL}}}", "{{instance}} manual mode", ref="D"),
        ],
        {"1": ("yes", "green"), "0": ("no", "transparent")},
        height=8,
    )


def connection_timeline():
    return timeline(
        "DRBD connection state over time",
        "One row per host, resource and state, coloured while that state held.",
        [
            query(
                f"iscsi_ha_drbd_connection_state{{{SEL}}} == 1",
                "{{instance}} {{resource}} {{state}}",
            )
        ],
        {"1": ("active", "green")},
    )


def graph(
    title: str,
    description: str,
    targets,
    unit: str = "short",
    bars: bool = False,
    span: int = 12,
    height: int = 7,
    minimum: Optional[float] = 0,
    maximum: Optional[float] = None,
):
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .span(span)
        .height(height)
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def sync_progress():
    return graph(
        "Resync progress",
        "Share of each resource in sync (1 = fully in sync).",
        [query(f"iscsi_ha_drbd_sync_progress_ratio{{{SEL}}}", "{{instance}} {{resource}}")],
        unit="percentunit",
        maximum=1,
    )


def sync_eta():
    return graph(
        "Resync time left",
        "DRBD's estimate of the time to the end of a running resync.",
        [query(f"iscsi_ha_drbd_sync_eta_seconds{{{SEL}}}", "{{instance}} {{resource}}")],
        unit="s",
    )


def out_of_sync():
    return graph(
        "Out of sync",
        "Data that differs between the two copies and still has to travel.",
        [query(f"iscsi_ha_drbd_out_of_sync_bytes{{{SEL}}}", "{{instance}} {{resource}}")],
        unit="bytes",
    )


def transitions():
    return graph(
        "Promotions and demotions",
        "Successful role changes carried out by the controller.",
        [
            query(
                "sum by (instance, action) (increase(iscsi_ha_actions_total{"
                f'{SEL}, action=~"promote|demote|vip_add|vip_del", result="ok"}}'
                "[$__rate_interval]))",
                "{{instance}} {{action}}",
            )
        ],
        bars=True,
    )


def cycle_duration():
    hist = f"iscsi_ha_cycle_duration_seconds_bucket{{{SEL}}}"
    return graph(
        "Cycle duration",
        "How long one observe-decide-execute cycle takes.",
        [
            query(
                f"histogram_quantile(0.5, sum by (instance, le) (rate({hist}[$__rate_interval])))",
                "{{instance}} median",
                ref="A",
            ),
            query(
                f"histogram_quantile(0.99, sum by (instance, le) (rate({hist}[$__rate_interval])))",
                "{{instance}} 99th percentile",
                ref="B",
            ),
            query(f"iscsi_ha_last_cycle_duration_seconds{{{SEL}}}", "{{instance}} last", ref="C"),
        ],
        unit="s",
    )


def cycle_results():
    return graph(
        "Cycles and errors",
        "Cycles by result, overruns, and actions that failed or were refused, per interval.",
        [
            query(
                "sum by (instance, result) (increase(iscsi_ha_cycles_total{"
                f"{SEL}}}[$__rate_interval]))",
                "{{instance}} cycles {{result}}",
                ref="A",
            ),
            query(
                "sum by (instance) (increase(iscsi_ha_cycle_overruns_total{"
                f"{SEL}}}[$__rate_interval]))",
                "{{instance}} overruns",
                ref="B",
            ),
            query(
                "sum by (instance, action, result) (increase(iscsi_ha_actions_total{"
                f'{SEL}, result=~"error|refused"}}[$__rate_interval]))',
                "{{instance}} {{action}} {{result}}",
                ref="C",
            ),
        ],
        bars=True,
    )


def command_timeouts():
    return graph(
        "Command timeouts",
        "External commands killed on their timeout.",
        [
            query(
                "sum by (instance, command) (increase(iscsi_ha_command_timeouts_total{"
                f"{SEL}}}[$__rate_interval]))",
                "{{instance}} {{command}}",
            )
        ],
        bars=True,
    )


def command_time():
    return graph(
        "Time spent in commands",
        "Share of wall-clock time spent waiting for each command.",
        [
            query(
                "sum by (instance, command) (rate(iscsi_ha_command_duration_seconds_total{"
                f"{SEL}}}[$__rate_interval]))",
                "{{instance}} {{command}}",
            )
        ],
        unit="percentunit",
    )


# -- what the VMs get: the storage probe and the SLO (alerts/iscsi_ha_slo.py records these)

RATIO = "cluster:iscsi_ha_storage_probe_errors:ratio_rate"
OBJECTIVE = f"cluster:iscsi_ha_storage_slo_objective:ratio{{{SEL}}}"
OK_FAILING = {"1": ("reads", "green"), "0": ("fails", "red")}


def slo_availability_stat():
    return (
        stat.Panel()
        .title("Storage availability (SLO period)")
        .description(
            "Share of storage probes that read every LUN through the VIP over the SLO "
            "period (30 d by default), both hosts counted; the objective is the "
            "threshold (alerts/iscsi_ha_slo.py)."
        )
        .datasource(DS)
        .with_target(query(f"1 - {RATIO}30d{{{SEL}}}", "availability", instant=True))
        .unit("percentunit")
        .decimals(3)
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value("no probe data")
        .span(6)
        .height(4)
    )


def error_budget_stat():
    return (
        stat.Panel()
        .title("Error budget left")
        .description(
            "Share of the SLO period's error budget (1 - objective) not yet spent by "
            "failed storage probes. Below 0: the objective is missed."
        )
        .datasource(DS)
        .with_target(
            query(
                f"1 - {RATIO}30d{{{SEL}}} / on (cluster) (1 - {OBJECTIVE})",
                "budget left",
                instant=True,
            )
        )
        .unit("percentunit")
        .decimals(1)
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .no_value("no probe data")
        .span(6)
        .height(4)
    )


def burn_rate():
    def rate(window: str, ref: str):
        return query(
            f"{RATIO}{window}{{{SEL}}} / on (cluster) (1 - {OBJECTIVE})",
            f"burn rate over {window}",
            ref=ref,
        )

    return graph(
        "Error budget burn rate",
        "How fast failed storage probes spend the error budget (1 = exactly over the SLO "
        "period). The page fires above 14.4 over both 1 h and 5 m, or above 6 over 6 h and "
        "30 m; the ticket above 3 (1 d, 2 h) or 1 (3 d, 6 h).",
        [rate("5m", "A"), rate("1h", "B"), rate("6h", "C"), rate("3d", "D")],
        span=12,
    )


def probe_timeline():
    return timeline(
        "Storage probe from each host",
        "Each host's storage probe per LUN: login at the VIP and a read of block 0 "
        "(observer = the host that probes).",
        [query(f"iscsi_ha_storage_probe_success{{{SEL}}}", "{{observer}} LUN {{lun}}")],
        OK_FAILING,
        height=5,
    ).span(12)


def probe_duration():
    hist = f"iscsi_ha_storage_probe_duration_seconds_bucket{{{SEL}}}"
    return graph(
        "Storage probe duration",
        "How long a whole probe takes (connect, login, every LUN, logout), per observer.",
        [
            query(
                f"histogram_quantile(0.5, sum by (observer, le) (rate({hist}[$__rate_interval])))",
                "{{observer}} median",
                ref="A",
            ),
            query(
                f"histogram_quantile(0.99, sum by (observer, le) (rate({hist}[$__rate_interval])))",
                "{{observer}} 99th percentile",
                ref="B",
            ),
        ],
        unit="s",
        span=12,
    )


def switchover_phases():
    return graph(
        "Last switchover, by phase",
        "How long each phase of the last `iscsi-cfg switchover` took on each host (check, arm, "
        "release, react, promote, serve, vip, total). Empty until a switchover ran since the "
        "controllers started.",
        [query(f"iscsi_ha_switchover_duration_seconds{{{SEL}}}", "{{instance}} {{phase}}")],
        unit="s",
        span=24,
    )


def audit_table():
    """One row per finding of the data-safety audit (empty: nothing risky found)."""
    checks = [
        ("A", f'iscsi_ha_drbd_replication_protocol{{{SEL}, protocol!="C"}} == 1'),
        ("B", f"iscsi_ha_drbd_split_brain_policy_discards{{{SEL}}} == 1"),
        ("C", f"iscsi_ha_drbd_fencing{{{SEL}}} == 0"),
        ("D", f"iscsi_ha_lvm_filter_rejects{{{SEL}}} == 0"),
        ("E", f"iscsi_ha_multipath_blacklists_drbd{{{SEL}}} == 0"),
        ("F", f"iscsi_ha_audit_error{{{SEL}}} == 1"),
    ]
    panel = (
        table.Panel()
        .title("Data-safety audit findings")
        .description(
            "Risky settings found by each host's audit (every audit.interval): DRBD "
            "not protocol C, split-brain policies that discard data, no fencing, an "
            "LVM filter that scans DRBD or its backing device, multipath over DRBD, a "
            "check that cannot run. Each has an alert and a runbook section."
        )
        .datasource(DS)
        .with_transformation(MERGE)
        .with_transformation(hide_fields(["Time", "Value", "job"]))
        .no_value("no findings")
        .span(24)
        .height(5)
    )
    for ref, expr in checks:
        panel = panel.with_target(query(expr, ref=ref, instant=True, as_table=True))
    return panel


ALERTS_SEL = 'alertname=~"IscsiHa.+", alertstate="firing", cluster=~"$cluster|"'


def firing_alerts():
    return (
        table.Panel()
        .title("Firing alerts")
        .description("iscsi-ha alerts firing now for this pool (and those without a cluster).")
        .datasource(DS)
        .with_target(query(f"ALERTS{{{ALERTS_SEL}}}", instant=True, as_table=True))
        .with_transformation(hide_fields(["Time", "Value", "__name__", "alertstate", "job"]))
        .no_value("no iscsi-ha alert is firing")
        .span(24)
        .height(6)
    )


def alerts_timeline():
    return timeline(
        "Alerts over time",
        "When each iscsi-ha alert fired.",
        [query(f"ALERTS{{{ALERTS_SEL}}}", "{{alertname}} {{instance}} {{resource}}")],
        {"1": ("firing", "red")},
    )


# --------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------


def build() -> gd.Dashboard:
    datasource = gd.DatasourceVariable("datasource").label("Data source").type("prometheus")
    cluster = (
        gd.QueryVariable("cluster")
        .label("Cluster")
        .description("The pool: the `cluster` label of its two hosts' scrape targets.")
        .datasource(DS)
        .query('label_values(up{job="iscsi-ha"}, cluster)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    return (
        gd.Dashboard("iscsi-ha")
        .uid(UID)
        .description("DRBD + iSCSI storage of a two-host XenServer / XCP-ng pool (iscsi-ha).")
        .tags(["iscsi-ha", "drbd", "iscsi", "storage"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(datasource)
        .with_variable(cluster)
        .with_row(gd.Row("Who holds the storage"))
        .with_panel(holder_stat())
        .with_panel(holder_since_stat())
        .with_panel(vip_stat())
        .with_panel(hosts_table())
        .with_panel(firing_alerts())
        .with_row(gd.Row("What the VMs get: storage probe and SLO"))
        .with_panel(slo_availability_stat())
        .with_panel(error_budget_stat())
        .with_panel(burn_rate())
        .with_panel(probe_timeline())
        .with_panel(probe_duration())
        .with_panel(audit_table())
        .with_row(gd.Row("Roles over time"))
        .with_panel(role_timeline())
        .with_panel(pool_role_timeline())
        .with_panel(vip_target_timeline())
        .with_panel(transitions())
        .with_panel(alerts_timeline().span(12).height(7))
        .with_panel(switchover_phases())
        .with_row(gd.Row("DRBD"))
        .with_panel(resources_table())
        .with_panel(connection_timeline())
        .with_panel(sync_progress())
        .with_panel(sync_eta())
        .with_panel(out_of_sync().span(24))
        .with_row(gd.Row("Controller"))
        .with_panel(cycle_duration())
        .with_panel(cycle_results())
        .with_panel(command_timeouts())
        .with_panel(command_time())
    )


def render() -> str:
    """The dashboard as the JSON text that is committed (stable: sorted keys, fixed indent)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed JSON differs from the generated one",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.output.exists() and args.output.read_text() == text
        if not same:
            print(f"{args.output} is out of date: run {Path(__file__).name}", file=sys.stderr)
        return 0 if same else 1
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
