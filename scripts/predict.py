"""Classify images with a model saved by `train.py --export DIR`: `python scripts/predict.py
DIR images.idx.gz photo.png array.npy` (see --help)."""

import sys

from fastconv.predict import main

if __name__ == "__main__":
    sys.exit(main())
