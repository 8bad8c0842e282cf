"""``convforge cache``: the persistent kernel cache (``info``: where, how big; ``clear``)."""

from __future__ import annotations

import argparse
import json

from convforge import kernel_cache

HELP = "show (info) or empty (clear) the on-disk kernel cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("info", "clear"),
        help="info: folder, entries, size; clear: delete every entry",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "clear":
        deleted = kernel_cache.clear()
        result = {"folder": str(kernel_cache.cache_dir()), "deleted": deleted}
        text = f"deleted {deleted} entries from {result['folder']}"
    else:
        info = kernel_cache.info()
        result = {
            "folder": str(info.folder),
            "enabled": info.enabled,
            "entries": info.entries,
            "total_bytes": info.total_bytes,
            "limit_bytes": info.limit_bytes,
        }
        text = "\n".join(
            [
                f"folder:  {info.folder}",
                f"enabled: {'yes' if info.enabled else 'no (CONVFORGE_CACHE=0)'}",
                f"entries: {info.entries}",
                f"size:    {info.total_bytes / 2**20:.1f} MiB of {info.limit_bytes / 2**20:.0f} MiB",
            ]
        )
    print(json.dumps(result, indent=2) if args.json else text)
    return 0
