"""One drbdadm scenario, run against real DRBD (the VMs) and against the lab's simulator.

The same function (``run_scenario``) drives a *backend*: ``VmBackend`` runs each ``drbdadm`` in
its VM through the agent, ``SimBackend`` calls ``lab.drbdsim.main()`` with the node's identity.
Every call is recorded in a ``Transcript`` (node, argv, rc, stdout, stderr), and so are the
harness's own actions (link cut, crash) and, at settled points, each node's ``/proc/drbd`` and
whether its kernel log holds DRBD's split-brain line. Two transcripts are compared after
``normalise()``, which hides exactly two things, explicitly: the I/O counters of ``/proc/drbd``
(``ns nr dw dr al bm lo pe ua ap ep oos``: they count real writes) and nothing else, because
timings never enter a transcript - a wait records only the answer that ended it, never how many
polls or seconds it took (those go to ``Transcript.timings``, reported but not compared).

One step is compared on less than everything, on purpose: the split brain. Real DRBD 8.4 does
not always detect it on both sides (measured: in 1 of 3 runs only node2 logged "Split-Brain
detected" and went StandAlone, while node1's connection merely broke and it went back to
WFConnection, still Primary/Unknown). Which variant happens is a race in the kernel, so no
simulator can predict it. Right after the reconnect the transcript therefore records only what
both variants share: each node's ``role`` and ``dstate`` (Primary/Unknown, UpToDate/DUnknown
either way) and one note stating the invariant - at least one node is StandAlone, and the
StandAlone nodes are exactly those whose kernel log has the split-brain line (the others are
WFConnection). The variant itself (each node's cstate, /proc/drbd state line, whether it logged
the line) goes to ``Transcript.observations``: saved and printed next to the transcript, not
compared. The operator's runbook then makes the state deterministic again - ``disconnect`` on
both nodes, after which both are StandAlone - and from there everything is compared again. The
answers of those two ``disconnect`` calls depend on the variant too (rc 0 on a WFConnection
node; on a StandAlone one rc 10 "(162) Invalid configuration request ... unknown connection",
measured), so they are observations as well, and the transcript holds the invariant: silent
success exactly where the node was WFConnection, that refusal exactly where it was StandAlone.
(The refusal's exact text is held to the real one in ``tests/test_drbdsim.py``.)

The scenario (a 64 MiB resource ``r0``, fresh meta data on both nodes):
bring-up and the refusal on Inconsistent data; the initial sync forced from node1; the refusal of
a second Primary; a switchover; the refusal to demote while held open; a partition with both
sides promoted, healed into a split brain; the operator's recovery with --discard-my-data; the
Primary's power cut, the survivor's promotion, and the crashed node's return as SyncTarget.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .harness import VmLab, drbd_resource

RES = "r0"
NODES = ("node1", "node2")
SB_LINE = "Split-Brain detected but unresolved, dropping connection!"
# The only normalisation: the I/O counters of /proc/drbd's second device line.
COUNTERS = re.compile(r"\b(ns|nr|dw|dr|al|bm|lo|pe|ua|ap|ep|oos):\d+")
SIZE_KB = 65496  # a 64 MiB disk less DRBD's internal meta data (as in the captures)


class Transcript:
    """What a scenario saw, entry by entry, plus (not compared) how long each wait took."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: List[Dict[str, Any]] = []
        self.timings: List[Tuple[str, float]] = []
        self.observations: List[str] = []  # what differs between real runs (see the docstring)

    def call(self, node: str, argv: List[str], rc: int, out: str, err: str) -> None:
        self.entries.append(
            {"node": node, "argv": ["drbdadm", *argv], "rc": rc, "stdout": out, "stderr": err}
        )

    def note(self, text: str) -> None:
        self.entries.append({"note": text})

    def lines(self, normalised: bool = True) -> List[str]:
        out: List[str] = []
        for e in self.entries:
            if "note" in e:
                out.append(f"## {e['note']}")
                continue
            out.append(f"{e['node']}$ {' '.join(e['argv'])}  (rc={e['rc']})")
            for stream in ("stdout", "stderr"):
                text = e[stream]
                if normalised and e["argv"][1:2] == ["--proc-drbd"]:
                    text = COUNTERS.sub(lambda m: m.group(1) + ":N", text)
                for line in text.splitlines():
                    out.append(f"  {stream[3:]}| {line}")
        return out

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.transcript.jsonl"
        with open(path, "w") as f:
            for e in self.entries:
                f.write(json.dumps(e) + "\n")
        (directory / f"{self.name}.transcript.txt").write_text("\n".join(self.lines()) + "\n")
        timing = "".join(f"{label}: {sec:.2f} s\n" for label, sec in self.timings)
        (directory / f"{self.name}.timings.txt").write_text(timing)
        (directory / f"{self.name}.observations.txt").write_text(
            "".join(line + "\n" for line in self.observations)
        )
        return path


