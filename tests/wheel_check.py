"""`python tests/wheel_check.py DIST/rlme-*.whl`: every module and data file of the
checkout's three parts is in the wheel, under rlme/ (run by `make check-wheel`)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("service", "client", "trainer")


def expected() -> set[str]:
    files = set()
    for part in PARTS:
        for path in (ROOT / part).rglob("*"):
            if path.suffix in (".py", ".jsonl") and "__pycache__" not in path.parts:
                files.add(f"rlme/{path.relative_to(ROOT).as_posix()}")
    return files


def main(wheel: str) -> None:
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected() - inside)
    if missing:
        sys.exit(f"{wheel} lacks {len(missing)} files of the checkout: {missing[:20]}")
    print(f"wheel check: all {len(expected())} modules and data files are in {Path(wheel).name}")


if __name__ == "__main__":
    main(sys.argv[1])
