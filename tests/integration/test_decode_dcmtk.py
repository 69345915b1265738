"""The decoder against dcmtk: every greyscale DICOM we accept must look as dcmj2pnm renders it.

dcmtk's ``dcmj2pnm`` (``dcml2pnm`` for JPEG-LS) is the reference: the modality LUT, the same
VOI choice as ``worker/decode/dicom.py`` (the first VOI LUT, else the first window, else the
image's minimum and maximum), MONOCHROME1 and Presentation LUT Shape, 8-bit output. Overlays
are left out (``-O``): the decoder never draws them.

The corpus: pydicom's bundled test files (read from the installed package, never downloaded),
the real files in ``dicom_dir``, and files generated here for defects real modalities send.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_dicom
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless

from worker.decode import decode_file
from worker.errors import DecodeError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MIN_CORRELATION = 0.99
MAX_MEAN_DIFFERENCE = 2.0  # grey levels

# pydicom's files that the decoder accepts as single-frame greyscale images.
PYDICOM_CORPUS = [
    "CT_small.dcm",
    "JPEG-lossy.dcm",  # NEMA's NM1_JPLY: a 12-bit JPEG whose scan header says Se = 0
    "JPGExtended.dcm",  # the same image with the header fixed
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "examples_overlay.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
]
# JPEG 2000, which dcmtk cannot decode (its JPEG 2000 codec is not free): compared with dcmtk's
# rendering of the same image in another encoding where there is one, else left out.
PYDICOM_JPEG2000_TWINS = {"MR_small_jp2klossless.dcm": "MR_small.dcm"}
PYDICOM_JPEG2000_LEFT_OUT = {"693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm"}
REAL_JPEG2000_TWINS = {"WG04_RG1_J2KI.dcm": "WG04_RG1_JLSN.dcm"}

REAL_FILES = [
    "0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm",
    "00313ee0-9eaa-42f4-b0ab-c148ed3241cd.dcm",
    "00322d4d-1c29-4943-afc9-b6754be640eb.dcm",
    "003d8fa0-6bf1-40ed-b54c-ac657f8495c5.dcm",
    "00436515-870c-4b36-a041-de91049b9ab4.dcm",
    "00569f44-917d-4c86-a842-81832af98c30.dcm",
    "006cec2e-6ce2-4549-bffa-eadfcd1e9970.dcm",
    "00704310-78a8-4b38-8475-49f4573b2dbb.dcm",
    "008c19e8-a820-403a-930a-bc74a4053664.dcm",
    "009482dc-3db5-48d4-8580-5c89c4f01334.dcm",
    "009eb222-eabc-4150-8121-d5a6d06b8ebf.dcm",
    "00a85be6-6eb0-421d-8acf-ff2dc0007e8a.dcm",
    "00aecb01-a116-45a2-956c-08d2fa55433f.dcm",
    "00c0b293-48e7-4e16-ac76-9269ba535a62.dcm",
    "00d7c36e-3cdf-4df6-ac03-6c30cdc8e85b.dcm",
    "00f08de1-517e-4652-a04f-d1dc9ee48593.dcm",
    "CR-MONO1-10-chest.dcm",
    "WG04_RG1_J2KI.dcm",
    "WG04_RG1_JLSN.dcm",
]


@pytest.fixture(scope="module")
def dcmtk() -> None:
    for tool in ("dcmj2pnm", "dcml2pnm", "dcmcjpeg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: these tests need dcmtk (apt-get install dcmtk)")


# --- generated files: the defects real modalities send ----------------------------------

TOP = 2**12 - 1


def phantom(rows: int = 256, cols: int = 224) -> np.ndarray:
    """A 12-bit chest-like picture: a bright body, two dark lungs, a spine, some noise."""
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    img = 2600 + 900 * y
    for cx in (0.3, 0.7):
        img -= 1700 * np.exp(-((((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.28) ** 2) ** 2))
    img += 700 * np.exp(-(((x - 0.5) / 0.05) ** 2))
    img += np.random.default_rng(0).normal(0, 40, img.shape)
    return np.clip(np.rint(img), 0, TOP).astype(np.uint16)


def with_attributes(path: Path, **attributes) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def presentation(photometric: str, shape: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        img, center = (phantom(), 2000) if photometric == "MONOCHROME2" else (TOP - phantom(), TOP - 2000)
        path = make_dicom(tmp / "plut.dcm", img, photometric=photometric, window=(center, 3000))
        return with_attributes(path, PresentationLUTShape=shape)

    return make


SLOPE, INTERCEPT, CENTER, WIDTH = 5e-6, -0.002, 2000, 3000  # the window in stored values


def fractional_slope(tmp: Path) -> Path:
    """A window 0.015 wide in modality units (slope 5e-6): the decoder took it as a threshold
    and refused the image as blank."""
    window = (CENTER * SLOPE + INTERCEPT, WIDTH * SLOPE)
    return make_dicom(tmp / "slope.dcm", phantom(), slope=SLOPE, intercept=INTERCEPT, window=window)


def jpeg_extended_scan_end_zero(tmp: Path) -> Path:
    """A 12-bit JPEG Extended file (dcmcjpeg +ee) whose scan header is then made to say Se = 0,
    as some modalities write it: pylibjpeg refused it as corrupt."""
    plain, encoded = make_dicom(tmp / "plain.dcm", phantom()), tmp / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+ee", str(plain), str(encoded)], check=True, capture_output=True)
    ds = pydicom.dcmread(encoded)
    assert ds.file_meta.TransferSyntaxUID == JPEGExtended12Bit
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([_scan_end_zero(frame)])
    ds.save_as(encoded)
    return encoded


def _scan_end_zero(frame: bytes) -> bytes:
    at = 2  # after SOI: walk the marker segments to the (first) start of scan
    while frame[at + 1] != 0xDA:
        at += 2 + int.from_bytes(frame[at + 2 : at + 4], "big")
    se = at + 5 + 2 * frame[at + 4] + 1  # after Ls, Ns and Ns component selectors: Ss, then Se
    assert frame[se - 1 : se + 1] == b"\x00\x3f"
    return frame[:se] + b"\x00" + frame[se + 1 :]


# --- the corpus --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path, Path], Path]  # (dicom_dir, tmp_path) -> the file the decoder reads
    twin: Callable[[Path, Path], Path] | None = None  # the file dcmtk renders, if another one
    voi: list[str] = field(default_factory=list)  # dcmtk's VOI options, if not mirrored from ours
    warning: str = ""  # what dcmtk must say on stderr (proof the generated defect is there)


def pydicom_file(name: str) -> Callable[[Path, Path], Path]:
    return lambda dicom_dir, tmp: PYDICOM_FILES / name


def real_file(name: str) -> Callable[[Path, Path], Path]:
    return lambda dicom_dir, tmp: dicom_dir / name


def generated(make: Callable[[Path], Path]) -> Callable[[Path, Path], Path]:
    return lambda dicom_dir, tmp: make(tmp)


CASES = [
    *(Case(f"pydicom/{name}", pydicom_file(name)) for name in PYDICOM_CORPUS),
    *(Case(f"pydicom/{a}", pydicom_file(a), pydicom_file(b)) for a, b in PYDICOM_JPEG2000_TWINS.items()),
    *(
        Case(f"real/{name}", real_file(name), real_file(REAL_JPEG2000_TWINS.get(name, name)))
        for name in REAL_FILES
    ),
    Case("generated/MONOCHROME2-INVERSE", generated(presentation("MONOCHROME2", "INVERSE"))),
    Case("generated/MONOCHROME2-IDENTITY", generated(presentation("MONOCHROME2", "IDENTITY"))),
    Case("generated/MONOCHROME1-INVERSE", generated(presentation("MONOCHROME1", "INVERSE"))),
    Case("generated/MONOCHROME1-IDENTITY", generated(presentation("MONOCHROME1", "IDENTITY"))),
    # dcmtk keeps modality values as integers, so it renders this file black itself ("cannot
    # select VOI window"): its reference is the same window on the stored values.
    Case(
        "generated/window-in-fractional-slope-units",
        generated(fractional_slope),
        voi=["-M", "+Ww", str(CENTER), str(WIDTH)],
    ),
    Case(
        "generated/jpeg-extended-12bit-Se0",
        generated(jpeg_extended_scan_end_zero),
        warning="Invalid SOS parameters for sequential JPEG",
    ),
]


def mirrored_voi(path: Path) -> list[str]:
    """dcmtk's options for the VOI the decoder chooses (``worker.decode.dicom.voi``)."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return ["+Wl", "1"]
    width = ds.get("WindowWidth")
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    if "WindowCenter" in ds and width not in (None, "") and float(width) > 0:
        return ["+Wi", "1"]
    return ["+Wm"]