def normalise(transcript: Transcript) -> List[str]:
    return transcript.lines(normalised=True)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


class SimBackend:
    """The namespace lab's simulator, called in-process as each node."""

    name = "simulator"

    def __init__(self, directory: Path, resync_seconds: float = 0.5) -> None:
        from lab.drbdsim import Cluster, main  # the repo root is on sys.path in the tests

        self._main = main
        self.dir = str(directory)
        self.cluster = Cluster.create(
            self.dir,
            {"node1": {"addr": "10.77.0.1"}, "node2": {"addr": "10.77.0.2"}},
            {RES: {"size_kb": SIZE_KB}},
            initial="new",
            resync_seconds=resync_seconds,
        )

    def drbdadm(self, node: str, *args: str) -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = self._main(list(args), out, err, {"DRBDSIM_DIR": self.dir, "DRBDSIM_NODE": node})
        return rc, out.getvalue(), err.getvalue()

    def proc_drbd(self, node: str) -> str:
        self.cluster.tick()
        return Path(self.cluster.proc_drbd_path(node)).read_text()

    def kernel_log(self, node: str) -> str:
        return self.cluster.kernel_log(node)

    def set_link(self, up: bool) -> None:
        for node in NODES:
            self.cluster.set_link(node, up)

    def hold_open(self, node: str) -> None:
        Path(self.cluster.open_flag_path(node, RES)).touch()

    def release(self, node: str) -> None:
        Path(self.cluster.open_flag_path(node, RES)).unlink()

    def crash(self, node: str) -> None:
        self.cluster.crash(node)

    def restart(self, node: str) -> None:
        pass  # the node's half is down after crash(); `up` brings it back, as after a reboot


class VmBackend:
    """Real DRBD 8.4 in the VMs of a ``VmLab`` (booted by the caller, disks fresh)."""

    name = "real"

    def __init__(self, lab: VmLab) -> None:
        self.lab = lab
        self.holders: Dict[str, int] = {}

    @staticmethod
    def resources(lab: VmLab) -> Dict[str, str]:
        return {RES: drbd_resource(RES, 0, 7789, lab.vms)}

    def create_md(self) -> None:
        for vm in self.lab.vms:
            vm.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)

    def drbdadm(self, node: str, *args: str) -> Tuple[int, str, str]:
        res = self.lab.vm(node).run(["drbdadm", *args], timeout=30)
        return res.rc, res.out, res.err

    def proc_drbd(self, node: str) -> str:
        return self.lab.vm(node).run(["cat", "/proc/drbd"], check=True).out

    def kernel_log(self, node: str) -> str:
        return self.lab.vm(node).run(["dmesg"], check=True).out

    def set_link(self, up: bool) -> None:
        for vm in self.lab.vms:
            vm.set_replication_link(up)

    def hold_open(self, node: str) -> None:
        self.holders[node] = self.lab.vm(node).spawn(
            ["/bin/sh", "-c", "exec sleep 120 3</dev/drbd0"]
        )
        time.sleep(0.5)  # the shell opens the device before exec

    def release(self, node: str) -> None:
        vm = self.lab.vm(node)
        vm.kill(self.holders.pop(node))
        deadline = time.monotonic() + 10
        while vm.run(["fuser", "/dev/drbd0"]).rc == 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def crash(self, node: str) -> None:
        self.lab.vm(node).crash()

    def restart(self, node: str) -> None:
        vm = self.lab.vm(node)
        vm.start()
        vm.wait_ready()


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------


