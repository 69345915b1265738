"""What pydicom raises on a malformed data set, in one list for every reader of DICOM files.

pydicom parses values lazily, when they are first used, so a damaged data element shows up
as one of these where the value is read: bad lengths, unknown VRs, values of the wrong type or
multiplicity, broken fragments, a deflated data set that does not inflate. The decoder
(``worker/decode/dicom.py``) turns them into a ``DecodeError``; the DICOM receiver
(``worker/receive/store.py``, which may not import the decoder) refuses the instance with them.
A leaf: it imports nothing of the worker.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.errors import BytesLengthException, InvalidDicomError

MALFORMED: tuple[type[Exception], ...] = (
    InvalidDicomError,
    BytesLengthException,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    NotImplementedError,
    OverflowError,
    ZeroDivisionError,
    EOFError,
    struct.error,
    zlib.error,  # Deflated Explicit VR Little Endian
    UserWarning,  # what pydicom warns of on a broken data set, where warnings are errors
)
