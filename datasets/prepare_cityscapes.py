"""Prepare cityscapes (datasets/README.md): `python datasets/prepare_cityscapes.py --help`.

The logic lives in `carbench.data.convert_cityscapes` (tested there); this file is the one command.
"""

from carbench.data.convert_cityscapes import main

if __name__ == "__main__":
    main()
