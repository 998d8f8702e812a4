"""Prepare context459 (datasets/README.md): `python datasets/prepare_context459.py --help`.

The logic lives in `carbench.data.convert_context459` (tested there); this file is the one command.
"""

from carbench.data.convert_context459 import main

if __name__ == "__main__":
    main()
