"""``python -m fuzz.worker TARGET LIBFUZZER_ARGS...``: one target under atheris, in this process.

libFuzzer ends the process when it is done, so ``python -m fuzz`` runs this as
a child and reads its final statistics.
"""

from __future__ import annotations

import logging
import sys

import atheris

# Roadside's modules (imported here first) are instrumented: their code paths guide the mutations.
with atheris.instrument_imports(include=["roadside", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]
    logging.disable(logging.CRITICAL)  # a refused input is logged by the product: not per execution here
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
