"""Choices and defaults that the command line shows in its help before anything heavy is imported.

A leaf: imports nothing. `reduce` and `images` take theirs from here.
"""

#: how a head's per-view outputs are combined per image (see reduce.py)
COMBINES = ("mean", "median", "max", "min")
#: Pillow's own decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970
