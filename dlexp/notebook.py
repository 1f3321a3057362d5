"""Whether dlexp runs in a Jupyter kernel, where bars, log lines and pictures are shown inline.

Standard library only, so the helper process that draws pictures (dlexp.tracking.background) can ask too.
"""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True in a Jupyter kernel (IPython's kernel app); False in a terminal IPython or plain Python."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config
