"""The decoder over a table of reference files: real DICOMs, generated files, broken files."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import BASIC_TEXT_SR, gradient, make_dicom
from hostile_files import (
    JPEG_XL,
    dicom_bytes,
    dicom_with_syntax,
    edit_element,
    encode,
    flip_byte,
    grey,
    jpeg_bytes,
    jpeg_claiming,
    png16_bytes,
    png_bytes,
    png_claiming,
    rle_overrun,
)
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from worker.decode import Limits, decode_file
from worker.decode.jpeg import fix_sequential_scan_end
from worker.decode.sniff import FileKind, sniff
from worker.errors import DecodeError, ReadError

# name, transfer syntax, photometric, (rows, cols) -- from ../shared/data/dicom/manifest.csv
REAL_DICOMS = [
    ("0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm", "JPEG Baseline (Process 1)", "MONOCHROME2", (1024, 1024)),
    ("00569f44-917d-4c86-a842-81832af98c30.dcm", "JPEG Baseline (Process 1)", "MONOCHROME2", (1024, 1024)),
    ("CR-MONO1-10-chest.dcm", "Implicit VR Little Endian", "MONOCHROME1", (440, 440)),
    ("WG04_RG1_J2KI.dcm", "JPEG 2000 Image Compression", "MONOCHROME1", (1955, 1841)),
    ("WG04_RG1_JLSN.dcm", "JPEG-LS Lossy (Near-Lossless) Image Compression", "MONOCHROME1", (1955, 1841)),
]


@pytest.mark.parametrize(("name", "syntax", "photometric", "shape"), REAL_DICOMS)
def test_real_dicoms_decode_to_full_range_grey(dicom_dir: Path, name, syntax, photometric, shape):
    decoded = decode_file(dicom_dir / name)
    assert decoded.format == "DICOM"
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == shape
    assert (decoded.height, decoded.width) == shape
    assert decoded.dicom.transfer_syntax == syntax
    assert decoded.dicom.photometric == photometric
    assert decoded.dicom.modality == "CR"
    assert decoded.pixels.max() - decoded.pixels.min() > 150  # a real picture, not a flat field


def test_every_real_dicom_decodes(dicom_dir: Path):
    files = sorted(dicom_dir.glob("*.dcm"))
    assert len(files) == 19
    for f in files:
        assert decode_file(f).pixels.ndim == 2


def test_monochrome1_real_file_is_displayed_with_bone_bright(dicom_dir: Path):
    """CR-MONO1 stores bone as low values; after inversion the spine (centre) is brighter than lungs."""
    px = decode_file(dicom_dir / "CR-MONO1-10-chest.dcm").pixels.astype(float)
    h, w = px.shape
    spine = px[h // 3 : 2 * h // 3, w // 2 - 10 : w // 2 + 10].mean()
    lung = px[h // 3 : 2 * h // 3, w // 5 : w // 5 + 20].mean()
    assert spine > lung + 20


def test_jpeg2000_and_jpegls_of_same_radiograph_agree(dicom_dir: Path):
    a = decode_file(dicom_dir / "WG04_RG1_J2KI.dcm").pixels.astype(int)
    b = decode_file(dicom_dir / "WG04_RG1_JLSN.dcm").pixels.astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_monochrome1_and_monochrome2_of_same_image_decode_identically(tmp_path: Path):
    img = gradient(bits=12)
    top = 2**12 - 1
    mono2 = make_dicom(tmp_path / "m2.dcm", img, window=(1500, 2000))
    mono1 = make_dicom(
        tmp_path / "m1.dcm",
        (top - img).astype(np.uint16),
        photometric="MONOCHROME1",
        window=(top - 1500, 2000),
    )
    a, b = decode_file(mono2).pixels, decode_file(mono1).pixels
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # rounding at the window's half-step
    assert a.min() == 0 and a.max() == 255


def test_rescale_is_applied_before_the_window(tmp_path: Path):
    img = gradient(bits=12)
    # slope 2, intercept -1000: modality values -1000..7190. Window in modality units.
    plain = make_dicom(tmp_path / "a.dcm", img, window=(2095, 4095))
    rescaled = make_dicom(
        tmp_path / "b.dcm", img, slope=2.0, intercept=-1000, window=(2 * 2095 - 1000, 2 * 4095)
    )
    a, b = decode_file(plain).pixels.astype(int), decode_file(rescaled).pixels.astype(int)
    assert np.abs(a - b).max() <= 1


def test_window_clips_outside_values(tmp_path: Path):
    img = gradient(bits=12)
    narrow = decode_file(make_dicom(tmp_path / "w.dcm", img, window=(2048, 400))).pixels
    assert (narrow == 0).mean() > 0.2 and (narrow == 255).mean() > 0.2


def test_no_window_uses_full_range_and_16_bit_values(tmp_path: Path):
    img = gradient(bits=16)
    decoded = decode_file(make_dicom(tmp_path / "f.dcm", img, bits_stored=16)).pixels
    assert decoded.min() == 0 and decoded.max() == 255
    expected = np.rint((img - img.min()) / (img.max() - img.min()) * 255)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_rle_and_bare_implicit_files(tmp_path: Path):
    img = gradient()
    reference = decode_file(make_dicom(tmp_path / "ref.dcm", img)).pixels
    rle = decode_file(make_dicom(tmp_path / "rle.dcm", img, syntax=RLELossless))
    bare = decode_file(make_dicom(tmp_path / "bare.dcm", img, syntax=ImplicitVRLittleEndian, file_meta=False))
    assert rle.dicom.transfer_syntax == "RLE Lossless"
    assert bare.dicom.transfer_syntax == "Implicit VR Little Endian"
    np.testing.assert_array_equal(rle.pixels, reference)
    np.testing.assert_array_equal(bare.pixels, reference)


def _with(path: Path, **attributes) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_presentation_lut_shape_decides_the_polarity(tmp_path: Path):
    """Regression: PresentationLUTShape was ignored, so a MONOCHROME2 image marked INVERSE came
    out inverted compared with dcmtk. INVERSE is one inversion (MONOCHROME1 + INVERSE is the DX
    standard's pair, not two inversions); an explicit IDENTITY is none, as dcmtk renders it."""
    img, top = gradient(bits=12), 2**12 - 1

    def decode(name: str, photometric: str, shape: str | None) -> np.ndarray:
        stored, center = (img, 1500) if photometric == "MONOCHROME2" else (top - img, top - 1500)
        path = make_dicom(
            tmp_path / name, stored.astype(np.uint16), photometric=photometric, window=(center, 2000)
        )
        return decode_file(_with(path, PresentationLUTShape=shape) if shape else path).pixels.astype(int)

    plain = decode("m2.dcm", "MONOCHROME2", None)
    assert np.abs(decode("m2-inverse.dcm", "MONOCHROME2", "INVERSE") - (255 - plain)).max() <= 1
    assert np.abs(decode("m2-identity.dcm", "MONOCHROME2", "IDENTITY") - plain).max() <= 1
    assert np.abs(decode("m1-inverse.dcm", "MONOCHROME1", "INVERSE") - plain).max() <= 1
    assert np.abs(decode("m1-identity.dcm", "MONOCHROME1", "IDENTITY") - (255 - plain)).max() <= 1


def test_window_in_units_of_a_fractional_slope_is_not_a_threshold(tmp_path: Path):
    """Regression: with RescaleSlope 5e-6 the window is 0.01 wide in modality units; a width
    below 1 was taken as a threshold and the image refused as blank. It is the same window as
    (2000, 2000) on the stored values."""
    img = gradient(bits=12)
    slope, intercept = 5e-6, -0.002
    stored_units = make_dicom(tmp_path / "a.dcm", img, window=(2000, 2000))
    modality_units = make_dicom(
        tmp_path / "b.dcm",
        img,
        slope=slope,
        intercept=intercept,
        window=(2000 * slope + intercept, 2000 * slope),
    )
    a, b = decode_file(stored_units).pixels.astype(int), decode_file(modality_units).pixels.astype(int)
    assert np.abs(a - b).max() <= 1
    assert (b == 0).any() and (b == 255).any() and len(np.unique(b)) > 200


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # bundled, never downloaded


def test_jpeg_extended_whose_scan_header_says_se_0_is_decoded():
    """Regression: NEMA's NM1_JPLY (pydicom's JPEG-lossy.dcm), a 12-bit JPEG whose start of scan
    says Se = 0 instead of 63, was refused as corrupt by pylibjpeg; IJG and dcmtk decode it.
    JPGExtended.dcm is the same stream with the header fixed."""
    broken = decode_file(PYDICOM_FILES / "JPEG-lossy.dcm")
    fixed = decode_file(PYDICOM_FILES / "JPGExtended.dcm")
    assert broken.dicom.transfer_syntax == "JPEG Extended (Process 2 and 4)"
    np.testing.assert_array_equal(broken.pixels, fixed.pixels)


def test_scan_header_repair_never_raises_on_damaged_streams():
    ds = pydicom.dcmread(PYDICOM_FILES / "JPEG-lossy.dcm")
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    repaired = fix_sequential_scan_end(frame)
    assert repaired is not None and len(repaired) == len(frame) and repaired != frame
    assert fix_sequential_scan_end(repaired) is None  # nothing left to repair
    rng = np.random.default_rng(0)
    for cut in range(0, 700, 7):
        fix_sequential_scan_end(frame[:cut])
    for _ in range(200):
        noisy = bytearray(frame[:700])
        noisy[rng.integers(2, 700)] = rng.integers(0, 256)
        result = fix_sequential_scan_end(bytes(noisy))
        assert result is None or len(result) == 700
    assert fix_sequential_scan_end(b"") is None and fix_sequential_scan_end(b"\xff\xd8\xff") is None


def test_dicom_identifiers_are_reported(tmp_path: Path):
    decoded = decode_file(make_dicom(tmp_path / "id.dcm", gradient()))
    assert decoded.dicom.sop_instance_uid and decoded.dicom.study_instance_uid
    assert decoded.dicom.sop_class == "Computed Radiography Image Storage"
    assert decoded.dicom.patient_id == "TEST-ONLY"


# --- PNG and JPEG -----------------------------------------------------------------


def _save(tmp_path: Path, name: str, img: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("grey.png", lambda: grey()),
        ("rgb.png", lambda: grey().convert("RGB")),
        ("rgba.png", lambda: grey().convert("RGBA")),
        ("palette.png", lambda: grey().convert("P")),
        ("bilevel.png", lambda: grey().convert("1")),
        ("grey.jpg", lambda: grey()),
        ("rgb.jpg", lambda: grey().convert("RGB")),
        ("cmyk.jpg", lambda: grey().convert("CMYK")),
    ],
)
def test_raster_modes_become_8_bit_grey(tmp_path: Path, name: str, make: Callable[[], Image.Image]):
    decoded = decode_file(_save(tmp_path, name, make()))
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (80, 96)
    assert decoded.format == ("PNG" if name.endswith("png") else "JPEG")
    row = decoded.pixels[40].astype(int)
    assert row[0] < 40 and row[-1] > 215  # the dark-to-light ramp survives


