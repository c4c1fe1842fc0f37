#!/usr/bin/env python3
"""Container health probe: exit 0 when the daemon answers 200 on its readiness endpoint, else 1.

Standard library only, so the same probe works in every image (none of them ships curl). The port
and path follow the entrypoint's environment: EDGETL_PORT (8000), EDGETL_HEALTH_PATH
(/v2/health/ready).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("EDGETL_PORT", "8000")
    path = os.environ.get("EDGETL_HEALTH_PATH", "/v2/health/ready")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"healthcheck: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
