"""Fuzz the decoder: mutated real and generated X-ray files through ``decode_file``.

    python bench/fuzz_decoder.py --runs 100000 [--engine atheris|random] [--seed 0]

Seeds: small real JPEGs (chest_xray_224), two real DICOMs (CR-MONO1-10-chest and the
smallest RSNA file), generated PNGs (8-bit, 16-bit, palette, RGBA), generated DICOMs
(explicit, implicit without file meta, RLE, MONOCHROME1 with a window) and the broken
files of tests/hostile_files.py. Mutations: byte flips, interesting integers, truncation,
block insertion, deletion and duplication, splices of two inputs, and header field edits
(PNG IHDR, JPEG SOF, DICOM image-pixel elements). ``--engine atheris`` (the default when
atheris is installed) lets libFuzzer pick inputs by coverage of worker.decode, Pillow and
pydicom; ``--engine random`` is the same loop without it (deterministic for a seed).

Each input is written to a file and decoded with the default limits, as the daemon does
(JPEGs at reduced size for every other input). Anything raised other than DecodeError or
ReadError is a finding: its input and traceback are saved under ``<out>/findings/`` (one
per kind of failure), and the run goes on. An input that takes longer than ``--timeout``
is a hang: saved, and the run stops with exit status 3 (if the hang holds the GIL, at
twice the timeout faulthandler writes the stack to ``<out>/hang-stack.txt`` and exits 1;
the input is ``<out>/current-input``). Resident memory is watched, and the address space
capped at twice ``--rss-limit-mb`` plus 2 GiB: above the limit the input is saved and the
run stops with exit status 4. Exit status 1 when there were findings. Prints a summary.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import os
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("XRAY_SCREEN_DATA", ROOT.parent / "shared" / "data"))
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]  # worker, and the shared test-file builders

EXIT_FINDINGS, EXIT_HANG, EXIT_MEMORY = 1, 3, 4
INSTRUMENTED = ["worker.decode", "PIL", "pydicom"]
REAL_DICOMS = ["CR-MONO1-10-chest.dcm", "00aecb01-a116-45a2-956c-08d2fa55433f.dcm"]


def seed_inputs(data_dir: Path = DATA, jpegs: int = 4) -> dict[str, bytes]:
    """Name -> bytes of every seed: real files first, then generated and broken ones."""
    import numpy as np
    from dicom_factory import gradient
    from hostile_files import (
        dicom_bytes,
        encode,
        grey,
        jpeg_bytes,
        jpeg_claiming,
        png16_bytes,
        png_bytes,
        png_claiming,
    )
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    seeds: dict[str, bytes] = {}
    for label in ("NORMAL", "PNEUMONIA"):
        folder = data_dir / "chest_xray_224" / "train" / label
        for path in sorted(folder.glob("*.jpeg"), key=lambda p: (p.stat().st_size, p.name))[: jpegs // 2]:
            seeds[f"{label}-{path.name}"] = path.read_bytes()
    for name in REAL_DICOMS:
        seeds[name] = (data_dir / "dicom" / name).read_bytes()
    if len(seeds) < jpegs + len(REAL_DICOMS):
        raise SystemExit(f"real seed files missing under {data_dir} (set XRAY_SCREEN_DATA)")
    ramp = grey((64, 48))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        seeds |= {
            "grey.png": encode(ramp, "PNG"),
            "deep.png": png16_bytes(),
            "palette.png": encode(ramp.convert("P"), "PNG"),
            "rgba.png": encode(ramp.convert("RGBA"), "PNG"),
            "noise.png": png_bytes(),
            "ramp.jpeg": jpeg_bytes(),
            "cmyk.jpeg": encode(ramp.convert("CMYK"), "JPEG"),
            "progressive.jpeg": encode(ramp, "JPEG", progressive=True),
            "bomb.png": png_claiming(40000, 40000),
            "huge.jpeg": jpeg_claiming(65000, 65000),
            "explicit.dcm": dicom_bytes(scratch, gradient(), window=(1500, 2000)),
            "mono1.dcm": dicom_bytes(scratch, gradient(), photometric="MONOCHROME1", slope=2.0, intercept=-5),
            "bare.dcm": dicom_bytes(scratch, gradient(), syntax=ImplicitVRLittleEndian, file_meta=False),
            "rle.dcm": dicom_bytes(scratch, gradient(), syntax=RLELossless),
            "eight-bit.dcm": dicom_bytes(scratch, (gradient(bits=8)).astype(np.uint8), bits_stored=8),
        }
    return seeds


# --- mutations ----------------------------------------------------------------------

INTERESTING = [0, 1, 2, 7, 8, 15, 16, 31, 32, 127, 128, 255, 256, 1023, 4096, 32767, 32768, 65535, 65536]
INTERESTING += [2**31 - 1, 2**31, 2**32 - 1]
# DICOM image pixel module and friends, as little-endian tag bytes.
DICOM_TAGS = [
    group.to_bytes(2, "little") + element.to_bytes(2, "little")
    for group, element in (
        (0x0028, 0x0010),  # Rows
        (0x0028, 0x0011),  # Columns
        (0x0028, 0x0100),  # BitsAllocated
        (0x0028, 0x0101),  # BitsStored
        (0x0028, 0x0102),  # HighBit
        (0x0028, 0x0103),  # PixelRepresentation
        (0x0028, 0x0002),  # SamplesPerPixel
        (0x0028, 0x0004),  # PhotometricInterpretation
        (0x0028, 0x0008),  # NumberOfFrames
        (0x0028, 0x1050),  # WindowCenter
        (0x0028, 0x1051),  # WindowWidth
        (0x0028, 0x1052),  # RescaleIntercept
        (0x0028, 0x1053),  # RescaleSlope
        (0x0028, 0x1056),  # VOILUTFunction
        (0x0002, 0x0010),  # TransferSyntaxUID
        (0x7FE0, 0x0010),  # PixelData
        (0xFFFE, 0xE000),  # an encapsulated fragment
    )
]
TEXT_VALUES = [b"0", b"-1", b"1e308", b"-1e308", b"nan", b"inf", b"1\\2\\3", b"", b"\x00", b"99999999"]


class Mutator:
    """Structure-aware and blind mutations of one input, with other seeds for splices."""

    def __init__(self, seeds: list[bytes]):
        self.seeds = seeds
        self.ops: list[Callable[[random.Random, bytearray], None]] = [
            self.flip_bytes,
            self.flip_bits,
            self.interesting_int,
            self.truncate,
            self.insert_block,
            self.delete_block,
            self.duplicate_block,
            self.splice,
            self.header_field,
            self.header_field,
            self.dicom_element,
            self.dicom_element,
        ]

    def mutate(self, rng: random.Random, data: bytes, max_size: int = 1 << 22) -> bytes:
        out = bytearray(data or rng.choice(self.seeds))
        for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
            rng.choice(self.ops)(rng, out)
        return bytes(out[:max_size])

    @staticmethod
    def _pos(rng: random.Random, out: bytearray) -> int:
        """Offsets near the start (headers) as often as anywhere else."""
        n = max(1, len(out))
        return rng.randrange(min(n, 512)) if rng.random() < 0.5 else rng.randrange(n)

    def flip_bytes(self, rng: random.Random, out: bytearray) -> None:
        for _ in range(rng.randint(1, 8)):
            if out:
                out[self._pos(rng, out)] = rng.randrange(256)

    def flip_bits(self, rng: random.Random, out: bytearray) -> None:
        for _ in range(rng.randint(1, 8)):
            if out:
                out[self._pos(rng, out)] ^= 1 << rng.randrange(8)

    def interesting_int(self, rng: random.Random, out: bytearray) -> None:
        self._write_int(rng, out, self._pos(rng, out))

    @staticmethod
    def _write_int(rng: random.Random, out: bytearray, at: int) -> None:
        width = rng.choice((1, 2, 4))
        value = rng.choice(INTERESTING) % (1 << (8 * width))
        out[at : at + width] = value.to_bytes(width, rng.choice(("little", "big")))

    def truncate(self, rng: random.Random, out: bytearray) -> None:
        del out[rng.randrange(len(out) + 1) :]

    def insert_block(self, rng: random.Random, out: bytearray) -> None:
        block = rng.choice((bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))), b"\xff" * 16))
        at = self._pos(rng, out)
        out[at:at] = block

    def delete_block(self, rng: random.Random, out: bytearray) -> None:
        at = self._pos(rng, out)
        del out[at : at + rng.randint(1, 256)]

    def duplicate_block(self, rng: random.Random, out: bytearray) -> None:
        at = self._pos(rng, out)
        block = out[at : at + rng.randint(1, 1024)]
        out[at:at] = block * rng.randint(1, 4)

    def splice(self, rng: random.Random, out: bytearray) -> None:
        other = rng.choice(self.seeds)
        cut, start = rng.randrange(len(out) + 1), rng.randrange(len(other) + 1)
        out[cut:] = other[start:]

    def header_field(self, rng: random.Random, out: bytearray) -> None:
        """PNG IHDR (size, depth, colour type) or JPEG SOF (precision, size, components)."""
        ihdr = out.find(b"IHDR")
        if ihdr >= 0:
            self._write_int(rng, out, ihdr + 4 + rng.choice((0, 2, 4, 6, 8, 9, 10, 11, 12)))
            return
        for marker in (
            b"\xff\xc0",
            b"\xff\xc2",
            b"\xff\xc1",
            b"\xff\xc4",
            b"\xff\xdb",
            b"\xff\xda",
            b"\xff\xe1",
        ):
            at = out.find(marker)
            if at >= 0 and rng.random() < 0.5:
                self._write_int(rng, out, at + rng.randrange(2, 12))
                return
        self.interesting_int(rng, out)

    def dicom_element(self, rng: random.Random, out: bytearray) -> None:
        """Rows, Columns, bits, photometric, frames, window, rescale, syntax, pixel data length."""
        tag = rng.choice(DICOM_TAGS)
        at = out.find(tag)
        if at < 0:
            self.interesting_int(rng, out)
            return
        explicit = bytes(out[at + 4 : at + 6]).isalpha()
        size = 2 if explicit else 4  # explicit VR: tag, VR, 2-byte length; implicit: tag, 4-byte length
        length = int.from_bytes(out[at + 8 - size : at + 8], "little")
        if length <= 64 and rng.random() < 0.4:  # a short text value (IS, DS, CS, UI): a new one
            value = rng.choice(TEXT_VALUES)
            value += b" " * (len(value) % 2)
            out[at + 8 : at + 8 + length] = value
            out[at + 8 - size : at + 8] = len(value).to_bytes(size, "little")
            return
        self._write_int(rng, out, at + rng.choice((4, 6, 8, 10)))


# --- running one input ------------------------------------------------------------


class Harness:
    """Decode one input at a time; keep findings, timings and the memory peak."""

    def __init__(self, out: Path, timeout: float, rss_limit_mb: int):
        from worker.decode import decode_file
        from worker.errors import DecodeError, ReadError

        self.decode_file, self.expected = decode_file, (DecodeError, ReadError)
        self.findings_dir = out / "findings"
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.input = out / "current-input"  # still there if a hang ends the process
        self._stack_file = (out / "hang-stack.txt").open("w")  # open for the whole run
        self.timeout, self.rss_limit_mb = timeout, rss_limit_mb
        self.executions = 0
        self.outcomes: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()  # signature -> occurrences
        self.reasons: Counter[str] = Counter()  # first words of each refusal
        self.slowest: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self._current: bytes | None = None
        self._since = 0.0
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._stack_file.close()

    def execute(self, data: bytes) -> str:
        """Decode ``data``; return "decoded", "refused" or "finding"."""
        self.input.write_bytes(data)
        self._current, self._since = data, time.monotonic()
        # The backstop for a hang in C code that holds the GIL, where _watch cannot run.
        faulthandler.dump_traceback_later(2 * self.timeout, exit=True, file=self._stack_file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the daemon logs warnings; only errors matter here
                image = self.decode_file(self.input, min_side=256 if len(data) % 2 else None)
            outcome = "decoded"
            if image.pixels.ndim != 2 or image.pixels.dtype.name != "uint8":
                raise AssertionError(f"decoded to {image.pixels.dtype} {image.pixels.shape}, not 2-D uint8")
        except self.expected as exc:
            outcome = "refused"
            if isinstance(exc, self.expected[0]) and "in memory" in str(exc):  # hit the address-space cap
                outcome = "finding"
                self._finding(data, exc)
            self.reasons[" ".join(str(exc).split(":")[0].split()[:4])] += 1
        except BaseException as exc:  # anything else is what we are looking for
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome = "finding"
            self._finding(data, exc)
        finally:
            faulthandler.cancel_dump_traceback_later()
            seconds = time.monotonic() - self._since
            self._current = None
        self.executions += 1
        self.outcomes[outcome] += 1
        if len(self.slowest) < 5 or seconds > self.slowest[-1][0]:
            self.slowest = sorted([*self.slowest, (seconds, _sha(data)[:12])], reverse=True)[:5]
        if peak_rss_mb() > self.rss_limit_mb:
            self._save(data, "memory", f"peak RSS {peak_rss_mb():.0f} MiB after this input\n")
            print(f"memory: peak RSS above {self.rss_limit_mb} MiB", file=sys.stderr)
            os._exit(EXIT_MEMORY)
        return outcome

    def _finding(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        signature = f"{type(exc).__name__} at {where}"
        if not self.findings[signature]:
            text = f"{signature}\n\n" + "".join(traceback.format_exception(exc))
            path = self._save(data, type(exc).__name__, text)
            print(f"FINDING {signature}: {path}", file=sys.stderr, flush=True)
        self.findings[signature] += 1

    def _save(self, data: bytes, kind: str, text: str) -> Path:
        path = self.findings_dir / f"{kind}-{_sha(data)[:16]}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(text)
        return path

    def _watch(self) -> None:
        """A hang or a runaway allocation cannot be interrupted in C code: record the input,
        then end the process."""
        while not self._closed.wait(0.05):
            data, since = self._current, self._since
            if data is None:
                continue
            if time.monotonic() - since > self.timeout:
                path = self._save(data, "hang", f"still decoding after {self.timeout:g} s\n")
                print(f"HANG: input saved as {path}", file=sys.stderr, flush=True)
                os._exit(EXIT_HANG)
            if current_rss_mb() > self.rss_limit_mb:
                path = self._save(data, "memory", f"resident memory above {self.rss_limit_mb} MiB\n")
                print(f"MEMORY: input saved as {path}", file=sys.stderr, flush=True)
                os._exit(EXIT_MEMORY)

    def report(self, engine: str, seed: int) -> str:
        seconds = time.monotonic() - self.started
        lines = [
            f"engine {engine}, seed {seed}: {self.executions} executions in {seconds:.0f} s "
            f"({self.executions / seconds:.0f}/s), peak RSS {peak_rss_mb():.0f} MiB",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"findings: {sum(self.findings.values())} ({len(self.findings)} kinds)",
            *(f"  {n} x {sig}" for sig, n in self.findings.most_common()),
            "slowest inputs: " + ", ".join(f"{s:.2f} s ({sha})" for s, sha in self.slowest),
            "most common refusals: " + "; ".join(f"{r} ({n})" for r, n in self.reasons.most_common(8)),
        ]
        return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's high-water mark (ru_maxrss would also count a parent's, across exec)."""
    return _status_kib(b"VmHWM:") / 1024


