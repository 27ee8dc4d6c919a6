"""Coverage-guided fuzzing of every parser that takes outside bytes (issue 14).

``python -m fuzz TARGET --runs N`` runs one target under atheris (libFuzzer).
Each target takes bytes and must either accept them or refuse them with the
error its parser documents (a ``RoadsideError``, or ``ValueError`` where that is
the documented refusal); anything else is a crash. Crashes found become
regression inputs under ``fuzz/regressions/TARGET/`` which the tests replay.
Not part of the wheel.
"""
