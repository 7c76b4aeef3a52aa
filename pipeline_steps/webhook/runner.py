"""`python -m pipeline_steps.webhook.runner RCFILE -- ARGV...`: run ARGV, then write its exit code to RCFILE.

The local webhook action starts deploys through this, in a process group of their own, so that a
receiver restarted meanwhile can still learn how the deploy it no longer parents ended.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(args: list[str]) -> int:
    """Run the command after `--`; the exit code (negative: killed by that signal) goes to RCFILE."""
    if len(args) < 3 or args[1] != "--":
        print("usage: runner RCFILE -- ARGV...", file=sys.stderr)
        return 2
    rc_path = Path(args[0])
    code = subprocess.run(args[2:], check=False).returncode
    from pipeline_steps.files import atomic_write

    atomic_write(rc_path, f"{code}\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
