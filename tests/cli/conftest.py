from cli_helpers import spawn

__all__ = ["spawn"]
