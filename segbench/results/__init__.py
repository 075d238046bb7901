"""Run records, the run store and the leaderboard (with published references).

Importing this package does not import torch or pandas.
"""

from __future__ import annotations

from segbench.results.leaderboard import (
    Leaderboard,
    LeaderboardError,
    build_leaderboard,
    leaderboard,
    runs_frame,
    summary_frame,
    write_leaderboard,
)
from segbench.results.published import PublishedError, load_published, read_published
from segbench.results.record import (
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    code_versions,
    collect_environment,
    make_config_id,
    make_run_id,
    utc_now,
)
from segbench.results.store import RecordWarning, RunStore, StoreError, default_runs_dir

__all__ = [
    "Leaderboard",
    "LeaderboardError",
    "PublishedError",
    "RecordError",
    "RecordWarning",
    "RunRecord",
    "RunStore",
    "SCHEMA_VERSION",
    "StoreError",
    "build_leaderboard",
    "code_versions",
    "collect_environment",
    "default_runs_dir",
    "leaderboard",
    "load_published",
    "make_config_id",
    "make_run_id",
    "read_published",
    "runs_frame",
    "summary_frame",
    "utc_now",
    "write_leaderboard",
]
