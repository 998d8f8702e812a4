"""Convert COCO-Stuff-164k stuffthingmaps to COCO-Object label maps (datasets/README.md, 'COCO-Object').

    python datasets/prepare_coco_object.py $CARBENCH_DATASETS/coco_stuff164k

The logic lives in `carbench.data.convert_coco_object` (tested there); this file is the one command.
"""

from carbench.data.convert_coco_object import main

if __name__ == "__main__":
    main()
