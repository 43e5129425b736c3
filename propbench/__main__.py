import signal
import sys


def _interrupted_at_start(signum: int, frame: object) -> None:
    sys.stderr.write("propbench: error: interrupted before anything was written\n")
    raise SystemExit(130)


signal.signal(signal.SIGINT, _interrupted_at_start)  # until the CLI installs its own handler

from propbench.cli import main  # noqa: E402

main()
