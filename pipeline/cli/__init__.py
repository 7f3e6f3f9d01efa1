"""The `tocsin` command-line interface."""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
