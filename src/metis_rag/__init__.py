"""Metis: a fast, frugal RAG server."""

__version__ = "0.1.0"