def current_rss_mb() -> float:
    return _status_kib(b"VmRSS:") / 1024


def _status_kib(field: bytes) -> int:
    with open("/proc/self/status", "rb") as fh:  # noqa: PTH123 -- read often; Path adds nothing
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def cap_address_space(rss_limit_mb: int) -> None:
    """A decode that asks for far more than the limit fails with MemoryError instead of
    taking the machine down before the watchdog sees it."""
    cap = (2 * rss_limit_mb + 2048) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- engines ------------------------------------------------------------------------


def run_random(harness: Harness, seeds: list[bytes], runs: int, seed: int) -> None:
    """Every seed once, then mutations of seeds and of earlier mutants (a small pool)."""
    rng = random.Random(seed)
    mutator = Mutator(seeds)
    kept: list[bytes] = []  # up to 64 mutants that still decoded: mutated further, like a corpus
    for data in seeds[:runs]:
        harness.execute(data)
    for _ in range(runs - min(runs, len(seeds))):
        parent = rng.choice(kept) if kept and rng.random() < 0.5 else rng.choice(seeds)
        data = mutator.mutate(rng, parent)
        if harness.execute(data) == "decoded" and rng.random() < 0.1:
            if len(kept) < 64:
                kept.append(data)
            else:
                kept[rng.randrange(64)] = data


