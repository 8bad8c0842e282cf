"""``convforge`` command line: one module per subcommand in ``convforge.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (0 ok or agree, 1 disagree). Exceptions become exit codes here, in
one place (:func:`exit_code`): library code raises ValueError for bad input and never exits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

#: subcommand -> module under convforge.commands
COMMANDS = {
    "shape": "shape",
    "compile": "compile",
    "run": "run",
    "check": "check",
    "report": "report",
    "tune": "tune",
    "db": "db",
    "aot": "aot",
    "cache": "cache",
}

#: Exit codes of every command.
EXIT_OK = 0  # done; `check`: every output agrees with onnxruntime
EXIT_DISAGREE = 1  # `check`: an output differs from onnxruntime beyond the tolerance
EXIT_BAD_INPUT = 2  # bad argument, unreadable or unsupported model/library/file
EXIT_INTERNAL = 3  # a bug or an unexpected failure inside convforge or TVM
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

EPILOG = """\
exit status:
  0    ok (check: every output agrees with onnxruntime)
  1    check: an output disagrees with onnxruntime
  2    bad input or unsupported model: one line on stderr, no traceback
  3    internal error: one line on stderr; rerun with --debug for the traceback
  130  interrupted (Ctrl-C)
"""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input or unsupported model" (exit 2): ValueError (what
    convforge raises for bad input), missing or unreadable files, and ops TVM's importer
    does not implement (``tvm.error.OpNotImplemented`` is a NotImplementedError), and a
    missing install extra (:class:`convforge.extras.MissingExtraError`)."""
    from convforge.extras import MissingExtraError

    return (ValueError, OSError, NotImplementedError, MissingExtraError)


def one_line(err: BaseException) -> str:
    """``err``'s message as one line: its first line that is not traceback noise."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Traceback", "File ", "File\t"))]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def exit_code(err: BaseException) -> int:
    """The exit code for a command that raised ``err``."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, _bad_input_types()):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convforge", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an internal error (exit 3)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"convforge.commands.{module_name}")
        command = sub.add_parser(
            name, help=module.HELP, description=module.HELP, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS,
            help="print the traceback of an internal error (exit 3)",
        )  # fmt: skip
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see ``EPILOG``). Argument errors exit 2
    (argparse's own ``SystemExit(2)``)."""
    try:
        from convforge.tvm_import import import_tvm

        import_tvm()  # before the commands import it: the quick way
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("convforge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as err:
        code = exit_code(err)
        prefix = f"convforge {args.command}"
        if code == EXIT_INTERRUPTED:
            print(f"{prefix}: interrupted", file=sys.stderr)
        elif code == EXIT_BAD_INPUT:
            print(f"{prefix}: error: {one_line(err)}", file=sys.stderr)
        elif getattr(args, "debug", False):
            traceback.print_exc()
            print(f"{prefix}: internal error ({type(err).__name__})", file=sys.stderr)
        else:
            print(
                f"{prefix}: internal error: {type(err).__name__}: {one_line(err)} "
                f"(rerun with --debug for the traceback)",
                file=sys.stderr,
            )
        return code


if __name__ == "__main__":
    sys.exit(main())
