"""`make bench`: every benchmark, side by side with its peer, in one run.

Results go to benchmarks/results/<name>.json and a table per benchmark into docs/benchmarks.md.
Usage: python -m benchmarks.run [--only online,ingest,kmeans,batch,startup] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from typing import Any

from benchmarks import common

BENCHES = ["online", "ingest", "kmeans", "batch", "startup"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    args = parser.parse_args(argv)
    machine = common.machine()
    failed = []
    for name in [b.strip() for b in args.only.split(",") if b.strip()]:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            print(f"[bench] {name}: not available yet, skipped", file=sys.stderr)
            continue
        print(f"[bench] {name} ...", file=sys.stderr)
        try:
            data: dict[str, Any] = module.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        data["machine"] = machine
        path = common.save(name, data)
        common.update_doc(
            name,
            f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, "
            f"{machine['memory_gib']} GiB), Python {machine['python']}.\n\n" + module.markdown(data),
        )
        print(f"[bench] {name}: {path}", file=sys.stderr)
        print(json.dumps(data.get("median", data.get("summary", {})), indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
