import os
import sys

# tests/ helpers (fakes, the XenAPI fake) are imported as plain modules.
sys.path.insert(0, os.path.dirname(__file__))
