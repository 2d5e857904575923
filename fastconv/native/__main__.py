"""`python -m fastconv.native`: build the fused op now (scripts/setup.sh does), even where an
earlier compile failed, and say how it went."""

import os
import sys
import time

from fastconv.native import SWITCH, NativeUnavailable, build, unavailable


def main() -> int:
    """Builds (or finds) the library and says so; exit 1 with the reason where it cannot."""
    start = time.perf_counter()
    why_not = None
    if os.environ.get(SWITCH, "1") != "0":
        try:
            build(verbose=True, retry=True)
        except NativeUnavailable as error:  # told here, not compiled again by _load
            why_not = str(error)
    why_not = why_not or unavailable()
    if why_not:
        print(f"fastconv.native: not available, TensorFlow's own ops will be used: {why_not}")
        return 1
    print(f"fastconv.native: ready in {time.perf_counter() - start:.1f} s")
    return 0


sys.exit(main())
