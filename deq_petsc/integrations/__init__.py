"""Bridges to other DEQ libraries (optional dependencies, imported only on use)."""