def test_16_bit_png_uses_its_full_range(tmp_path: Path):
    ramp = np.tile(np.linspace(0, 65535, 100).astype(np.uint16), (50, 1))
    path = tmp_path / "deep.png"
    path.write_bytes(png16_bytes())
    decoded = decode_file(path).pixels
    np.testing.assert_array_equal(decoded, np.rint(ramp / 65535 * 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path: Path):
    img = grey((120, 60))  # landscape ramp
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_file(_save(tmp_path, "rot.jpg", img, exif=exif))
    assert decoded.pixels.shape == (120, 60)


def test_large_jpeg_is_decoded_at_reduced_size(full_res_dir: Path):
    path = max((full_res_dir / "train" / "NORMAL").glob("*.jpeg"), key=lambda p: p.stat().st_size)
    full = decode_file(path)
    reduced = decode_file(path, min_side=256)
    assert min(reduced.pixels.shape) >= 256
    assert reduced.pixels.size * 4 <= full.pixels.size
    assert (reduced.width, reduced.height) == (full.width, full.height)  # facts of the stored image


# --- broken and hostile files -----------------------------------------------------


BROKEN = [
    ("empty.png", lambda: b"", "empty file (0 bytes)"),
    ("notes.png", lambda: b"patient notes, not an image\n", "not an image: the file is text"),
    ("truncated.jpg", lambda: jpeg_bytes()[:400], "truncated JPEG"),
    ("truncated.png", lambda: png_bytes()[:3000], "truncated PNG"),
    ("huge.jpg", lambda: jpeg_claiming(65000, 65000), "image too large: 65000x65000"),
    ("bomb.png", lambda: png_claiming(40000, 40000), "image too large: 40000x40000"),
    ("random.bin", lambda: bytes(range(256)) * 4, "not an image: unknown file format"),
    ("scan.gif", lambda: b"GIF89a" + bytes(100), "unsupported file format: GIF"),
    ("scan.tif", lambda: b"II*\x00" + bytes(100), "unsupported file format: TIFF"),
]


@pytest.mark.parametrize(("name", "content", "reason"), BROKEN)
def test_broken_files_raise_a_clear_decode_error(tmp_path: Path, name: str, content, reason: str):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(DecodeError) as err:
        decode_file(path)
    assert str(err.value).startswith(reason)


def test_jpeg_named_png_is_decoded_by_content(tmp_path: Path):
    path = tmp_path / "actually-a-jpeg.png"
    path.write_bytes(jpeg_bytes())
    assert decode_file(path).format == "JPEG"


def test_tiny_images_are_refused(tmp_path: Path):
    with pytest.raises(DecodeError, match="image too small: 8x8"):
        decode_file(_save(tmp_path, "icon.png", grey((8, 8))))


def test_blank_dicom_is_refused(tmp_path: Path):
    flat = np.full((64, 64), 700, dtype=np.uint16)
    with pytest.raises(DecodeError, match="blank"):
        decode_file(make_dicom(tmp_path / "flat.dcm", flat))


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: encode(Image.new("L", (64, 64)), "PNG"),
        lambda tmp: encode(Image.new("L", (64, 64), 128), "JPEG"),
        lambda tmp: png_claiming(4000, 3000),  # a bomb within the limits: 12 Mpx of zeros
        lambda tmp: dicom_bytes(tmp, np.full((64, 64), 700, dtype=np.uint16), window=(600, 400)),
    ],
    ids=["png", "jpeg", "png-bomb", "dicom-windowed"],
)
def test_blank_images_of_every_format_are_refused(tmp_path: Path, make):
    """A flat image has nothing to screen; it used to be screened unless it was a DICOM."""
    path = tmp_path / "flat"
    path.write_bytes(make(tmp_path))
    with pytest.raises(DecodeError, match=r"^image is blank: every pixel is \d+$"):
        decode_file(path)


