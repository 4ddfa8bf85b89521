"""Print the README's benchmark tables (Markdown) from a ``fastrnn bench --json`` file
(:mod:`fastrnn.bench.tables`).

    python bench/readme_table.py bench/results/cpu.json
    python bench/readme_table.py --busy bench/results/busy.json   # the load-test table
"""
from fastrnn.bench.tables import cli

if __name__ == "__main__":
    cli()
