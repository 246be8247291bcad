"""Command-line tools (thin flag-parsing mains); a package only so they can share cli.py."""
