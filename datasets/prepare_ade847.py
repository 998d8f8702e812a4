"""Check the ade847 folder (datasets/README.md): `python datasets/prepare_ade847.py <root>`.

Nothing to convert; the logic lives in `carbench.data.check_folder_dataset` (tested there).
"""

import sys

from carbench.data.check_folder_dataset import main

if __name__ == "__main__":
    main("ade847", sys.argv[1:])
