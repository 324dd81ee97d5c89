"""``python -m botsim ...``: the same as the ``botsim`` command."""

from botsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
