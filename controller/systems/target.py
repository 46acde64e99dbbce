"""The iSCSI target, whichever daemon serves it: the seam between the controller and tgt / LIO.

Nothing above ``controller/systems/`` knows which backend serves the LUNs: ``cycle``/``execute``
call ``observe``, ``start_daemon``, ``serve``, ``stop_serving`` and ``stop_daemon`` on the object
``make_target`` returns and read a backend-neutral ``TargetObservation``. Each backend is one
module here with pure parsers over captured real outputs and a thin class over the runner:

* ``tgt.py``: the user-space tgtd, driven through ``tgtadm`` (hosts that package tgt);
* ``lio.py``: the kernel target (LIO), driven through configfs (XCP-ng 8.3 / XenServer 8 dom0).

``target.backend: auto`` picks LIO when the kernel target is loaded (its configfs directory
exists), or when tgtd is not installed and the kernel has LIO's modules (the dom0 case); else tgt
(a host that has tgt keeps it). A third backend is one new module plus one line in
``make_target``.

The LUN's identity is declared here, once, for every backend. An initiator (XenServer's iSCSI SR)
finds its LUN again after a failover by the device identification it read (VPD page 0x83), so both
hosts must present the same one without any user step: every value is derived from the IQN and
the LUN number alone, and can be pinned per LUN (``import-conf --tgt-conf`` carries a tgt user's
``scsi_id`` / ``scsi_sn`` over). Measured on tgt 1.0.85 and LIO (Linux 6.1):

* unit serial (VPD 0x80): tgt's ``scsi_sn``; LIO's ``wwn/vpd_unit_serial``;
* NAA designator (VPD 0x83, type 6, what udev's scsi_id and so XenServer's SCSIid read first):
  tgt builds it from ``scsi_id``, one nibble per character, right-aligned after the NAA
  nibble; LIO
  from IEEE company id 00-14-05 followed by the first 25 hex digits of the unit serial. The
  derived ``scsi_id`` is ``001405`` + those 25 digits, so both backends present the *same* NAA:
  a pool can move from tgt to LIO and its SR keeps its SCSIid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

BACKENDS = ("lio", "tgt")
LIO_COMPANY_ID = "001405"  # LIO's IEEE company id in its NAA designator (fixed before Linux 5.x)
NAA_DIGITS = 31  # hex digits after the NAA type nibble in a 16-byte NAA 6 designator
DEFAULT_VENDOR = "ISCSI-HA"  # T10 vendor id: at most 8 ASCII characters
DEFAULT_PRODUCT = "DRBD-LUN"  # at most 16
DEFAULT_TIME2WAIT = 2  # what tgt and LIO offer unless told otherwise (RFC 7143 default)


@dataclass(frozen=True)
class LunSpec:
    """One configured LUN with its identity resolved (derived or pinned)."""

    number: int
    path: str
    serial: str  # VPD 0x80
    scsi_id: str  # tgt's scsi_id; its hex digits make the NAA designator
    vendor: str = DEFAULT_VENDOR
    product: str = DEFAULT_PRODUCT

    @property
    def wwn(self) -> str:
        """The NAA designator tgt presents for ``scsi_id`` (LIO's: ``lio_wwn(serial)``)."""
        return tgt_wwn(self.scsi_id)


def planned_info(specs: Sequence[LunSpec], backend: str) -> Tuple[Any, ...]:
    """The identity each LUN will present when served here (a standby reports it too, so the
    two hosts' identities compare at any time, not only across a failover)."""
    from ..model import LunInfo

    return tuple(
        LunInfo(
            s.number,
            serial=s.serial,
            wwn=lio_wwn(s.serial) if backend == "lio" else tgt_wwn(s.scsi_id),
            vendor=s.vendor,
            product=s.product,
        )
        for s in specs
    )


def derived_serial(iqn: str, number: int) -> str:
    """32 hex digits, a function of the IQN and the LUN number only: equal on both hosts."""
    return hashlib.sha256(f"iscsi-ha\0{iqn}\0{number}".encode()).hexdigest()[:32]


def derived_scsi_id(serial: str) -> str:
    """tgt's scsi_id whose NAA equals the one LIO derives from ``serial``."""
    return LIO_COMPANY_ID + _hex_digits(serial)[: NAA_DIGITS - len(LIO_COMPANY_ID)]


def _hex_digits(text: str) -> str:
    return "".join(c for c in text.lower() if c in "0123456789abcdef")


def tgt_wwn(scsi_id: str) -> str:
    """tgt's NAA 6 designator (measured): each character of scsi_id as a hex digit (0 when it
    is not one: "IET     00010001" -> 0e00000000010001), the last 31, right-aligned."""
    digits = "".join(c if c in "0123456789abcdef" else "0" for c in scsi_id.lower())
    digits = digits[-NAA_DIGITS:]
    return "naa.6" + digits.rjust(NAA_DIGITS, "0")


def lio_wwn(serial: str, company_id: str = LIO_COMPANY_ID) -> str:
    """LIO's NAA 6 designator: company id, then the first hex digits of the unit serial."""
    digits = _hex_digits(serial)[: NAA_DIGITS - len(company_id)]
    return "naa.6" + company_id + digits.ljust(NAA_DIGITS - len(company_id), "0")


def lun_specs(iqn: str, luns: Sequence[Any]) -> Tuple[LunSpec, ...]:
    """LunSpecs from config ``Lun`` objects (or ``(number, path)`` pairs): what is not pinned is
    derived from the IQN and the LUN number."""
    out = []
    for lun in luns:
        if isinstance(lun, LunSpec):
            out.append(lun)
            continue
        if isinstance(lun, tuple):
            number, path = lun
            pinned: dict = {}
        else:
            number, path = lun.number, lun.path
            pinned = {k: getattr(lun, k, None) for k in ("serial", "scsi_id", "vendor", "product")}
        serial = pinned.get("serial") or derived_serial(iqn, int(number))
        out.append(
            LunSpec(
                number=int(number),
                path=str(path),
                serial=serial,
                scsi_id=pinned.get("scsi_id") or derived_scsi_id(serial),
                vendor=pinned.get("vendor") or DEFAULT_VENDOR,
                product=pinned.get("product") or DEFAULT_PRODUCT,
            )
        )
    return tuple(out)


# -- choosing the backend -----------------------------------------------------------------------

LIO_MODULES = ("target_core_mod", "iscsi_target_mod", "target_core_iblock")


def lio_loaded(configfs: str = "/sys/kernel/config") -> bool:
    return os.path.isdir(os.path.join(configfs, "target"))


def lio_installed(modules_root: str = "/lib/modules", release: Optional[str] = None) -> bool:
    """LIO's core module is installed for the running kernel."""
    release = release or os.uname().release
    try:
        with open(os.path.join(modules_root, release, "modules.dep"), "rb") as f:
            return any(b"/target_core_mod.ko" in line.split(b":", 1)[0] for line in f)
    except OSError:
        return False


def choose_backend(
    setting: str,
    configfs: str = "/sys/kernel/config",
    tgtd: str = "tgtd",
    modules_root: str = "/lib/modules",
) -> str:
    if setting in BACKENDS:
        return setting
    if lio_loaded(configfs):
        return "lio"
    if shutil.which(tgtd) is None and lio_installed(modules_root):
        return "lio"
    return "tgt"


def make_target(cfg: Any, runner: Any) -> Any:
    """The backend object for ``cfg`` (a config ``TargetConfig``)."""
    backend = choose_backend(cfg.backend, cfg.configfs, cfg.tgtd)
    luns = lun_specs(cfg.iqn, cfg.luns)
    if backend == "lio":
        from .lio import LioTarget

        return LioTarget(
            runner,
            configfs=cfg.configfs,
            iqn=cfg.iqn,
            luns=luns,
            initiator_address=cfg.initiator_address,
            default_time2wait=cfg.default_time2wait,
            modprobe=cfg.modprobe,
        )
    from .tgt import Target as TgtTarget

    return TgtTarget(
        runner,
        tgtadm=cfg.tgtadm,
        tgtd=cfg.tgtd,
        control_port=cfg.control_port,
        tid=cfg.tid,
        iqn=cfg.iqn,
        luns=luns,
        initiator_address=cfg.initiator_address,
        stop_timeout=cfg.stop_timeout,
        log_file=cfg.log_file,
        default_time2wait=cfg.default_time2wait,
    )
