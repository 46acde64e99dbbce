"""The command agent inside a lab VM: JSON lines over a virtio-serial port.

busybox init runs this (chrooted into the host's shared root) and respawns it if it dies. The
host's harness writes one request per line and reads one answer per line; requests are served
in threads, so a slow command never blocks a status poll, and answers carry the request's id::

    {"id": 7, "op": "run", "argv": [...], "timeout": 10, "input": null}
        -> {"id": 7, "rc": 0, "out": "...", "err": "..."}       (rc 124 after the timeout)
    {"id": 8, "op": "spawn", "argv": [...], "log": "/run/lab/x.log"} -> {"id": 8, "pid": 123}
    {"id": 9, "op": "kill", "pid": 123, "signal": 15}            -> {"id": 9, "rc": 0}

Every command has a timeout (the harness always sends one); spawned processes are reaped by a
thread so none is left a zombie. Stdlib only; started with ``python -S``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

LOCK = threading.Lock()
CHILDREN = {}


def answer(port, reply):
    data = (json.dumps(reply) + "\n").encode()
    with LOCK:
        view = memoryview(data)
        while view:  # a virtio port takes large answers in pieces
            view = view[os.write(port, view) :]


def run(req):
    try:
        res = subprocess.run(
            req["argv"],
            input=req.get("input"),
            capture_output=True,
            text=True,
            timeout=float(req.get("timeout", 10)),
            env=req.get("env") or None,
        )
        return {"rc": res.returncode, "out": res.stdout, "err": res.stderr}
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return {"rc": 124, "out": out or "", "err": f"agent: timed out after {exc.timeout} s"}
    except OSError as exc:
        return {"rc": 127, "out": "", "err": f"agent: {exc}"}


def spawn(req):
    log = open(req.get("log") or "/dev/null", "ab")
    try:
        proc = subprocess.Popen(
            req["argv"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=req.get("env") or None,
            start_new_session=True,
        )
    except OSError as exc:
        return {"pid": 0, "err": f"agent: {exc}"}
    finally:
        log.close()
    CHILDREN[proc.pid] = proc
    return {"pid": proc.pid}


def serve(port, req):
    op = req.get("op")
    if op == "run":
        reply = run(req)
    elif op == "spawn":
        reply = spawn(req)
    elif op == "kill":
        try:
            os.kill(int(req["pid"]), int(req.get("signal", signal.SIGTERM)))
            reply = {"rc": 0}
        except OSError as exc:
            reply = {"rc": 1, "err": str(exc)}
    elif op == "ping":
        reply = {"rc": 0, "uptime": open("/proc/uptime").read().split()[0]}
    else:
        reply = {"rc": 2, "err": f"agent: unknown op {op!r}"}
    reply["id"] = req.get("id")
    answer(port, reply)


def reaper():
    while True:  # bounded per pass; the agent lives as long as the VM
        for pid, proc in list(CHILDREN.items()):
            if proc.poll() is not None:
                CHILDREN.pop(pid, None)
        time.sleep(0.5)


def main():
    port = os.open(sys.argv[1], os.O_RDWR)
    threading.Thread(target=reaper, daemon=True).start()
    buf = b""
    while True:
        chunk = os.read(port, 65536)
        if not chunk:
            time.sleep(0.1)  # host side not connected yet
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue  # a partial line from a host that reconnected
            threading.Thread(target=serve, args=(port, req), daemon=True).start()


if __name__ == "__main__":
    main()