@pytest.mark.parametrize(
    ("syntax", "reason"),
    [
        (JPEG_XL, f"DICOM transfer syntax {JPEG_XL} ("),  # its name once pynetdicom is imported
        (
            "1.2.840.10008.1.2.4.100",
            "DICOM transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level) cannot be "
            "decoded here",
        ),
        (
            "1.2.840.10008.1.2.4.50",
            "corrupt DICOM pixel data (JPEG Baseline (Process 1)): pillow: cannot identify image file",
        ),
        ("1.2.840.10008.1.2.4.91", "corrupt DICOM pixel data (JPEG 2000 Image Compression): pylibjpeg:"),
    ],
)
def test_transfer_syntax_without_decoder_is_told_apart_from_corrupt_data(tmp_path: Path, syntax, reason):
    """Regression: a syntax nothing can decode was "corrupt", and corrupt JPEG data was
    "cannot be decoded here"; pydicom's object addresses made every reason unique."""
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_with_syntax(tmp_path, syntax))
    with pytest.raises(DecodeError) as err:
        decode_file(path)
    assert str(err.value).startswith(reason)
    assert " at 0x" not in str(err.value)


def test_empty_pixel_data_is_refused_with_a_plain_reason(tmp_path: Path):
    """Regression: a zero-length Pixel Data element was "object of type 'NoneType' has no len()"."""
    path = _with(make_dicom(tmp_path / "empty.dcm", gradient()), PixelData=b"")
    with pytest.raises(DecodeError, match=r"^DICOM has no pixel data \(Pixel Data is empty\)"):
        decode_file(path)