def run_atheris(harness: Harness, seeds: list[bytes], runs: int, seed: int, out: Path) -> None:
    import atheris

    corpus, seed_dir = out / "corpus", out / "seeds"
    for folder in (corpus, seed_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for data in seeds:
        (seed_dir / _sha(data)[:16]).write_bytes(data)
    mutator = Mutator(seeds)

    def one_input(data: bytes) -> None:
        harness.execute(data)
        if harness.executions >= runs:
            print(harness.report("atheris", seed), flush=True)
            os._exit(EXIT_FINDINGS if harness.findings else 0)

    def custom_mutator(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        rng = random.Random(mutation_seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return mutator.mutate(rng, data, max_size)

    args = [
        sys.argv[0],
        f"-seed={seed + 1}",  # libFuzzer takes 0 to mean "pick one"
        f"-timeout={int(harness.timeout) + 5}",  # a backstop to the watchdog
        f"-rss_limit_mb={harness.rss_limit_mb}",
        f"-max_len={max(map(len, seeds)) + 4096}",
        f"-artifact_prefix={harness.findings_dir}/",
        "-print_final_stats=1",
        str(corpus),  # libFuzzer adds new coverage here
        str(seed_dir),
    ]
    atheris.Setup(args, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000, help="executions (default 100000)")
    parser.add_argument("--engine", choices=("atheris", "random"), help="default: atheris if installed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an input is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fuzz")
    args = parser.parse_args()
    engine = args.engine or ("atheris" if _have_atheris() else "random")
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=INSTRUMENTED):
            _import_decoders()
    seeds = list(seed_inputs().values())
    cap_address_space(args.rss_limit_mb)
    harness = Harness(args.out, args.timeout, args.rss_limit_mb)
    print(f"{len(seeds)} seeds, {args.runs} executions with {engine}; findings in {harness.findings_dir}")
    if engine == "atheris":
        run_atheris(harness, seeds, args.runs, args.seed, args.out)
    run_random(harness, seeds, args.runs, args.seed)
    print(harness.report(engine, args.seed))
    sys.exit(EXIT_FINDINGS if harness.findings else 0)


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _import_decoders() -> None:
    """Everything decode_file imports lazily, so that coverage instrumentation sees it."""
    import pydicom.pixels.decoders  # noqa: F401
    from PIL import Image

    import worker.decode.dicom
    import worker.decode.raster  # noqa: F401

    Image.init()


if __name__ == "__main__":
    main()
