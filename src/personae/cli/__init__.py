"""The command line: parse, call the core, render its events. No logic of its own."""
