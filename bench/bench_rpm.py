"""The dom0 RPM in figures: size, build time cold and cached, installed size, and the controller on
the bundled interpreter beside the same controller in the project's virtualenv.

    .venv/bin/python bench/bench_rpm.py [--runs 5] [--builds 3] [--cold N] [--only-builds]
                                        [--rpm dist/iscsi-ha-*.rpm]

* **RPM size** and **installed size** (rpm's SIZE tag) of ``--rpm`` (default: the one in dist/).
* **Cached build**: ``Dockerfile-build/build.sh`` end to end (interpreter from the cache, wheel,
  tree, rpmbuild, audit, inspect, publish) into scratch OUT/WORK, ``--builds`` times.
* **Cold build** (``--cold N``, minutes each): ``build_python.sh`` into an empty cache directory
  (sources, ziglang and every compile), N times; wall time and CPU seconds (user+sys of the
  whole process tree, from wait4: far less sensitive to a shared machine's load than the wall
  time), the load average before and after, and the step lines the script prints. After each
  cold build, **CPython alone** is rebuilt over the cached libraries (what a change to the
  CPython step costs), and the **warm** run (every piece cached) is timed.
* **The controller, bundled vs venv**: the RPM's payload is unpacked into a scratch root and run at
  /opt/iscsi-ha through lab/payload.py (a private mount namespace); the venv's ``iscsi-ha`` is
  run directly. Both run the real ``iscsi-ha run`` against bench_controller's world (16 replayed
  DRBD 8.4 resources, this host a Secondary slave, a real empty tgtd in a namespace): start-up =
  from process start to the first /metrics answer that counts a finished cycle; RSS = VmRSS
  after 3 more cycles. ``iscsi-ha --version`` wall time is measured too. The mount namespace
  costs the payload runs a fixed overhead (unshare, a Python -S and three mounts): measured on
  its own with /bin/true and subtracted from the payload's times (both printed).

Median and range over ``--runs`` runs; the machine is printed. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Dockerfile-build"))

from bench_controller import (  # noqa: E402
    Tgtd,
    family,
    free_tcp_port,
    parse_text,
    scrape_text,
    stop_pid,
    unused_control_port,
    vm_rss_kib,
    wait_until,
    write_world,
)
from bench_scrape import cpu_model  # noqa: E402
from inspect_rpm import unpack_newc  # noqa: E402

from lab.payload import PREFIX, payload_argv  # noqa: E402

RESOURCES = 16


def spread(values: list, unit: str, fmt: str = "{:.0f}") -> str:
    med = statistics.median(values)
    return (
        f"{fmt.format(med)} {unit} ({fmt.format(min(values))}–{fmt.format(max(values))}, "
        f"{len(values)} runs)"
    )


def timed(argv: list, env=None, timeout=1800) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.monotonic() - t0


def timed_tree(argv: list, env: dict, timeout: float = 3600) -> tuple:
    """(wall s, CPU s of the process and everything it waited for, its stderr)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{argv} took more than {timeout} s")
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[-1]} failed ({proc.returncode}):\n{text[-3000:]}")
    return time.monotonic() - t0, usage.ru_utime + usage.ru_stime, text


def cold_builds(n: int, env: dict) -> None:
    script = ["nice", "-n", "19", "bash", str(REPO / "Dockerfile-build" / "build_python.sh")]
    cold, cold_cpu, py_only, py_only_cpu, warm = [], [], [], [], []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="ihbench-cold-") as cache:
            e = dict(env, ISCSI_HA_BUILD_CACHE=cache)
            load0 = os.getloadavg()
            wall, cpu, log = timed_tree(script, e)
            load1 = os.getloadavg()
            cold.append(wall)
            cold_cpu.append(cpu)
            print(
                f"cold build {i + 1}/{n}: {wall:.0f} s wall, {cpu:.0f} CPU-s; load "
                f"{load0[0]:.1f}/{load0[1]:.1f} before, {load1[0]:.1f}/{load1[2]:.1f} after "
                "(1-min/5-min, 1-min/15-min)"
            )
            for line in log.splitlines():
                if re.match(
                    r"== (\S+: \d+ s, \d+ CPU-s|sources ready|static libraries ready)", line
                ):
                    print("   ", line)
            for entry in Path(cache).glob("python-*"):
                shutil.rmtree(entry)
            wall, cpu, _ = timed_tree(script, e)
            py_only.append(wall)
            py_only_cpu.append(cpu)
            warm.append(timed_tree(script, e)[0])
    print(
        f"cold interpreter build (empty cache, sources and ziglang downloaded): "
        f"{spread(cold, 's')}; CPU {spread(cold_cpu, 's')}"
    )
    print(
        f"CPython alone over cached libraries: {spread(py_only, 's')}; "
        f"CPU {spread(py_only_cpu, 's')}"
    )
    print(f"warm (every piece cached): {spread(warm, 's', '{:.2f}')}")


