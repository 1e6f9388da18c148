"""Run by tests/test_zygote.py as a zygote's child: prints what the child sees, as JSON.

Importing it does nothing: it reports only when run as ``__main__``."""

import json
import os
import sys
import time

OURS = ("gateway", "addons", "recordings", "review_ui")


def main() -> int:
    time.sleep(float(os.environ.get("ZYGOTE_PROBE_SLEEP", "0")))
    print("to stderr", file=sys.stderr)
    print(json.dumps({
        "stdin": sys.stdin.read(),
        "ours_loaded": sorted(name for name in sys.modules if name.split(".", 1)[0] in OURS),
        "mitmproxy_loaded": "mitmproxy.http" in sys.modules,
        "cwd": os.getcwd(),
        "argv": sys.argv[1:],
        "env": os.environ.get("ZYGOTE_PROBE"),
        "path0": sys.path[0],
    }))
    return int(os.environ.get("ZYGOTE_PROBE_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