def test_a_plugin_failure_is_one_warning_line(tmp_path: Path, caplog):
    """Regression: pydicom logged each failing plugin's traceback at ERROR, many journald lines
    per bad file; now the decoder says it in one WARNING line, with the file and the reason."""
    path = tmp_path / "bad-j2k.dcm"
    path.write_bytes(dicom_with_syntax(tmp_path, "1.2.840.10008.1.2.4.91"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DecodeError, match="pylibjpeg"):
        decode_file(path)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert line.name == "worker.decode.dicom"
    assert line.getMessage().startswith("bad-j2k.dcm: no plugin could decode its JPEG 2000 Image Compression")
    assert "\n" not in line.getMessage()


def test_non_image_and_multiframe_dicoms_are_refused(tmp_path: Path):
    sr = make_dicom(tmp_path / "sr.dcm", None, sop_class=BASIC_TEXT_SR)
    multi = make_dicom(tmp_path / "multi.dcm", gradient(), frames=4)
    with pytest.raises(DecodeError, match=r"DICOM has no pixel data \(Basic Text SR Storage\)"):
        decode_file(sr)
    with pytest.raises(DecodeError, match=r"multi-frame DICOM \(4 frames\)"):
        decode_file(multi)


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("name", ["00569f44-917d-4c86-a842-81832af98c30.dcm", "CR-MONO1-10-chest.dcm"])
def test_truncated_dicom_is_refused(tmp_path: Path, dicom_dir: Path, name: str):
    data = (dicom_dir / name).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"^truncated DICOM"):
        decode_file(path)


