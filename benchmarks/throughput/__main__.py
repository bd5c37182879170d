"""python -m benchmarks.throughput: see the package docstring (--help)."""

from benchmarks.throughput.cli import main

main()
