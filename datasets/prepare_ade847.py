"""Prepare ade847 (datasets/README.md): `python datasets/prepare_ade847.py --help`.

Converts the full ADE20K release to the layout `dataset=ade847` reads (or, with `--check-only`, checks a
folder converted earlier). The logic lives in `carbench.data.convert_ade847` (tested there); this file is
the one command.
"""

from carbench.data.convert_ade847 import main

if __name__ == "__main__":
    main()
