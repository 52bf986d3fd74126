"""The benchmark against Nchan and the naive design: run it with ``python -m bench.run``."""
