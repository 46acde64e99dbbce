"""One module per external system: pure ``parse_*`` functions plus a thin class over a runner."""
