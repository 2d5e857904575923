"""`python -m fastconv.native`: build the fused op now (scripts/setup.sh does)."""

import sys

from fastconv.native import main

sys.exit(main())
