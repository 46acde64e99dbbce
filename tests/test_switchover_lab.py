"""``iscsi-cfg switchover`` in the namespace lab: both real controllers, the real peer channel (TLS
with openssl-made certificates), real tgtd, ``ip``, arping and a real iSCSI client; DRBD is the
lab's simulator. A sampler reads both nodes throughout: never a VIP, a target or a Primary on both.

* the move both ways, issued on either host, data intact, phases exported, manual mode left;
* refused when the peer's controller is down (nothing changes);
* interrupted: the old holder's controller SIGKILLed in the middle of its release, and the new
  holder's controller SIGKILLed while it promotes. One host serves or none, never two, the command
  says what happened, and after the killed controller restarts exactly one host serves.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from lab import prometheus as lprom
from lab.demo import (
    Sampler,
    cfg,
    control_status,
    converged_on,
    holds_alone,
    node_metrics,
    node_state,
    start_cluster,
    tgt_ports,
    wait_for,
)
from lab.netlab import Lab
from lab.peerlab import peer_configs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("tgtd", "tgtadm", "arping", "iscsi-inq", "openssl")),
        reason="needs tgt, iputils-arping, libiscsi-bin and openssl",
    ),
]

CONVERGE = 30.0
MOVE = 20.0
# The orchestrator waits 20 s for a takeover, then up to 15 s for the old holder to serve again.
COMMAND = 90.0

# While {flag} exists, the matching command waits (bounded) before it runs: a SIGKILL of the
# controller lands in the middle of that step; the command itself still runs afterwards (an
# orphan finishing its work, as after a real crash).
HOLD_WRAPPER = """#!/bin/sh
case " $* " in
  *" {match} "*)
    if [ -e '{flag}' ]; then
      touch '{entered}'; i=0
      while [ -e '{flag}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
    fi ;;
esac
exec '{real}' "$@"
"""


def hold(node, tool: str, match: str, real: str):
    """A wrapper for ``tool`` on ``node`` that holds ``match`` while the returned flag exists."""
    flag, entered = node.dir / f"hold-{tool}.flag", node.dir / f"hold-{tool}.entered"
    wrapper = node.dir / f"hold-{tool}"
    wrapper.write_text(HOLD_WRAPPER.format(flag=flag, match=match, entered=entered, real=real))
    wrapper.chmod(0o755)
    return wrapper, flag, entered


def manual(node) -> dict:
    return (control_status(node) or {}).get("manual") or {}


def serving_nodes(lab) -> list:
    return [n.name for n in lab.nodes if node_state(lab, n).holds]


class Background:
    """``iscsi-cfg ... switchover`` in a thread; ``result`` once it returned."""

    def __init__(self, node) -> None:
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(node,), daemon=True)
        self.thread.start()

    def _run(self, node) -> None:
        self.result = cfg(node, "switchover", timeout=COMMAND)

    def wait(self):
        self.thread.join(COMMAND + 10)
        assert self.result is not None, "iscsi-cfg switchover did not return"
        return self.result


def test_switchover_both_ways_from_either_host_never_two():
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1, n2 = lab.nodes
        pids = start_cluster(lab, configs=peer_configs(lab))
        wait_for("node1 holds the storage", converged_on(lab, n1), CONVERGE, lab)
        block = os.urandom(512)
        lab.client_write(block, lba=7)
        with Sampler(lab, max_seconds=120) as sampler:
            # Issued on the holder: the storage goes to node2.
            res = cfg(n1, "switchover", timeout=COMMAND)
            assert res.rc == 0, res.text
            assert "switchover done: node2 serves the storage, node1 stands by" in res.out
            for phase in ("check", "arm", "release", "react", "promote", "serve", "vip", "total"):
                assert f"  {phase} " in res.out, res.out
            wait_for("node2 holds the storage", converged_on(lab, n2), MOVE, lab)
            assert lab.client_read(lba=7) == block
            assert manual(n2).get("requested") == "primary" and manual(n2).get("enabled")
            assert manual(n1).get("requested") == "secondary" and manual(n1).get("enabled")
            total = lprom.metric(
                node_metrics(n2), "iscsi_ha_switchover_duration_seconds", phase="total"
            )
            assert total is not None and 0 < total < MOVE, total

            # Issued on the standby this time: back to node1.
            res = cfg(n1, "switchover", timeout=COMMAND)
            assert res.rc == 0, res.text
            assert "node1 serves the storage, node2 stands by" in res.out
            wait_for("node1 holds the storage again", converged_on(lab, n1), MOVE, lab)
            assert lab.client_read(lba=7) == block
        assert sampler.error is None, sampler.error
        assert len(sampler.samples) >= 10, sampler.summary()
        assert sampler.overlaps() == [], sampler.overlaps()

        # With node2's controller down the peer does not answer: refused, nothing changes.
        lab.stop_process(pids["node2"])
        res = cfg(n1, "switchover", timeout=COMMAND)
        assert res.rc == 1, res.text
        assert "the peer is unreachable over the peer channel" in res.err, res.text
        assert "nothing was changed" in res.err
        assert holds_alone(lab, n1)


def test_old_holder_killed_during_its_release_never_two_and_it_serves_again():
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1, n2 = lab.nodes
        real = shutil.which("ip") or "/usr/sbin/ip"
        wrapper, flag, entered = hold(n1, "ip", "addr del", real)
        configs = peer_configs(lab)
        configs["node1"]["vip"] = {"ip": str(wrapper)}
        pids = start_cluster(lab, configs=configs)
        wait_for("node1 holds the storage", converged_on(lab, n1), CONVERGE, lab)
        flag.touch()
        with Sampler(lab, max_seconds=150) as sampler:
            command = Background(n2)  # the new holder orchestrates
            wait_for(
                "node1's release reaches the VIP removal", entered.exists, MOVE, lab, period=0.01
            )
            lab.kill_process(pids["node1"])  # SIGKILL in the middle of the release
            flag.unlink()  # the orphaned `ip addr del` runs now
            res = command.wait()
            # node1 was still Primary and serving when its controller died: node2 never took
            # over, and the command says that nobody may be serving (the VIP went with the
            # orphan) instead of pretending.
            assert res.rc == 4, res.text
            assert "failed:" in res.err and "no host may be serving" in res.err, res.text
            assert "node2" not in serving_nodes(lab)
            assert not manual(n2).get("enabled"), manual(n2)  # disarmed

            # The release was never persisted: restarted, node1 serves again on its own.
            lab.start_controller(n1)
            wait_for("node1 serves again after its restart", converged_on(lab, n1), MOVE, lab)
            assert not manual(n1).get("enabled"), manual(n1)
        assert sampler.error is None, sampler.error
        assert sampler.overlaps() == [], sampler.overlaps()


def test_new_holder_killed_while_promoting_never_two_and_the_old_one_serves_again():
    with Lab(tgt_ports=tgt_ports()) as lab:
        n1, n2 = lab.nodes
        real = str(n2.bin_dir / "drbdadm")
        wrapper, flag, entered = hold(n2, "drbdadm", "primary", real)
        configs = peer_configs(lab)
        configs["node2"]["drbd"] = {"drbdadm": str(wrapper)}
        pids = start_cluster(lab, configs=configs)
        wait_for("node1 holds the storage", converged_on(lab, n1), CONVERGE, lab)
        block = os.urandom(512)
        lab.client_write(block, lba=9)
        flag.touch()
        with Sampler(lab, max_seconds=150) as sampler:
            command = Background(n1)  # the old holder orchestrates
            wait_for("node2 reaches `drbdadm primary`", entered.exists, MOVE, lab, period=0.01)
            lab.kill_process(pids["node2"])  # SIGKILL while it promotes
            res = command.wait()  # node2 stays silent: node1 takes the storage back
            assert res.rc == 4, res.text
            assert "the storage is back on node1" in res.err, res.text
            assert holds_alone(lab, n1)
            assert lab.client_read(lba=9) == block

            flag.unlink()  # the orphaned `drbdadm primary` runs now: DRBD refuses it
            t0 = time.monotonic()
            lab.start_controller(n2)  # restarted armed (its marker): it holds, then disarms
            # It asks node1, which holds the storage and runs no switchover: it disarms.
            wait_for(
                "node2 disarms after its restart",
                lambda: control_status(n2) is not None and not manual(n2).get("enabled"),
                30,
                lab,
            )
            assert holds_alone(lab, n1), node_state(lab, n2).describe()
            took = time.monotonic() - t0
        assert sampler.error is None, sampler.error
        assert sampler.overlaps() == [], sampler.overlaps()
        assert took < 30
        assert not Path(n2.state_dir / "switchover-armed.json").exists()
