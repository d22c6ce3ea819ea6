"""The container's HEALTHCHECK: exit 0 when the local server's /api/health answers 200.

    python -m metis_rag.devtools.healthcheck   # METIS_PORT, default 8000

The standard library only (no curl in a slim image), and no Settings: it must not parse the
whole configuration every few seconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthy(url: str, timeout_s: float = 4.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main() -> None:
    port = os.environ.get("METIS_PORT", "8000")
    sys.exit(0 if healthy(f"http://127.0.0.1:{port}/api/health") else 1)


if __name__ == "__main__":
    main()