def controller_run(command: list, n: int = RESOURCES) -> tuple:
    """(seconds to the first finished cycle seen on /metrics, VmRSS KiB after 3 more cycles)."""
    root = Path(tempfile.mkdtemp(prefix="ihbench-rpm-"))
    http_port, ctl_port = free_tcp_port(), unused_control_port()
    config = write_world(root, n, http_port, ctl_port)
    env = dict(
        os.environ,
        PATH=f"{root / 'bin'}:{os.environ['PATH']}",
        FAKE_DRBDADM_TABLE=str(root / "table.json"),
    )
    try:
        with Tgtd(ctl_port), open(root / "daemon.log", "w") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [*command, "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            try:

                def cycles() -> float:
                    if proc.poll() is not None:
                        tail = (root / "daemon.log").read_text()[-1500:]
                        raise RuntimeError(f"iscsi-ha exited: {tail}")
                    try:
                        body = scrape_text(conn)[1].decode()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        return 0.0
                    return sum(family(parse_text(body), "iscsi_ha_cycles_total").values())

                wait_until(lambda: cycles() >= 1, 60, "the first cycle", poll=0.01)
                startup = time.monotonic() - t0
                wait_until(lambda: cycles() >= 4, 30, "three more cycles", poll=0.1)
                rss = vm_rss_kib(proc.pid)
            finally:
                conn.close()
                stop_pid(proc)
        return startup, rss
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", default=None, help="default: the iscsi-ha RPM in dist/")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--builds", type=int, default=3, help="cached end-to-end builds to time")
    ap.add_argument(
        "--cold",
        type=int,
        default=0,
        metavar="N",
        help="also time N cold interpreter builds (minutes each)",
    )
    ap.add_argument(
        "--only-builds", action="store_true", help="time the builds only, not the controller runs"
    )
    args = ap.parse_args()
    rpm = Path(args.rpm or (sorted(glob.glob(str(REPO / "dist" / "iscsi-ha-*.rpm"))) or [""])[-1])
    if not rpm.is_file() and not args.only_builds:
        raise SystemExit("bench_rpm: no RPM: run `make rpm` first or pass --rpm")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    if rpm.is_file():
        size = rpm.stat().st_size
        installed = int(
            subprocess.run(
                ["rpm", "-qp", "--qf", "%{SIZE}", str(rpm)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        print(f"RPM {rpm.name}: {size / 2**20:.1f} MiB; installed size {installed / 2**20:.1f} MiB")

    env = dict(os.environ, PYTHON=sys.executable)
    if args.cold:
        cold_builds(args.cold, env)
    builds = []
    for _ in range(args.builds):
        with tempfile.TemporaryDirectory(prefix="ihbench-build-") as d:
            builds.append(
                timed(
                    ["bash", str(REPO / "Dockerfile-build" / "build.sh")],
                    env=dict(env, OUT=f"{d}/dist", WORK=f"{d}/work"),
                )
            )
    if builds:
        print(f"cached build, make rpm end to end: {spread(builds, 's')}")
    if args.only_builds:
        return 0

    with tempfile.TemporaryDirectory(prefix="ihbench-payload-") as d:
        root = Path(d)
        unpack_newc(rpm, root)
        venv_exe = [str(Path(sys.executable).parent / "iscsi-ha")]
        payload_exe = payload_argv(root, [f"{PREFIX}/bin/iscsi-ha"])
        overhead = [timed(payload_argv(root, ["/bin/true"])) for _ in range(args.runs)]
        wrap = statistics.median(overhead)
        print(f"mount-namespace wrapper alone: {spread([x * 1000 for x in overhead], 'ms')}")
        for name, exe, minus in (("venv", venv_exe, 0.0), ("bundled", payload_exe, wrap)):
            version = [(timed([*exe, "--version"]) - minus) * 1000 for _ in range(args.runs)]
            starts, rss = [], []
            for _ in range(args.runs):
                s, r = controller_run(exe)
                starts.append((s - minus) * 1000)
                rss.append(r / 1024)
            print(
                f"{name:8s} --version {spread(version, 'ms')}; `run` to first cycle "
                f"{spread(starts, 'ms')}; RSS {spread(rss, 'MiB', '{:.1f}')}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
