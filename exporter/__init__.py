"""Prometheus exporter for iscsi-ha: renders the controller's last snapshot, never runs a command."""
