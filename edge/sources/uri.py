"""Camera URLs without their secrets, for every log line, error and report.

``rtsp://user:secret@host/s1`` becomes ``rtsp://user:***@host/s1``, and a
password in a query (``?pwd=secret``) becomes ``pwd=***``. The userinfo ends
at the last ``@`` of the URL: passwords are often written with ``@`` or ``/``
unencoded, and masking a little too much is better than showing some of it.
"""

from __future__ import annotations

import re
from typing import Final

_USERINFO: Final = re.compile(r"""(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'"]*):[^\s'"]*@""")
_QUERY_SECRET: Final = re.compile(
    r"""([?&](?:password|passwd|pass|pwd|secret|token|key|auth)=)[^&#\s'"]*""", re.IGNORECASE
)


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
