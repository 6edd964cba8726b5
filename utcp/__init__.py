"""utcp: full TCP semantics in user space over UDP datagrams, for trio."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
