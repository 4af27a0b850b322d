"""The command line; each command's logic lives in its own module."""
