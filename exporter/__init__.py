"""Prometheus exporter for iscsi-ha: renders the last snapshot; a scrape never runs a command."""
