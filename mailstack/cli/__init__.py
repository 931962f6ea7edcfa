"""The `mailstack` command (console script `mailstack`, and `python -m mailstack`).

commands.py is the table of every command; main.py builds the parser from it and runs one;
admin.py and fsck.py hold the commands that call the mailstore, local.py and healthcheck.py
those that run here; output.py what they share (errors, sizes, tables, JSON).
"""

from .admin import cmd_user_add
from .main import build_parser, main
from .output import accounts_table, format_table, human_size, parse_size

__all__ = ["accounts_table", "build_parser", "cmd_user_add", "format_table", "human_size", "main", "parse_size"]
