"""`make mutate`: mutation testing of the core modules with mutmut, and a score for each module.

TARGETS is the one place that says what is tested: each line is a module, that is a file for mutmut
to mutate, the fast tests that exercise it, and, where the file holds other code too, the functions
that count (the lease functions of storage/repository.py). Adding a module is adding a line.
pyproject.toml's [tool.mutmut] holds what every module shares; this script adds the files and tests of
TARGETS to that configuration and runs mutmut in-process (mutmut reads no other configuration).

Every run starts from a fresh mutants/ folder: mutmut's cache maps tests to the functions they call,
and a cache older than the tests would score against stale tests. A mutant counts as killed when a
test failed or timed out on it; one with no test reaching it counts as surviving. Survivors are
listed, marked when tests/MUTANTS.md explains why they are harmless. The last line is
`RESULT mutation_score_min=<the lowest module's percentage>`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPLAINED = ROOT / "tests" / "MUTANTS.md"   # the survivors left on purpose, each with its reason
DETECTED = ("killed", "timeout")


@dataclass(frozen=True)
class Target:
    name: str
    path: str                 # the file mutmut mutates
    tests: tuple[str, ...]    # fast tests that exercise it
    functions: tuple[str, ...] = ()  # the module-level functions that count; none: the whole file

    @property
    def patterns(self) -> list[str]:
        """mutmut's names for this module's mutants, as shell patterns (`mutmut run` takes them too)."""
        module = self.path.removesuffix(".py").replace("/", ".")
        if not self.functions:
            return [f"{module}.*"]
        return [f"{module}.x_{f}__mutmut_*" for f in self.functions]


TARGETS = [
    Target("windows", "gvmgen/windows.py", ("tests/test_windows.py",)),
    Target("stitching", "gvmgen/media/stitching.py", ("tests/media/test_stitching.py",)),
    Target("leases", "storage/repository.py", ("tests/storage/test_leases.py", "tests/storage/test_db.py"),
           ("_job", "claim", "job_of", "renew", "release", "release_owner", "complete")),
    Target("delay", "gvmgen/model/delay.py", ("tests/model/test_delay.py",)),
    Target("frames", "gvmgen/media/frames.py", ("tests/media/test_frames.py",), ("frame_timing",)),
    Target("settings", "gvmgen/settings.py", ("tests/test_settings.py",)),
    Target("settings-hash", "storage/repository.py", ("tests/test_settings.py",), ("settings_hash",)),
]


def run_mutmut(targets: list[Target]) -> None:
    from mutmut.__main__ import cli
    from mutmut.configuration import config

    cfg = config()
    cfg.only_mutate = sorted({t.path for t in targets})
    cfg.pytest_add_cli_args_test_selection = sorted({test for t in targets for test in t.tests})
    patterns = [p for t in targets for p in t.patterns]
    cli.main(["run", *patterns], standalone_mode=False)  # one worker per CPU


def score(target: Target) -> tuple[int, int, list[str]]:
    """(detected, total, the names of the survivors) of the target's mutants, from mutmut's results."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    data = SourceFileMutationData(path=target.path)
    data.load()
    for pattern in target.patterns:  # a misspelt function would silently count for nothing
        if not any(fnmatch(name, pattern) for name in data.exit_code_by_key):
            sys.exit(f"{target.name}: no mutants named {pattern} in {target.path}")
    mine = {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()
            if any(fnmatch(name, p) for p in target.patterns)}
    survivors = sorted(name for name, status in mine.items() if status not in DETECTED)
    return len(mine) - len(survivors), len(mine), survivors


def main(names: list[str]) -> int:
    """Mutate every target, or those named (`scripts/mutate.py windows`, while killing its survivors)."""
    targets = [t for t in TARGETS if not names or t.name in names]
    if not targets:
        sys.exit(f"no target named {' or '.join(names)}; the targets: {', '.join(t.name for t in TARGETS)}")
    started = time.monotonic()
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    run_mutmut(targets)
    explained = EXPLAINED.read_text() if EXPLAINED.exists() else ""
    print("\nsurvivors (see one with `mutmut show NAME`):")
    lines, lowest = [], 100.0
    for target in targets:
        detected, total, survivors = score(target)
        percent = 100.0 * detected / total if total else 0.0
        lowest = min(lowest, percent)
        lines.append(f"{target.name:<13} {target.path:<26} {detected:>4} / {total:<4} killed  {percent:5.1f}%")
        for name in survivors:
            known = re.search(rf"\b{re.escape(name)}\b", explained)
            print(f"    {name:<60} {'explained in tests/MUTANTS.md' if known else 'NEW: kill it or explain it'}")
    print(f"\nmutation score per module ({time.monotonic() - started:.0f} s):")
    print("\n".join(lines))
    print(f"RESULT mutation_score_min={lowest:.1f}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)  # mutmut works in the current directory
    sys.exit(main(sys.argv[1:]))
