"""``nas-study``: maintenance of a search's study storage.

    nas-study repair outputs/search/<run>/study.journal

``repair`` keeps every complete record of a journal file with a damaged record (cut short by a
kill or a full disk, or garbled) and keeps the damaged original beside it; the run can then be
resumed with ``nas-search resume=true hydra.run.dir=<run>``, which re-runs a trial whose
record was dropped and says so. A repair that cannot write its backup changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from nas.search.storage import JournalError, repair_journal

    parser = argparse.ArgumentParser(prog="nas-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    repair = sub.add_parser("repair", help="drop a journal's torn last record, keep the rest")
    repair.add_argument("journal", type=Path)
    args = parser.parse_args(argv)
    if not args.journal.is_file():
        print(f"nas-study: error: {args.journal}: no such journal file", file=sys.stderr)
        return 2
    try:
        report = repair_journal(args.journal)
    except (JournalError, OSError) as err:
        print(f"nas-study: error: {err}", file=sys.stderr)
        return 1
    if not report.dropped:
        print(f"{args.journal}: {report.kept} records, nothing to repair")
    else:
        print(f"{args.journal}: kept {report.kept} complete records, dropped {report.dropped} "
              f"damaged; the damaged file is {report.backup}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