def test_dimension_limits_come_from_the_caller(tmp_path: Path):
    path = _save(tmp_path, "g.png", grey((200, 100)))
    with pytest.raises(DecodeError, match="image too large: 200x100"):
        decode_file(path, limits=Limits(max_pixels=10_000))


def test_directory_and_missing_file(tmp_path: Path):
    folder = tmp_path / "x.png"
    folder.mkdir()
    with pytest.raises(DecodeError, match="directory"):
        decode_file(folder)
    with pytest.raises(ReadError, match="No such file"):
        decode_file(tmp_path / "gone.png")


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(20), FileKind.PNG),
        (b"\xff\xd8\xff\xe0" + bytes(20), FileKind.JPEG),
        (bytes(128) + b"DICM" + bytes(4), FileKind.DICOM),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", FileKind.DICOM),  # bare, explicit VR
        (b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840", FileKind.DICOM),  # bare, implicit VR
    ],
)
def test_sniff_by_magic_bytes(head: bytes, kind: FileKind):
    assert sniff(head) is kind


# --- findings of bench/fuzz_decoder.py, kept as regressions ----------------------------


def _explicit(tmp: Path) -> bytes:
    return dicom_bytes(tmp, gradient(), slope=2.0, intercept=-5)


DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _bad_offset_table(tmp: Path) -> bytes:
    data = dicom_with_syntax(tmp, "1.2.840.10008.1.2.4.91")
    item = data.index(b"\xfe\xff\x00\xe0")  # the basic offset table, empty: claim 740 MB of it
    return data[: item + 4] + struct.pack("<I", 0x2E300004) + data[item + 8 :]


