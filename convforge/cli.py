"""``convforge`` command line: one module per subcommand in ``convforge.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (exit code: 0 ok, 1 check failed, 2 bad input).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> module under convforge.commands
COMMANDS = {
    "shape": "shape",
    "compile": "compile",
    "run": "run",
    "check": "check",
    "report": "report",
    "tune": "tune",
    "aot": "aot",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"convforge.commands.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"convforge {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
