"""Classify images with a model saved by `train.py --export DIR`: `python scripts/predict.py
DIR images.idx.gz photo.png array.npy` (see --help)."""

from fastconv.predict import main_entry

if __name__ == "__main__":
    main_entry()
