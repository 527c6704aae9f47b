"""Docker HEALTHCHECK for either role: alive when the API's /healthz (STEADYGEN_PORT) or a
worker's /healthz (STEADYGEN_METRICS_PORT) answers 200. Exit 0 healthy, 1 not."""

import os
import sys
import urllib.request

for name, default in (("STEADYGEN_PORT", "7860"), ("STEADYGEN_METRICS_PORT", "9400")):
    url = f"http://127.0.0.1:{os.environ.get(name, default)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        continue
sys.exit(1)
