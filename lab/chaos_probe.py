"""Cheap readings of one node for the chaos runner's invariant checker (``lab/chaos.py``).

``lab.demo.node_state()`` reads a node with the system's own tools: it execs ``ip -n NS addr`` and
``tgtadm --op show``, two fork+execs per node and three node readings per sample, which made a
sample cost 68-100 ms on the loaded 2-CPU lab machine. The checker must sample every ~10 ms, so
this module asks the same sources without a process:

* the VIP: an rtnetlink ``RTM_GETADDR`` dump on a socket opened once *inside* the node's network
  namespace (a thread enters the namespace with setns(2), opens the socket and ends; the socket
  stays bound to that namespace) -- the same kernel answer ``ip addr`` prints;
* the target: tgtd's own management socket (``/var/run/tgtd/socket.N``), the request ``tgtadm
  --mode target --op show`` sends (captured with strace from tgt 1.0.85: a 120-byte
  ``struct tgtadm_req``; the answer is ``struct tgtadm_rsp {u32 err; u32 len}`` and ``len - 8``
  bytes of the same text tgtadm prints), parsed by ``lab.demo.parse_tgt_targets``;
* DRBD: the simulator's state file, as before (a file read).

``tests/test_chaos_probe.py`` checks in the lab that both ways read the same states.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
import threading
from typing import Dict, List, Optional, Tuple

from .demo import NodeState, drbd_roles, parse_tgt_targets
from .netlab import VIP, Lab, Node

CLONE_NEWNET = 0x40000000
TGTD_SOCKET = "/var/run/tgtd/socket.{port}"

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTATTR = struct.Struct("=HH")  # len, type
NLMSG_ERROR, NLMSG_DONE, RTM_NEWADDR, RTM_GETADDR = 2, 3, 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2

# tgt 1.0.85 usr/tgtadm.h: MODE_TARGET = 1, OP_SHOW = 2; lld[64]; len; tid; sid; lun; cid; host_no;
# device_type; ac_dir; pack; force (the layout tgtadm wrote, byte for byte, under strace).
TGTADM_REQ = struct.Struct("=II64sIiQQIIIIII")
TGTADM_RSP = struct.Struct("=II")
MODE_TARGET, OP_SHOW = 1, 2
READ_CAP = 1 << 20  # a show answer is a few KiB; a larger one is not tgtd's


def socket_in_netns(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that belongs to network namespace ``netns`` (from ``ip netns add``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: Dict[str, object] = {}

    def enter_and_open() -> None:  # only this short-lived thread changes namespace
        try:
            with open(f"/run/netns/{netns}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {errno.errorcode.get(err, err)}")
            out["sock"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=enter_and_open, name=f"setns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout=10)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    if "sock" not in out:
        raise OSError(f"could not open a socket in {netns}")
    return out["sock"]  # type: ignore[return-value]


class AddrReader:
    """IPv4 addresses of one namespace through its own rtnetlink socket."""

    def __init__(self, netns: str) -> None:
        self.sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.settimeout(2.0)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def addresses(self) -> List[Tuple[int, str, int]]:
        """[(interface index, address, prefix length)] of every IPv4 address."""
        self.seq += 1
        body = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        self.sock.send(
            NLMSG.pack(NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
            + body
        )
        out: List[Tuple[int, str, int]] = []
        for _ in range(1000):  # bounded: a dump of a lab namespace is one or two datagrams
            data = self.sock.recv(65536)
            offset = 0
            while offset + NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSG.unpack_from(data, offset)
                if length < NLMSG.size:
                    return out
                if seq == self.seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        raise OSError("rtnetlink answered an error to RTM_GETADDR")
                    if kind == RTM_NEWADDR:
                        out.append(_parse_addr(data[offset + NLMSG.size : offset + length]))
                offset += (length + 3) & ~3
        raise OSError("rtnetlink dump did not end")


def _parse_addr(msg: bytes) -> Tuple[int, str, int]:
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(msg, 0)
    attrs: Dict[int, bytes] = {}
    offset = IFADDRMSG.size
    while offset + RTATTR.size <= len(msg):
        length, kind = RTATTR.unpack_from(msg, offset)
        if length < RTATTR.size:
            break
        attrs[kind] = msg[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS) or b""
    addr = str(ipaddress.IPv4Address(raw)) if len(raw) == 4 and family == socket.AF_INET else ""
    return index, addr, prefixlen


def tgt_show(port: int, timeout: float = 2.0) -> Optional[str]:
    """What ``tgtadm -C PORT --lld iscsi --mode target --op show`` prints; None when tgtd does
    not answer (not running, or killed)."""
    req = TGTADM_REQ.pack(
        MODE_TARGET, OP_SHOW, b"iscsi", TGTADM_REQ.size, -1, 0, 0xFFFFFFFFFFFFFFFF, 0, 0, 0, 0, 0, 0
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(TGTD_SOCKET.format(port=port))
        sock.sendall(req)
        head = _recv_exactly(sock, TGTADM_RSP.size)
        err, length = TGTADM_RSP.unpack(head)
        if err != 0 or not TGTADM_RSP.size <= length <= READ_CAP:
            return None
        return _recv_exactly(sock, length - TGTADM_RSP.size).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        sock.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise OSError("tgtd closed the management connection early")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class FastProbe:
    """``state(node)`` as ``lab.demo.node_state(lab, node)``, without a process."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.vip, prefix = VIP.split("/")
        self.prefix = int(prefix)
        self.readers = {n.name: AddrReader(n.netns) for n in lab.nodes}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def vip_count(self, node: Node) -> int:
        addrs = self.readers[node.name].addresses()
        own = {index for index, addr, _ in addrs if addr == node.addr}  # the node's interface
        return sum(
            1
            for index, addr, prefix in addrs
            if addr == self.vip and prefix == self.prefix and index in own
        )

    def state(self, node: Node) -> NodeState:
        text = tgt_show(node.tgt_port)
        targets = parse_tgt_targets(text) if text is not None else ()
        return NodeState(self.vip_count(node), targets, drbd_roles(self.lab).get(node.name, "?"))
