"""Subcommands of the ``convforge`` CLI (see convforge.cli)."""
