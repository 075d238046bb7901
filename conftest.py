"""Test session settings for the whole repository (core and plugins).

OpenMP threads that spin while waiting make torch several times slower when
other processes share the cores (measured: a conformance check took 43 s
instead of 3 s on a busy 2-core machine). The CLI sets the same default.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
