"""``python -m benchmarks [--quick] [--out DIR]``: see :mod:`benchmarks`."""
from benchmarks import main

raise SystemExit(main())
