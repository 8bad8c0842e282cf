"""``convforge aot``: ahead-of-time CUDA builds of the GPU suite for one architecture."""

from __future__ import annotations

import argparse
import json
import re

HELP = "compile the GPU suite for a CUDA architecture (no GPU needed): libraries + fatbins"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder for <name>.so, <name>.fatbin, manifest.json")
    parser.add_argument("--arch", default="sm_90", help="CUDA architecture, e.g. sm_80, sm_90")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these workloads only")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def run(args: argparse.Namespace) -> int:
    from convforge.export.aot import export_suite
    from convforge.workloads import GPU, select

    gpu_suite = select(GPU)

    if not re.fullmatch(r"sm_\d+a?", args.arch):
        raise ValueError(f"--arch must look like sm_90, got {args.arch!r}")
    known = {w.name: w for w in gpu_suite}
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        raise ValueError(f"--only names unknown workloads {unknown}; known: {sorted(known)}")
    chosen = [known[name] for name in args.only] if args.only else list(gpu_suite)
    manifest = export_suite(args.out_dir, {"kind": "cuda", "arch": args.arch}, chosen)
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        for entry in manifest["workloads"]:
            registers = max(r["registers"] for r in entry["ptxas"])
            print(
                f"{entry['name']}: {entry['library']} + {entry['fatbin']} ({registers} registers)"
            )
    return 0
