"""iscsi-ha controller: keeps DRBD Primary, the iSCSI target and the VIP on the pool master."""

__version__ = "0.1.0"
