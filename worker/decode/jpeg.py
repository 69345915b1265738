"""Repairs of JPEG streams that real modalities send and IJG (and so dcmtk) decodes anyway.

Pure bytes in, bytes out: the decoder asks for a repair only after a plugin refused a frame.
"""

from __future__ import annotations

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline, extended sequential (Huffman): ITU T.81 B.1.1.3
_NO_LENGTH = {0x01, _SOI, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: markers without a segment


def fix_sequential_scan_end(frame: bytes) -> bytes | None:
    """``frame`` with every sequential scan's spectral selection end (Se) set from 0 to 63.

    A sequential DCT scan covers all 64 coefficients, so its SOS header must say Ss = 0,
    Se = 63 (ITU T.81 B.2.3). Some 12-bit encoders write Se = 0; pylibjpeg's libjpeg refuses
    such a scan, while IJG warns ("Invalid SOS parameters for sequential JPEG") and decodes it
    as Se = 63. Returns None when the frame is not such a stream or cannot be walked.
    """
    data = bytearray(frame)
    if data[:2] != b"\xff\xd8":
        return None
    at, sequential, fixed = 2, False, False
    while at + 1 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == _EOI:
            break
        if marker in _NO_LENGTH:
            at += 2
            continue
        if at + 4 > len(data):
            return None
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in _SEQUENTIAL_SOF:
            sequential = True
        elif marker == _SOS:
            components = data[at + 4] if at + 4 < len(data) else 0
            ss = at + 5 + 2 * components
            if not sequential or ss + 1 >= end or end > len(data):
                return None
            if data[ss] == 0 and data[ss + 1] == 0:
                data[ss + 1] = 63
                fixed = True
            end = _entropy_coded_end(data, end)
        at = end
    return bytes(data) if fixed else None


def _entropy_coded_end(data: bytearray, at: int) -> int:
    """Where the scan's entropy-coded data starting at ``at`` ends: the next marker that is
    neither a stuffed 0xFF00 nor a restart marker."""
    while (at := data.find(b"\xff", at)) >= 0 and at + 1 < len(data):
        following = data[at + 1]
        if following != 0x00 and following != 0xFF and not 0xD0 <= following <= 0xD7:
            return at
        at += 1 if following == 0xFF else 2
    return len(data)
