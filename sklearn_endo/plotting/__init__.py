"""Display classes (matplotlib is imported only when plotting)."""

from ._cka import CKADisplay

__all__ = ["CKADisplay"]