FUZZ_FINDINGS = [
    ("unknown-vr", lambda t: edit_element(_explicit(t), 0x0020, 0x000D, vr=b"Ud"), ": Unknown Value Repr"),
    (
        "ul-of-3-bytes",
        lambda t: edit_element(_explicit(t), 0x0028, 0x0010, vr=b"UL", value=b"@\0\0"),
        ": Expected",
    ),
    (
        "two-rows",
        lambda t: edit_element(_explicit(t), 0x0028, 0x0010, value=struct.pack("<HH", 9, 9)),
        ": int()",
    ),
    ("text-slope", lambda t: edit_element(_explicit(t), 0x0028, 0x1053, vr=b"LO"), ": ufunc 'multiply'"),
    ("text-intercept", lambda t: edit_element(_explicit(t), 0x0028, 0x1052, vr=b"LO"), ": ufunc 'add'"),
    ("offset-table", _bad_offset_table, ": unpack requires a buffer"),
    ("rle-overrun", rle_overrun, " pixel data (RLE Lossless): pydicom: The decoded RLE segment"),
    ("not-deflated", lambda t: edit_element(dicom_bytes(t), 0x0002, 0x0010, value=DEFLATED), ": Error -3"),
]


@pytest.mark.parametrize(
    ("make", "detail"), [c[1:] for c in FUZZ_FINDINGS], ids=[c[0] for c in FUZZ_FINDINGS]
)
def test_malformed_dicom_elements_are_decode_errors(tmp_path: Path, make, detail: str):
    """Regression: pydicom parses elements lazily, and these escaped as TypeError,
    NotImplementedError, BytesLengthException, numpy's UFuncTypeError or struct.error; the
    RLE one as pylibjpeg-rle's PanicException, a BaseException that would stop the daemon;
    a Deflated syntax over data that is not deflated as zlib.error."""
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(make(tmp_path))
    with pytest.raises(DecodeError) as err:
        decode_file(path)
    assert str(err.value).startswith("corrupt DICOM" + detail)
    assert len(str(err.value)) <= 250


@pytest.mark.filterwarnings("ignore:The number of bytes of pixel data is sufficient to contain 2 frames")
def test_frames_without_number_of_frames_are_multi_frame(tmp_path: Path):
    """Regression: twice the pixel data and no NumberOfFrames decoded to a 3-D array."""
    path = make_dicom(tmp_path / "two.dcm", np.stack([gradient(), gradient()]))
    with pytest.raises(DecodeError, match=r"^multi-frame DICOM \(2 frames\)"):
        decode_file(path)


_ISOLATED_DECODE = """
import resource, sys, time, warnings
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))
warnings.simplefilter("ignore")
from worker.decode import decode_file
from worker.errors import DecodeError
start = time.monotonic()
try:
    decode_file(sys.argv[1])
    print("decoded")
except DecodeError as exc:
    print(exc)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.monotonic() - start, int(hwm.split()[1]) // 1024)  # ru_maxrss would include the parent's
"""


def test_jpeg_dicom_that_made_libjpeg_allocate_without_bound(tmp_path: Path, dicom_dir: Path):
    """Regression: one byte of a real RSNA file's JPEG stream changed (0x0a -> 0xff) made
    pylibjpeg's libjpeg allocate until the machine ran out of memory (23 GB). Pillow refuses
    it at once. Run in a child process capped at 2 GiB of address space (where libjpeg
    gives up early and returns an image), so a regression fails without taking the machine down."""
    data = (dicom_dir / "00aecb01-a116-45a2-956c-08d2fa55433f.dcm").read_bytes()
    assert data[41878] == 0x0A
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(flip_byte(data, 41878, 0xFF))
    child = subprocess.run(
        [sys.executable, "-c", _ISOLATED_DECODE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    reason, numbers = child.stdout.strip().splitlines()
    seconds, peak_mib = map(float, numbers.split())
    assert reason.startswith("corrupt DICOM pixel data (JPEG Baseline (Process 1))")
    assert seconds < 5 and peak_mib < 500