class Driver:
    """Runs drbdadm through a backend and records everything in the transcript."""

    def __init__(self, backend: Any, transcript: Transcript) -> None:
        self.b, self.t = backend, transcript
        self.sb_cstates: Dict[str, str] = {}  # each node's cstate when the split brain settled

    def adm(self, node: str, *args: str) -> Tuple[int, str, str]:
        rc, out, err = self.b.drbdadm(node, *args)
        self.t.call(node, list(args), rc, out, err)
        return rc, out, err

    def wait(self, what: Dict[str, Tuple[str, str]], limit: float = 30.0) -> None:
        """Until every node answers ``drbdadm CMD r0`` with the wanted text; records the last
        answer of each (whatever it was: a wait that times out shows up in the diff)."""
        t0 = time.monotonic()
        deadline = t0 + limit
        last: Dict[str, Tuple[int, str, str]] = {}
        while True:
            done = True
            for node, (cmd, want) in what.items():
                last[node] = self.b.drbdadm(node, cmd, RES)
                done = done and last[node][1].strip() == want
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        label = ", ".join(f"{n} {c}={w}" for n, (c, w) in what.items())
        self.t.timings.append((f"wait {label}", time.monotonic() - t0))
        for node, (cmd, _want) in what.items():
            self.t.call(node, [cmd, RES], *last[node])

    def state(self) -> None:
        """A settled point: role, cstate, dstate and /proc/drbd of both nodes."""
        for node in NODES:
            for cmd in ("role", "cstate", "dstate"):
                self.adm(node, cmd, RES)
            self.t.call(node, ["--proc-drbd"], 0, self.b.proc_drbd(node), "")

    def runbook_disconnect(self) -> None:
        """``disconnect`` on both nodes after the split brain: the answers are observations, the
        transcript gets whether each matched the node's state (see the module docstring)."""
        holds = True
        for node in NODES:
            rc, out, err = self.b.drbdadm(node, "disconnect", RES)
            was = self.sb_cstates.get(node)
            if was == "WFConnection":
                holds = holds and (rc, out, err) == (0, "", "")
            else:
                holds = (
                    holds
                    and was == "StandAlone"
                    and rc == 10
                    and not out
                    and (
                        "(162) Invalid configuration request" in err and "unknown connection" in err
                    )
                )
            answer = " | ".join([f"rc {rc}", *out.splitlines(), *err.splitlines()])
            self.t.observations.append(f"runbook, {node} (was {was}): drbdadm disconnect: {answer}")
        self.t.note(
            "disconnect on both: silent success on the WFConnection nodes, refused with rc"
            " 10 '(162) Invalid configuration request' (unknown connection) on the "
            f"StandAlone ones: {'yes' if holds else 'no'}"
        )

    def split_brain(self, limit: float = 30.0) -> None:
        """After the reconnect of two Primaries: waits until it has settled (one or both sides
        StandAlone, the rest WFConnection, the same answers twice 1 s apart), then records what
        both real variants share and keeps the variant as an observation."""
        t0 = time.monotonic()
        deadline = t0 + limit
        previous: Optional[Dict[str, Tuple[str, bool]]] = None
        while True:
            seen = {
                n: (self.b.drbdadm(n, "cstate", RES)[1].strip(), SB_LINE in self.b.kernel_log(n))
                for n in NODES
            }
            cstates = [c for c, _ in seen.values()]
            settled = "StandAlone" in cstates and all(
                c in ("StandAlone", "WFConnection") for c in cstates
            )
            if (settled and seen == previous) or time.monotonic() > deadline:
                break
            previous = seen if settled else None
            time.sleep(1.0 if settled else 0.2)
        self.t.timings.append(("wait split brain settled", time.monotonic() - t0))
        for node in NODES:
            self.adm(node, "role", RES)
            self.adm(node, "dstate", RES)
        self.sb_cstates = {n: c for n, (c, _) in seen.items()}
        holds = "StandAlone" in cstates and all(
            (cstate == "StandAlone") == logged and cstate in ("StandAlone", "WFConnection")
            for cstate, logged in seen.values()
        )
        self.t.note(
            f"at least one node StandAlone; the StandAlone nodes are exactly those whose "
            f"kernel log has '{SB_LINE}', the others WFConnection: "
            f"{'yes' if holds else 'no'}"
        )
        for node, (cstate, logged) in seen.items():
            state_line = self.b.proc_drbd(node).splitlines()[2:3]
            self.t.observations.append(
                f"split brain, {node}: cstate {cstate}, kernel line logged: "
                f"{'yes' if logged else 'no'}, /proc/drbd: {' '.join(state_line).strip()}"
            )


