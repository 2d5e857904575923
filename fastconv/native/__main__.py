"""`python -m fastconv.native`: build the fused op now (scripts/setup.sh does)."""

import sys

from fastconv.importing import import_tensorflow

import_tensorflow()  # quietly, before fastconv.native imports it

from fastconv.native import main  # noqa: E402

sys.exit(main())
