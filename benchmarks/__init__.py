"""cnn_jax's benchmarks: one command runs every suite and writes one results file.

    python -m benchmarks [--quick] [--suite ops|pool|transpose|models|train] [--compare A B]

(``cnn-jax bench ...`` from a checkout is the same.) Suites are modules of this
package (``ops.py``, ``pool.py``, ``transpose.py``, ``models.py``, ``train.py``), each
with ``run(ctx) -> rows``; ``_harness.py`` times, ``_peers.py`` sets up the other
frameworks, ``_report.py`` writes the tables. Not part of the installed package.
Importing it imports no jax.
"""


def main(argv=None) -> int:
    """The command line of ``python -m benchmarks`` (argv without the program name)."""
    from benchmarks._cli import main as _main

    return _main(argv)
