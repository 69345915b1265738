"""One list of what a malformed DICOM raises (``worker/malformed.py``), for both readers: a data
set pydicom cannot parse is a ``DecodeError`` for the decoder and a refusal (0xC000) for the
receiver, whichever kind of damage it is, and never an exception of pydicom's own."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from worker.decode import decode_file
from worker.errors import DecodeError
from worker.receive.store import CANNOT_UNDERSTAND, Refused, _parsed_uid

SIDE = 64


def image(damaged: bytes = b"", *, without: str = "") -> bytes:
    """A small CR film, with ``damaged`` (a raw element) after its pixel data, in place of
    its ``without`` attribute."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ComputedRadiographyImageStorage, generate_uid(), "CR"
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(SIDE * SIDE, dtype=np.uint8).tobytes()
    if without:
        delattr(ds, without)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + damaged


def element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


DAMAGED = {
    # pydicom's BytesLengthException, when the value is read
    "a US value of an odd length": image(element(0x0028, 0x0010, b"US", b"\x01\x02\x03"), without="Rows"),
    # NotImplementedError
    "an unknown VR": image(element(0x0028, 0x0010, b"ZZ", b"\x01\x02"), without="Rows"),
    # a UserWarning, which is an error where warnings are (as in these tests), else a ValueError
    "an IS value that is not a number": image(element(0x0028, 0x0008, b"IS", b"x1y2")),
}


def test_an_intact_film_passes_both_readers(tmp_path: Path):
    path = tmp_path / "good.dcm"
    path.write_bytes(image())
    assert decode_file(path).width == SIDE
    assert _parsed_uid(path)


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_data_set_that_does_not_parse_is_refused_by_the_decoder_and_the_receiver(tmp_path: Path, damage):
    path = tmp_path / "damaged.dcm"
    path.write_bytes(DAMAGED[damage])
    with pytest.raises(DecodeError, match=r"^corrupt DICOM: "):
        decode_file(path)
    with pytest.raises(Refused, match="data set does not parse") as refused:
        _parsed_uid(path)
    assert refused.value.status == CANNOT_UNDERSTAND
