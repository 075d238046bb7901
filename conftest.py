"""Test-wide settings: offline hub (no 47 s retries), a non-interactive matplotlib, small thread pools."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
