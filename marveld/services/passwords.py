"""The common passwords marveld refuses, shipped as package data.

``common-passwords.txt.gz`` beside this module is Django's list (19,640 passwords, made by
Royce Williams, BSD-3-Clause); its header says where it comes from and holds the licence.
"""

from __future__ import annotations

import gzip
from importlib.resources import files

COMMON_PASSWORDS_FILE = "common-passwords.txt.gz"


def load_common_passwords() -> frozenset[str]:
    """The shipped list, lower-cased; read once by whoever builds the UserService."""
    data = files(__package__ or "marveld.services").joinpath(COMMON_PASSWORDS_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("# "))
