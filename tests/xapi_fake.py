"""A fake xapi that speaks XenAPI's XML-RPC wire format, for the real XenAPI SDK to talk to.

It is a fake at the protocol level: the client under test is the real ``XenAPI`` package over real
HTTP (or HTTPS, or a Unix socket), and the answers have xapi's shape, checked against xapi's
sources and the "Wire Protocol for Remote API Calls" page of the management API docs:

* every answer is a struct ``{"Status": "Success", "Value": v}`` or
  ``{"Status": "Failure", "ErrorDescription": [code, *params]}``; refs are opaque strings
  (``OpaqueRef:<uuid>``), 64-bit ints travel as decimal strings, enums as strings;
* ``session.login_with_password(uname, pwd, version, originator)`` returns a session ref; on a
  slave it fails with ``HOST_IS_SLAVE [master address]`` (xapi_session.ml checks this before the
  password); a wrong password gives ``SESSION_AUTHENTICATION_FAILED [uname, message]``;
* a call with an unknown session gives ``SESSION_INVALID [handle]`` (the SDK then logs in again
  by itself); unknown method ``MESSAGE_METHOD_UNKNOWN [method]``; wrong arity
  ``MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]``; bad ref
  ``HANDLE_INVALID [class, ref]``; unknown uuid ``UUID_INVALID [class, uuid]``;
* ``PBD.plug`` is a no-op on an attached PBD (xapi_pbd.ml) and, since the master forwards it to
  the PBD's host, fails with ``HOST_OFFLINE [host ref]`` when that host is not live
  (message_forwarding.ml ``check_live``).

The model: one pool of hosts (uuid, name_label, address, a host_metrics record with ``live``),
one master, a "Local storage" SR of type ``lvm`` per host, and the ``lvmoiscsi`` SRs a test adds,
each with one PBD per host. Records carry the usual fields (a client must ignore the ones it does
not use); every class answers ``get_all``, ``get_all_records``, ``get_record``, ``get_by_uuid``,
``get_by_name_label`` and ``get_<field>``.

Each host has its own endpoint, as each xapi listens on its own address: by default every host
listens on its own address and a common port, so tests give hosts distinct loopback addresses
(127.a.b.1, 127.a.b.2) and a ``HOST_IS_SLAVE`` answer points at a real, different endpoint.
Sessions belong to the pool and are valid on every endpoint (a slave forwards calls to the master);
moving the master drops them all, as the xapi restart of a master transition does.

Control (Python): ``set_master``, ``set_host_live``, ``set_delay`` (every request waits that long
before it is answered: a hung xapi), ``add_lvmoiscsi_sr``, ``invalidate_sessions``,
``set_reachable`` (close / reopen a host's endpoint). With ``control=True`` (always when run as a
script) the same are XML-RPC methods ``fake.*`` on every endpoint, answering plain values, so a
lab in another process can move the master the way HA-Lizard would::

    python tests/xapi_fake.py --listen own:4443 --hosts node1=127.9.9.1,node2=127.9.9.2 \\
        --master node1
    python -c 'import xmlrpc.client as x; x.ServerProxy("http://127.9.9.1:4443").fake.set_master("node2")'

``--listen IP:PORT`` puts host i on IP:PORT+i instead (its HOST_IS_SLAVE still names the host's own
address); ``--netns node1=NS1,...`` opens each host's endpoint inside a network namespace, so in a
namespace lab each node's xapi really is at that node's address. The script prints one JSON line
with the endpoints once they listen, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import uuid as uuidlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

NULL_REF = "OpaqueRef:NULL"
CLONE_NEWNET = 0x40000000


class ApiFailure(Exception):
    def __init__(self, *description: str) -> None:
        super().__init__(*description)
        self.description = [str(d) for d in description]


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def loopback_hosts(names: Sequence[str] = ("node1", "node2")) -> List[Tuple[str, str]]:
    """Hosts on distinct addresses of a random 127.a.b.0/24: a fresh pool per test, no clashes."""
    a, b = random.randint(1, 254), random.randint(1, 254)
    return [(name, f"127.{a}.{b}.{i}") for i, name in enumerate(names, start=1)]


def self_signed_cert(directory: str, common_name: str = "xapi-fake") -> Tuple[str, str]:
    """(cert, key) made by the openssl CLI, like the self-signed certificate XenServer ships."""
    cert = os.path.join(directory, "xapi-cert.pem")
    key = os.path.join(directory, "xapi-key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={common_name}",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


# --------------------------------------------------------------------------------------------
# The pool model and the XenAPI methods
# --------------------------------------------------------------------------------------------


class XapiFake:
    """A pool of hosts, one XML-RPC endpoint per host. Use as a context manager or start/stop."""

    CLASSES = ("pool", "host", "host_metrics", "SR", "PBD", "VDI", "VBD", "VM")

    def __init__(
        self,
        hosts: Sequence[Tuple[str, str]],
        master: str,
        username: str = "root",
        password: str = "secret",
        port: int = 0,
        listen: Optional[Mapping[str, Tuple[str, int]]] = None,
        tls: Optional[Tuple[str, str]] = None,
        control: bool = False,
        netns: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.username = username
        self.password = password
        self.port = port
        self.listen = dict(listen or {})
        self.tls = tls
        self.control = control
        self.netns = dict(netns or {})
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.delay = 0.0
        self.records: Dict[str, Dict[str, Dict[str, Any]]] = {c: {} for c in self.CLASSES}
        self.sessions: Dict[str, str] = {}
        self.calls: List[Tuple[str, str]] = []  # (endpoint host name, method), in arrival order
        self.logins = 0
        self._servers: Dict[str, socketserver.BaseServer] = {}
        self._unix: List[Tuple[str, socketserver.BaseServer]] = []
        self._threads: List[threading.Thread] = []
        self._bound: Dict[str, Tuple[str, int]] = {}

        for name, address in hosts:
            metrics = new_ref()
            self.records["host_metrics"][metrics] = {
                "uuid": new_uuid(),
                "live": True,
                "memory_total": "34359738368",
                "last_updated": "20240101T00:00:00Z",
                "other_config": {},
            }
            ref = new_ref()
            self.records["host"][ref] = {
                "uuid": new_uuid(),
                "name_label": name,
                "name_description": "",
                "hostname": name,
                "address": address,
                "enabled": True,
                "metrics": metrics,
                "PBDs": [],
                "API_version_major": "2",
                "API_version_minor": "21",
                "software_version": {"product_brand": "XCP-ng", "product_version": "8.2.1"},
                "other_config": {},
                "resident_VMs": [],
            }
        pool_ref = new_ref()
        self.records["pool"][pool_ref] = {
            "uuid": new_uuid(),
            "name_label": "",
            "name_description": "",
            "master": self.host_ref(master),
            "default_SR": NULL_REF,
            "ha_enabled": False,
            "other_config": {},
        }
        for ref, host in list(self.records["host"].items()):
            self._add_sr(
                f"Local storage on {host['name_label']}",
                "lvm",
                shared=False,
                attached={ref: True},
                hosts=[ref],
            )

    # -- lookups and control ------------------------------------------------------------------

    def host_ref(self, host: str) -> str:
        """A host by ref, uuid or name-label."""
        with self._lock:
            for ref, rec in self.records["host"].items():
                if host in (ref, rec["uuid"], rec["name_label"]):
                    return ref
        raise KeyError(f"no host {host!r}")

    def host_record(self, host: str) -> Dict[str, Any]:
        return self.records["host"][self.host_ref(host)]

    @property
    def pool_ref(self) -> str:
        return next(iter(self.records["pool"]))

    @property
    def master_ref(self) -> str:
        return self.records["pool"][self.pool_ref]["master"]

    def set_master(self, host: str) -> None:
        """Make ``host`` (uuid, name or ref) the master. Sessions die with the xapi restart."""
        with self._lock:
            self.records["pool"][self.pool_ref]["master"] = self.host_ref(host)
            self.sessions.clear()

    def set_host_live(self, host: str, live: bool) -> None:
        with self._lock:
            metrics = self.host_record(host)["metrics"]
            self.records["host_metrics"][metrics]["live"] = bool(live)

    def set_delay(self, seconds: float) -> None:
        """Every request from now on waits ``seconds`` before it is answered (a hung xapi)."""
        with self._lock:
            self.delay = float(seconds)

    def invalidate_sessions(self) -> None:
        with self._lock:
            self.sessions.clear()

    def add_lvmoiscsi_sr(
        self,
        name_label: str = "iSCSI-HA",
        attached: Any = False,
        target: str = "10.10.10.3",
        iqn: str = "iqn.2024-01.org.iscsi-ha:storage",
    ) -> str:
        """A shared iSCSI SR with one PBD per host; ``attached``: bool or {host: bool}."""
        with self._lock:
            hosts = list(self.records["host"])
            if isinstance(attached, Mapping):
                att = {self.host_ref(h): bool(v) for h, v in attached.items()}
            else:
                att = {h: bool(attached) for h in hosts}
            config = {
                "target": target,
                "targetIQN": iqn,
                "port": "3260",
                "SCSIid": "360000000000000000e00000000010001",
            }
            return self._add_sr(
                name_label,
                "lvmoiscsi",
                shared=True,
                attached=att,
                hosts=hosts,
                device_config=config,
            )

    def _add_sr(
        self,
        name: str,
        sr_type: str,
        shared: bool,
        attached: Mapping[str, bool],
        hosts: Sequence[str],
        device_config: Optional[Dict[str, str]] = None,
    ) -> str:
        sr_ref = new_ref()
        sr_uuid = new_uuid()
        pbd_refs = []
        for host in hosts:
            pbd = new_ref()
            pbd_refs.append(pbd)
            self.records["PBD"][pbd] = {
                "uuid": new_uuid(),
                "host": host,
                "SR": sr_ref,
                "device_config": dict(device_config or {"device": "/dev/sda3"}),
                "currently_attached": bool(attached.get(host, False)),
                "other_config": {},
            }
            self.records["host"][host]["PBDs"].append(pbd)
        self.records["SR"][sr_ref] = {
            "uuid": sr_uuid,
            "name_label": name,
            "name_description": "",
            "type": sr_type,
            "content_type": "",
            "shared": shared,
            "PBDs": pbd_refs,
            "VDIs": [],
            "physical_size": "107374182400",
            "physical_utilisation": "4194304",
            "virtual_allocation": "0",
            "sm_config": {},
            "other_config": {},
            "tags": [],
            "allowed_operations": ["scan", "plug", "unplug"],
            "current_operations": {},
        }
        return sr_uuid

    def add_vm(
        self,
        name_label: str,
        sr_uuid: str,
        host: Optional[str] = None,
        power_state: str = "Running",
        disks: int = 1,
        control_domain: bool = False,
    ) -> str:
        """A VM with ``disks`` virtual disks (VDI + VBD each) on the SR ``sr_uuid``, resident on
        ``host`` (a host name; None when not running)."""
        with self._lock:
            sr_ref = next(r for r, rec in self.records["SR"].items() if rec["uuid"] == sr_uuid)
            vm_ref, vm_uuid = new_ref(), new_uuid()
            resident = self.host_ref(host) if host else NULL_REF
            vbds = []
            for i in range(disks):
                vdi, vbd = new_ref(), new_ref()
                self.records["VDI"][vdi] = {
                    "uuid": new_uuid(),
                    "name_label": f"{name_label} disk {i}",
                    "SR": sr_ref,
                    "VBDs": [vbd],
                    "virtual_size": "10737418240",
                    "type": "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                }
                self.records["SR"][sr_ref]["VDIs"].append(vdi)
                self.records["VBD"][vbd] = {
                    "uuid": new_uuid(),
                    "VM": vm_ref,
                    "VDI": vdi,
                    "userdevice": str(i),
                    "type": "Disk",
                    "mode": "RW",
                    "currently_attached": power_state == "Running",
                    "other_config": {},
                }
                vbds.append(vbd)
            self.records["VM"][vm_ref] = {
                "uuid": vm_uuid,
                "name_label": name_label,
                "name_description": "",
                "power_state": power_state,
                "resident_on": resident,
                "VBDs": vbds,
                "is_control_domain": control_domain,
                "is_a_template": False,
                "is_a_snapshot": False,
                "other_config": {},
            }
            if host:
                self.records["host"][resident]["resident_VMs"].append(vm_ref)
            return vm_uuid

    def sr_uuid(self, name_label: str) -> str:
        with self._lock:
            for rec in self.records["SR"].values():
                if rec["name_label"] == name_label:
                    return rec["uuid"]
        raise KeyError(name_label)

    def pbds_of(self, sr_uuid: str) -> Dict[str, Dict[str, Any]]:
        """{host name: PBD record} of an SR."""
        with self._lock:
            sr = next(r for r in self.records["SR"].values() if r["uuid"] == sr_uuid)
            out = {}
            for pbd_ref in sr["PBDs"]:
                pbd = self.records["PBD"][pbd_ref]
                out[self.records["host"][pbd["host"]]["name_label"]] = dict(pbd)
            return out

    def state(self) -> Dict[str, Any]:
        """A plain summary for the control API and for debugging."""
        with self._lock:
            hosts = {
                rec["name_label"]: {
                    "uuid": rec["uuid"],
                    "address": rec["address"],
                    "live": self.records["host_metrics"][rec["metrics"]]["live"],
                    "master": ref == self.master_ref,
                }
                for ref, rec in self.records["host"].items()
            }
            srs = {
                rec["name_label"]: {
                    "uuid": rec["uuid"],
                    "type": rec["type"],
                    "pbds": self.pbds_of(rec["uuid"]),
                }
                for rec in self.records["SR"].values()
            }
            return {"hosts": hosts, "srs": srs, "sessions": len(self.sessions), "delay": self.delay}

    # -- the wire ------------------------------------------------------------------------------

    def handle(self, endpoint_host: str, method: str, params: Sequence[Any]) -> Any:
        """One XML-RPC request on the endpoint of ``endpoint_host`` (a host ref)."""
        with self._lock:
            delay = self.delay
            name = self.records["host"][endpoint_host]["name_label"]
        if delay > 0:
            self._stopping.wait(delay)
        self.calls.append((name, method))
        if self.control and method.startswith("fake."):
            return self._control(method[len("fake.") :], list(params))
        try:
            with self._lock:
                value = self._api(endpoint_host, method, list(params))
                value = copy.deepcopy(value)  # marshalled after the lock is released
        except ApiFailure as failure:
            return {"Status": "Failure", "ErrorDescription": failure.description}
        return {"Status": "Success", "Value": value}

    def _api(self, here: str, method: str, params: List[Any]) -> Any:
        if method == "session.login_with_password":
            _arity(method, params, 2, 4)
            if here != self.master_ref:
                master = self.records["host"][self.master_ref]
                raise ApiFailure("HOST_IS_SLAVE", master["address"])
            uname, pwd = str(params[0]), str(params[1])
            if uname != self.username or pwd != self.password:
                raise ApiFailure("SESSION_AUTHENTICATION_FAILED", uname, "Authentication failure")
            ref = new_ref()
            self.sessions[ref] = uname
            self.logins += 1
            return ref
        if not params or params[0] not in self.sessions:
            raise ApiFailure("SESSION_INVALID", str(params[0]) if params else "")
        session, args = params[0], params[1:]
        cls, _, op = method.partition(".")
        if method == "session.logout":
            _arity(method, args, 0, 0)
            self.sessions.pop(session, None)
            return ""
        if method == "session.get_this_host":
            _arity(method, args, 1, 1)
            return here
        if cls not in self.records or not op:
            raise ApiFailure("MESSAGE_METHOD_UNKNOWN", method)
        table = self.records[cls]
        if op == "get_all":
            _arity(method, args, 0, 0)
            return list(table)
        if op == "get_all_records":
            _arity(method, args, 0, 0)
            return table
        if op == "get_by_uuid":
            _arity(method, args, 1, 1)
            for ref, rec in table.items():
                if rec["uuid"] == args[0]:
                    return ref
            raise ApiFailure("UUID_INVALID", cls, str(args[0]))
        if op == "get_by_name_label":
            _arity(method, args, 1, 1)
            return [ref for ref, rec in table.items() if rec.get("name_label") == args[0]]
        if method == "PBD.plug":
            _arity(method, args, 1, 1)
            pbd = self._get(cls, args[0])
            if not pbd["currently_attached"]:
                host = self.records["host"][pbd["host"]]
                if not self.records["host_metrics"][host["metrics"]]["live"]:
                    raise ApiFailure("HOST_OFFLINE", pbd["host"])
                pbd["currently_attached"] = True
            return ""
        if method == "PBD.unplug":
            _arity(method, args, 1, 1)
            self._get(cls, args[0])["currently_attached"] = False
            return ""
        if op == "get_record":
            _arity(method, args, 1, 1)
            return self._get(cls, args[0])
        if op.startswith("get_"):
            _arity(method, args, 1, 1)
            record = self._get(cls, args[0])
            field = op[len("get_") :]
            if field in record:
                return record[field]
        raise ApiFailure("MESSAGE_METHOD_UNKNOWN", method)

    def _get(self, cls: str, ref: Any) -> Dict[str, Any]:
        try:
            return self.records[cls][ref]
        except (KeyError, TypeError):
            raise ApiFailure("HANDLE_INVALID", cls, str(ref)) from None

    def _control(self, op: str, args: List[Any]) -> Any:
        actions: Dict[str, Callable[..., Any]] = {
            "set_master": self.set_master,
            "set_host_live": self.set_host_live,
            "set_delay": self.set_delay,
            "invalidate_sessions": self.invalidate_sessions,
            "add_lvmoiscsi_sr": self.add_lvmoiscsi_sr,
            "state": self.state,
        }
        if op not in actions:
            raise ValueError(f"unknown control method fake.{op}")
        result = actions[op](*args)
        return True if result is None else result

    # -- endpoints ------------------------------------------------------------------------------

    def start(self) -> "XapiFake":
        """Open one endpoint per host. With port 0, one free port common to all hosts."""
        for attempt in range(20):
            try:
                self._open_all()
                return self
            except OSError as exc:
                self._close_servers()
                if exc.errno != 98 or self.port or attempt == 19:  # EADDRINUSE on a guessed port
                    raise
        return self  # pragma: no cover

    def _open_all(self) -> None:
        port = self.port
        hosts = list(self.records["host"].items())
        for ref, rec in hosts:
            addr, want = self.listen.get(rec["name_label"], (rec["address"], port))
            server = self._open(rec["name_label"], ref, addr, want)
            self._bound[ref] = server.server_address[:2]  # type: ignore[index]
            if port == 0 and rec["name_label"] not in self.listen:
                port = self._bound[ref][1]

    def _open(self, name: str, ref: str, addr: str, port: int) -> socketserver.BaseServer:
        def make() -> _TcpServer:
            server = _TcpServer((addr, port), self, ref)
            if self.tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*self.tls)
                server.socket = ctx.wrap_socket(
                    server.socket, server_side=True, do_handshake_on_connect=False
                )
            return server

        server = _in_netns(self.netns[name], make) if name in self.netns else make()
        self._serve(server)
        self._servers[ref] = server
        return server

    def add_unix_socket(self, host: str, path: str) -> None:
        """Also serve ``host``'s xapi on a Unix socket (its local ``/var/lib/xcp/xapi``)."""
        server = _UnixServer(path, self, self.host_ref(host))
        self._serve(server)
        self._unix.append((path, server))

    def _serve(self, server: socketserver.BaseServer) -> None:
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="xapi-fake",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def url(self, host: str) -> str:
        addr, port = self._bound[self.host_ref(host)]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{addr}:{port}"

    def set_reachable(self, host: str, up: bool) -> None:
        """Close (``False``) or reopen (``True``) a host's endpoint on the same address and port."""
        ref = self.host_ref(host)
        if not up:
            server = self._servers.pop(ref, None)
            if server is not None:
                server.shutdown()
                server.server_close()
        elif ref not in self._servers:
            addr, port = self._bound[ref]
            self._open(self.records["host"][ref]["name_label"], ref, addr, port)

    def _close_servers(self) -> None:
        for server in list(self._servers.values()) + [s for _, s in self._unix]:
            server.shutdown()
            server.server_close()
        for path, _ in self._unix:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._servers.clear()
        self._unix.clear()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()

    def stop(self) -> None:
        self._stopping.set()  # releases requests held by set_delay
        self._close_servers()

    def __enter__(self) -> "XapiFake":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _arity(method: str, args: Sequence[Any], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        # xapi counts the session argument too.
        extra = 0 if method == "session.login_with_password" else 1
        raise ApiFailure(
            "MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(high + extra), str(len(args) + extra)
        )


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ()  # any path: the SDK posts to "/", other clients to "/RPC2"

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake runs here, in the request thread, so a stuck client blocks no one.
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # TCP_NODELAY does not exist on a Unix socket


class _Dispatch:
    def __init__(self, fake: XapiFake, host_ref: str) -> None:
        self.fake = fake
        self.host_ref = host_ref

    def _dispatch(self, method: str, params: Sequence[Any]) -> Any:
        return self.fake.handle(self.host_ref, method, params)


class _TcpServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True

    def __init__(self, addr: Tuple[str, int], fake: XapiFake, host_ref: str) -> None:
        SimpleXMLRPCServer.__init__(
            self, addr, requestHandler=_Handler, logRequests=False, allow_none=True
        )
        self.register_instance(_Dispatch(fake, host_ref))

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or rejects our certificate is not the fake's problem


class _UnixServer(
    socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher
):
    daemon_threads = True

    def __init__(self, path: str, fake: XapiFake, host_ref: str) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None)
        self.logRequests = False
        socketserver.UnixStreamServer.__init__(self, path, _UnixHandler)
        self.register_instance(_Dispatch(fake, host_ref))

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread inside network namespace ``name``; sockets it opens stay there."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join(timeout=10)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TimeoutError(f"opening an endpoint in netns {name} took too long")
    return box["value"]


