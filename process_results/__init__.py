"""Scripts that turn results CSVs into tables, merged files and figures.

Each module is a command-line script, run from the repository root as
``python process_results/NAME.py``, with a ``main(argv=None) -> int`` that the
tests call directly.
"""
