"""Convert VOC2010 + trainval_merged.json to Pascal Context label maps (datasets/README.md, 'Pascal Context').

    python datasets/prepare_pascal_context.py $CARBENCH_DATASETS/VOCdevkit/VOC2010

The logic lives in `carbench.data.convert_pascal_context` (tested there); this file is the one command.
"""

from carbench.data.convert_pascal_context import main

if __name__ == "__main__":
    main()
