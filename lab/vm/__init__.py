"""The VM lab: real DRBD 8.4 (the Debian kernel's module) in two QEMU VMs.

``image`` builds the kernel and initramfs (cached), ``harness`` boots and drives the VMs,
``agent`` runs inside each VM, ``scenario`` is the drbdadm scenario run against both the VMs and
the namespace lab's simulator, ``controllers`` runs the real controller inside the VMs.
"""
