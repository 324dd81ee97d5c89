"""The faces and processes floor: the ``botsim`` command, the demo, the process bootstrap.

Above every other package of ours (``backend``'s ground, ``bots``, ``behavior_engine``);
nothing below imports it (``.importlinter``).

    cli.py        the ``botsim`` command (``python -m botsim`` runs it too)
    demo.py       ``botsim demo``: the whole loop in one process
    bootstrap.py  settings → logging → migrations → engine → cache → reads → Redis, once
"""
