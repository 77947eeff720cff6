"""``nas-study``: maintenance of a search's study storage.

    nas-study repair outputs/search/<run>/study.journal

``repair`` keeps every complete record of a journal file whose last record was cut short
(a kill or a full disk while writing) and keeps the damaged original beside it; the run can
then be resumed with ``nas-search resume=true hydra.run.dir=<run>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from nas.search.storage import repair_journal

    parser = argparse.ArgumentParser(prog="nas-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    repair = sub.add_parser("repair", help="drop a journal's torn last record, keep the rest")
    repair.add_argument("journal", type=Path)
    args = parser.parse_args(argv)
    if not args.journal.is_file():
        print(f"nas-study: error: {args.journal}: no such journal file", file=sys.stderr)
        return 2
    kept, dropped, backup = repair_journal(args.journal)
    if not dropped:
        print(f"{args.journal}: {kept} records, nothing to repair")
    else:
        print(f"{args.journal}: kept {kept} complete records, dropped {dropped} damaged; "
              f"the damaged file is {backup}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
