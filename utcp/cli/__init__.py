"""The ``utcp`` command line: one module per subcommand, each with ``add_parser(subparsers)``
that registers its arguments and sets ``func`` (called with the parsed namespace, returning
the exit status). ``utcp.__main__`` lists them."""
