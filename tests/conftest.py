import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# tests/ helpers (fakes, the XenAPI fake, capture readers) are imported as plain modules, and the
# lab harness (lab/, not installed) from the repository root.
sys.path.insert(0, HERE)
sys.path.append(os.path.dirname(HERE))
