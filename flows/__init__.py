"""Prefect flows: thin orchestration over `gvmgen` (the work) and `storage` (where it lives)."""

import os
import signal
import sys
import threading
import traceback
from pathlib import Path

# The score-catalog flow's own parameters' ranges; here, where the command line reads them without
# importing Prefect, to refuse a value out of range before it starts anything.
BATCH_RANGE = (1, 64)              # batch_videos
LEASE_RANGE = (1, 7 * 24 * 3600)   # lease_s, seconds


def embedded_prefect_environment(home: Path) -> None:
    """Defaults for Prefect in embedded mode (its temporary server, no PREFECT_API_URL), before Prefect
    is imported; a variable the user set wins. Its state under `home`; no analytics or telemetry; and
    time for the temporary server's start, whose database is migrated on first use: that can outlast
    Prefect's 20 s on a busy machine."""
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client telemetry (and its notice on a terminal)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def print_stacks(file=None) -> None:
    """Every thread's stack, named, on `file` (stderr). Read under the GIL from Python: `faulthandler`
    reads other threads' frames without it, and its dumps crashed the catalog bench (SIGSEGV) while its
    threads came and went."""
    file = file or sys.stderr
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"Thread {ident:#x} ({names.get(ident, 'unknown')}), most recent call last:", file=file)
        print("".join(traceback.format_stack(frame)), file=file)
    file.flush()


def stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack on stderr and changes nothing else: where a run that
    seems stuck waits. For the command line, and for the flow runs a Prefect worker starts; signal
    handlers belong to the main thread, so a flow run elsewhere goes without."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: print_stacks())