# --------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------


def _pairs(text: str) -> List[Tuple[str, str]]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        out.append((key, value))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="A fake XenAPI pool for labs and tests.")
    ap.add_argument(
        "--listen",
        default="own:0",
        help="own:PORT (each host on its own address) or IP:PORT (host i on PORT+i)",
    )
    ap.add_argument("--hosts", type=_pairs, required=True, help="node1=ADDR,node2=ADDR")
    ap.add_argument("--master", required=True)
    ap.add_argument("--username", default="root")
    ap.add_argument("--password", default=None)
    ap.add_argument("--password-file", default=None)
    ap.add_argument("--netns", type=_pairs, default=[], help="node1=NETNS,... (own: mode)")
    ap.add_argument("--unix", type=_pairs, default=[], help="node1=PATH: a local xapi socket")
    ap.add_argument(
        "--sr",
        action="append",
        default=None,
        help="name of an lvmoiscsi SR to create, unattached (default: iSCSI-HA)",
    )
    ap.add_argument("--tls-cert", default=None)
    ap.add_argument("--tls-key", default=None)
    args = ap.parse_args(argv)

    password = args.password or "secret"
    if args.password_file:
        with open(args.password_file) as fh:
            password = fh.read().strip()
    addr, _, port_text = args.listen.rpartition(":")
    port = int(port_text)
    listen = {}
    if addr != "own":
        listen = {name: (addr, port + i) for i, (name, _) in enumerate(args.hosts)}
    tls = (args.tls_cert, args.tls_key or args.tls_cert) if args.tls_cert else None
    fake = XapiFake(
        args.hosts,
        args.master,
        username=args.username,
        password=password,
        port=port,
        listen=listen,
        tls=tls,
        control=True,
        netns=dict(args.netns),
    )
    for name in args.sr if args.sr is not None else ["iSCSI-HA"]:
        fake.add_lvmoiscsi_sr(name)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    fake.start()
    try:
        for host, path in args.unix:
            fake.add_unix_socket(host, path)
        endpoints = {name: fake.url(name) for name, _ in args.hosts}
        print(json.dumps({"endpoints": endpoints, "pid": os.getpid()}), flush=True)
        while not done.wait(1.0):  # until SIGTERM / SIGINT
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)  # no client of the fake can hold one of its threads forever
    sys.exit(main())
