"""iscsi-ha controller: keeps the DRBD Primary role, the iSCSI target and the VIP on the pool master."""

__version__ = "0.1.0"
