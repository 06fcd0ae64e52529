"""`make bench`: speed and memory figures, each printed beside the baseline it is compared with."""
