"""Prepare coco_stuff171 (datasets/README.md): `python datasets/prepare_coco_stuff171.py --help`.

The logic lives in `carbench.data.convert_coco_stuff` (tested there); this file is the one command.
"""

from carbench.data.convert_coco_stuff import main

if __name__ == "__main__":
    main()