def render(path: Path, voi: list[str], out: Path) -> tuple[np.ndarray, str]:
    """dcmtk's 8-bit rendering of ``path`` and what it said on stderr."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    jpeg_ls = ds.file_meta.get("TransferSyntaxUID") in (JPEGLSLossless, JPEGLSNearLossless)
    tool = "dcml2pnm" if jpeg_ls else "dcmj2pnm"
    done = subprocess.run([tool, "-O", *voi, "+op", str(path), str(out)], capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        pytest.fail(f"{tool} could not render {path.name}: {done.stderr.strip()}")
    with Image.open(out) as img:
        return np.asarray(img.convert("L")), done.stderr


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding:UserWarning")  # MR_small_padded
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decoder_renders_as_dcmtk_does(dcmtk, case: Case, dicom_dir: Path, tmp_path: Path):
    path = case.make(dicom_dir, tmp_path)
    reference = case.twin(dicom_dir, tmp_path) if case.twin else path
    expected, said = render(reference, case.voi or mirrored_voi(reference), tmp_path / "dcmtk.pgm")
    assert case.warning in said
    ours = decode_file(path).pixels
    assert ours.shape == expected.shape  # the decoder never scales a DICOM
    a, b = ours.astype(np.float64), expected.astype(np.float64)
    correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    mean_difference = np.abs(a - b).mean()
    assert correlation >= MIN_CORRELATION and mean_difference <= MAX_MEAN_DIFFERENCE, (
        f"{case.id}: correlation {correlation:.4f}, mean difference {mean_difference:.2f} grey levels"
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on its odd files
def test_the_corpus_holds_every_greyscale_image_pydicom_ships():
    """A new pydicom with new test files: each one the decoder accepts is compared or named here."""
    accepted = set()
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        try:
            decoded = decode_file(path)
        except DecodeError:
            continue
        if decoded.dicom.photometric in ("MONOCHROME1", "MONOCHROME2"):
            accepted.add(path.name)
    assert accepted == {*PYDICOM_CORPUS, *PYDICOM_JPEG2000_TWINS, *PYDICOM_JPEG2000_LEFT_OUT}


def test_the_corpus_holds_every_real_file(dicom_dir: Path):
    assert sorted(p.name for p in dicom_dir.glob("*.dcm")) == REAL_FILES
