"""The `anonlab` command line, the roof of the project: nothing else imports it.

`main.py` builds the parser and dispatches; a command's options and handler are in the module of
its name (`train.py` for `anonlab train`); blur and serve are the runtime's own
(`serving/runtime/commands/`), since the runtime ships without the platform. The root schema of
params.yaml stays in `serving/params.py`: tests and benchmarks load projects without the CLI.
"""

from serving.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
