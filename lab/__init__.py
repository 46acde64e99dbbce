"""The two-node lab: network namespaces, a DRBD 8.4 simulator, real tgtd and a real iSCSI client.

Not installed with the product; the demo and the integration tests import it from the repository
root (``lab.netlab`` builds the topology, ``lab.drbdsim`` stands in for DRBD).
"""
