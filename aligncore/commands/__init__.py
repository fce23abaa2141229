"""The core's ``alignctl`` commands: one module per command, each a module-level click command.

``aligncore.cli`` registers them (``CORE_COMMANDS``); plugins add theirs through the
``register_commands`` hook. Modules here import click and ``aligncore.cli_options`` at the
top and everything heavy inside the command functions, so ``alignctl --help`` stays fast.
"""
