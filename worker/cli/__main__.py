"""``python -m worker.cli``: the same as the ``xray-worker`` command."""

from worker.cli.main import main

main()
