"""The command line: a thin layer over the library (see __main__.py for the command table)."""
