"""This project's own verification drivers: not API, may change at any release.

The public kit for testing a daemon against simulated hosts is
:mod:`actorlock.testing`. What lives here is how actorlock checks itself,
built on that kit: the pair simulator and the exhaustive explorer of the
migration handoff, the random scenario generator behind ``actorlock sim``,
the multi-process chaos driver behind ``actorlock chaos``, and the
sensitivity runner that undoes fixes to prove the scenarios would catch them.
The public kit never imports this package.
"""