def run_scenario(
    backend: Any, transcript: Transcript, progress: Optional[Callable[[str], None]] = None
) -> Transcript:
    d = Driver(backend, transcript)
    say = progress or (lambda _text: None)
    both = {n: ("cstate", "Connected") for n in NODES}

    def step(text: str) -> None:
        transcript.note(text)
        say(text)

    step("before up: what a freshly booted node answers")
    for cmd in ("role", "cstate", "dstate"):
        d.adm("node1", cmd, RES)
    step("bring-up: fresh meta data on both, up on both")
    d.adm("node1", "up", RES)
    d.adm("node2", "up", RES)
    d.wait(both)
    d.state()
    step("primary with both disks Inconsistent is refused")
    d.adm("node1", "primary", RES)
    step("initial sync forced from node1")
    d.adm("node1", "primary", "--force", RES)
    d.wait({"node1": ("dstate", "UpToDate/UpToDate"), "node2": ("dstate", "UpToDate/UpToDate")})
    d.wait(both)
    d.state()
    step("a second Primary is refused")
    d.adm("node2", "primary", RES)
    step("switchover: node1 secondary, node2 primary")
    d.adm("node1", "secondary", RES)
    d.adm("node2", "primary", RES)
    d.state()
    step("secondary while the device is held open is refused")
    backend.hold_open("node2")
    d.adm("node2", "secondary", RES)
    backend.release("node2")
    d.adm("node2", "role", RES)
    step("partition: the replication link cut")
    backend.set_link(False)
    d.wait({n: ("cstate", "WFConnection") for n in NODES})
    d.state()
    step("node1 promoted while apart: two Primaries")
    d.adm("node1", "primary", RES)
    d.state()
    step("the link restored: split brain (one or both sides detect it)")
    backend.set_link(True)
    d.split_brain()
    step("the runbook: disconnect on both, so that both are StandAlone")
    d.runbook_disconnect()
    d.state()
    step("the operator's recovery: node1 discards its data")
    d.adm("node1", "secondary", RES)
    d.adm("node1", "connect", "--discard-my-data", RES)
    d.adm("node2", "connect", RES)
    d.wait(both)
    d.wait({n: ("dstate", "UpToDate/UpToDate") for n in NODES})
    d.state()
    step("power cut of the Primary (node2); node1 sees the peer gone and is promoted")
    backend.crash("node2")
    d.wait({"node1": ("cstate", "WFConnection")})
    d.adm("node1", "role", RES)
    d.adm("node1", "dstate", RES)
    d.adm("node1", "primary", RES)
    d.adm("node1", "role", RES)
    step("node2 boots again and comes up: it syncs from the survivor")
    backend.restart("node2")
    d.adm("node2", "role", RES)
    d.adm("node2", "up", RES)
    d.wait(both)
    d.wait({n: ("dstate", "UpToDate/UpToDate") for n in NODES})
    d.state()
    return transcript
