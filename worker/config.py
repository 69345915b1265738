"""Settings: loaded once into a typed, validated object.

Layers, lowest first: built-in defaults < config.toml < environment variables
``XRAY_SCREEN_<SECTION>_<KEY>`` < command-line flags. Every error names the key and the
place the bad value came from, so an operator can fix it without reading code.

Where the defaults point depends on how the package is installed:

- In a source checkout (an editable install, ``pip install -e .``): the shipped model is
  ``models/pneumonia-resnet18/onnx`` (a bundle) and the state (inbox, processed, failed, the
  SQLite database) lives in ``var/`` of the checkout, whatever the working directory.
- Installed from a wheel: the shipped model is inside the package
  (``worker/shipped_model/onnx`` in site-packages; the learner, export.pkl, is not in the
  wheel), and the state defaults to ``var/`` relative to the working directory at the time
  it is used (``./var/inbox``, ``sqlite:///var/xray-screen.db``); site-packages is no place
  for data. A service sets
  these in its config file instead (README, "Deploying from a wheel").
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.errors import ConfigError

ENV_PREFIX = "XRAY_SCREEN_"
CONFIG_ENV = "XRAY_SCREEN_CONFIG"
# The folder above the package: the checkout, or site-packages when installed from a wheel.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A source checkout has its pyproject.toml and migrations/ there; site-packages has neither.
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "migrations").is_dir()
ROOT_CONFIG = PROJECT_ROOT / "config.toml"


def shipped_path(in_package: str, in_checkout: str) -> Path:
    """A file or folder that ships with the code: inside ``worker`` in a wheel, else in the checkout.

    ``in_package`` is the path below the ``worker`` package where the wheel puts it (mapped there
    by ``[tool.setuptools.package-dir]`` in pyproject.toml), ``in_checkout`` its path in the
    repository. The packaged copy wins when it is there; otherwise the checkout's when this is a
    checkout. Installed without it, the packaged path is returned, so that the error names the
    place it was expected.
    """
    checkout = PROJECT_ROOT / in_checkout
    packaged = importlib.resources.files("worker").joinpath(*in_package.split("/"))
    if not isinstance(packaged, Path):  # imported from a zip file: no real file to hand on
        return checkout
    if packaged.exists() or not IN_CHECKOUT:
        return packaged.resolve()
    return checkout


# The shipped model: its learner (export.pkl: training, the torch runtime, heatmaps) and its
# bundles (xray-train export): fp32, the default, and int8, validated against it.
DEFAULT_LEARNER = shipped_path("shipped_model/export.pkl", "models/pneumonia-resnet18/export.pkl")
DEFAULT_BUNDLE = shipped_path("shipped_model/onnx", "models/pneumonia-resnet18/onnx")
INT8_BUNDLE = shipped_path("shipped_model/onnx-int8", "models/pneumonia-resnet18/onnx-int8")
DEFAULT_MODEL = DEFAULT_BUNDLE
# The worker's state (inbox, processed, failed, the SQLite file): the checkout's var/, or, when
# installed from a wheel, var/ in the working directory (left relative: resolved when used).
DEFAULT_VAR = PROJECT_ROOT / "var" if IN_CHECKOUT else Path("var")
DEFAULT_DATABASE = DEFAULT_VAR / "xray-screen.db"
# The shipped model's hashes, pinned here so that the shipped files load with no settings at
# all, and a swapped file is refused. Update them only together with models/pneumonia-resnet18/.
SHIPPED_MODEL_SHA256 = "dd1b89a27da09b7811fbf9245a598666471395dc9364d0ad1f89550a8e266b91"  # export.pkl
SHIPPED_BUNDLE_SHA256 = "b176b060d202335ab680a59352eeb15998591b235242a96e46faf9193cae99a0"  # onnx/bundle.json
SHIPPED_INT8_SHA256 = (
    "89c930a2b841412e085666c511a63beb6eae7fcc40741e336d9bac4a56fd274f"  # onnx-int8/bundle.json
)
SHIPPED = {
    DEFAULT_LEARNER: SHIPPED_MODEL_SHA256,
    DEFAULT_BUNDLE: SHIPPED_BUNDLE_SHA256,
    INT8_BUNDLE: SHIPPED_INT8_SHA256,
}

Device = Literal["auto", "cpu", "cuda"]
Engine = Literal["local", "ray"]
Runtime = Literal["auto", "onnx", "torch"]


def _check(*, minimum: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    return {"minimum": minimum, "maximum": maximum}


@dataclass(frozen=True)
class ModelSettings:
    # A model bundle's folder (xray-train export) or an exported fastai learner (export.pkl).
    path: Path = DEFAULT_MODEL
    # SHA-256 of the bundle's bundle.json (or of export.pkl); the worker refuses anything else.
    sha256: str = field(default="", metadata={"pattern": r"([0-9a-fA-F]{64})?", "hint": "64 hex digits"})
    # Load the file without a hash check (only for a path you control).
    trust: bool = False
    # The class a positive screen means; empty: the learner's last class.
    positive_class: str = ""

    def expected_sha256(self) -> str:
        """The configured hash, or the pinned one when the shipped model is used."""
        if self.sha256:
            return self.sha256.lower()
        path = self.path.resolve()
        return SHIPPED.get(path.parent if path.name == "bundle.json" else path, "")


@dataclass(frozen=True)
class InferenceSettings:
    device: Device = "auto"
    batch_size: int = field(default=64, metadata=_check(minimum=1, maximum=4096))
    # Threads decoding files while the model runs; 0 picks one per CPU core.
    decode_workers: int = field(default=0, metadata=_check(minimum=0, maximum=256))
    # Intra-op threads of the runtime on CPU; 0 leaves its default (one per core).
    threads: int = field(default=0, metadata=_check(minimum=0, maximum=256))
    # What runs the network: "onnx" (ONNX Runtime, for a bundle from `xray-train export`),
    # "torch" (for an exported learner, export.pkl), or "auto": the one that fits [model] path.
    runtime: Runtime = "auto"


@dataclass(frozen=True)
class DecodeSettings:
    # Refuse images larger than this many pixels (decompression-bomb guard).
    max_pixels: int = field(default=80_000_000, metadata=_check(minimum=1))
    # Refuse images wider or taller than this.
    max_side: int = field(default=20_000, metadata=_check(minimum=16))
    # Refuse images narrower or shorter than this (icons, thumbnails, junk).
    min_side: int = field(default=32, metadata=_check(minimum=1))


@dataclass(frozen=True)
class DatabaseSettings:
    # SQLAlchemy URL of the results database: sqlite:///FILE or postgresql+psycopg://user@host/db.
    # A relative SQLite file in a config file is relative to that file's folder.
    url: str = field(default=f"sqlite:///{DEFAULT_DATABASE}", metadata={"sqlite_url": True})
    # Also store DICOM Accession Number and Patient ID, to link results back to the PACS.
    store_patient_ids: bool = False


DEFAULT_IGNORE = ("*.part", "*.tmp", "*.filepart", "*.crdownload", ".~*", "~$*")


@dataclass(frozen=True)
class InboxSettings:
    # The folder radiographers or a PACS export drop X-rays into (often a network share).
    path: Path = DEFAULT_VAR / "inbox"
    # Screened files go to processed/<layout>/<name>; unreadable ones to failed/<date>/<name>.
    processed: Path = DEFAULT_VAR / "processed"
    failed: Path = DEFAULT_VAR / "failed"
    # Folders under processed/: {label}, {date} (YYYY-MM-DD), {year}, {month}, {day}.
    layout: str = "{label}/{date}"
    # Also take files from subfolders of the inbox.
    recursive: bool = False
    # Poll instead of inotify: needed for SMB/NFS shares, which send no events.
    polling: bool = False
    poll_interval: float = field(default=2.0, metadata=_check(minimum=0.1))
    # A full rescan reconciles whatever events missed (seconds).
    rescan_interval: float = field(default=60.0, metadata=_check(minimum=1))
    # A file is taken once its size and mtime have not changed for this long (seconds).
    stability_seconds: float = field(default=2.0, metadata=_check(minimum=0))
    # Names never taken (shell patterns), besides hidden files.
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    # Unique per worker sharing the inbox; empty: the host name.
    worker_id: str = ""
    # A batch waits at most this long for more files (milliseconds).
    max_wait_ms: int = field(default=200, metadata=_check(minimum=0, maximum=60_000))
    # Claims of a worker silent this long (seconds) are taken over by a live one.
    lease_seconds: int = field(default=600, metadata=_check(minimum=10))
    # Permission bits removed from what the daemon creates (folders, .error.json, database).
    umask: str = field(default="027", metadata={"pattern": r"0?[0-7]{3}", "hint": "an octal umask like 027"})


@dataclass(frozen=True)
class ScanSettings:
    # Archive folders `xray-worker scan` walks when given none (the nightly timer's list).
    roots: tuple[str, ...] = field(default=(), metadata={"paths": True})
    # Only files matching one of these shell patterns (case-insensitive); empty: every file.
    # A pattern with a / is matched against the path below the root, others against the name.
    include: tuple[str, ...] = ()
    # Files and folders never read (same patterns), besides hidden ones.
    exclude: tuple[str, ...] = DEFAULT_IGNORE
    # Seconds between progress lines when the output is a log, not a terminal.
    progress_interval: float = field(default=60.0, metadata=_check(minimum=1))
    # local: this machine's threads; ray: a Ray cluster (see [ray]; needs xray-screen[ray]).
    engine: Engine = "local"


@dataclass(frozen=True)
class RaySettings:
    """``xray-worker scan --engine ray``: where the cluster is and how the work is spread on it."""

    # The Ray cluster's head (host:6379, its GCS port); empty: start a local Ray instance.
    address: str = ""
    # Inference actors; 0: one per gpus_per_actor GPUs in the cluster, or 1 on a cluster without GPUs.
    actors: int = field(default=0, metadata=_check(minimum=0, maximum=4096))
    # GPUs each inference actor reserves (0.5: two actors share a GPU); unused without GPUs.
    gpus_per_actor: float = field(default=1.0, metadata=_check(minimum=0, maximum=8))
    # CPUs each inference actor reserves (on a cluster without GPUs: its torch threads).
    cpus_per_actor: float = field(default=1.0, metadata=_check(minimum=0, maximum=256))
    # Decoding actors, one CPU each; 0: the cluster's CPUs less the inference actors' (at least 1).
    decoders: int = field(default=0, metadata=_check(minimum=0, maximum=100_000))
    # Files per block of the work list (Ray's unit of scheduling).
    block_files: int = field(default=256, metadata=_check(minimum=1, maximum=100_000))
    # Object store of a local Ray instance, MiB (a cluster's own setting applies otherwise).
    object_store_mb: int = field(default=1024, metadata=_check(minimum=128))


@dataclass(frozen=True)
class GateSettings:
    """What the model is allowed to judge; the rest is ``out_of_scope``, neither a verdict nor
    a failure (docs/gate.md)."""

    # Check each file before screening it; false: every decodable image gets a verdict.
    enabled: bool = True
    # DICOM Modality values screened (upper case). Empty: any.
    modalities: tuple[str, ...] = ("CR", "DX")
    # DICOM BodyPartExamined values screened, when the file has the attribute. Empty: any.
    body_parts: tuple[str, ...] = ("CHEST",)
    # DICOM ViewPosition values screened, when the file has the attribute. Empty: any.
    views: tuple[str, ...] = ("PA", "AP")
    # Whether a DICOM without one of these attributes passes (many exports drop them).
    missing_passes: bool = True
    # Refuse images unlike the films the model was trained on (the model's own image gate,
    # fitted with `xray-train gate`; a model without one checks DICOM attributes only).
    image_check: bool = True
    # The folder under processed/ for files out of scope.
    folder: str = "OUT_OF_SCOPE"


# A DICOM AE title: 1-16 printable ASCII characters, no backslash, no leading or trailing space.
_AE_TITLE = r"[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?"
# Field metadata several tables share: an AE title, a destination's or source's name (the outbox
# and the pull table key rows by it), a host, a TCP port.
_AE = {"pattern": _AE_TITLE, "hint": "a DICOM AE title (1-16 characters)"}
_NAME = {"pattern": r"[A-Za-z0-9_.-]{1,64}", "hint": "1-64 letters, digits, _ . -"}
_HOST = {"pattern": r"\S+", "hint": "a host name or address"}
_PORT = _check(minimum=1, maximum=65535)


@dataclass(frozen=True)
class ReceiveSettings:
    """``xray-worker receive``: a DICOM Storage SCP that files instances into [inbox] path
    (docs/receiving.md)."""

    # Address and TCP port to listen on (0.0.0.0 or :: for every interface).
    host: str = "127.0.0.1"
    port: int = field(default=11112, metadata=_PORT)
    # Our own AE title, the one modalities and PACS call.
    ae_title: str = field(default="XRAY_SCREEN", metadata=_AE)
    # Calling AE titles allowed to send, each optionally bound to its IP address
    # ("MODALITY1@10.0.0.5"); empty: any.
    allowed_aets: tuple[str, ...] = ()
    # Largest PDU we receive (bytes); the peer splits its data into PDUs of at most this size.
    max_pdu: int = field(default=131_072, metadata=_check(minimum=4096, maximum=16_777_216))
    # Seconds to wait for an association request or release, and for the network to answer.
    association_timeout: float = field(default=30.0, metadata=_check(minimum=1, maximum=3600))
    # Seconds an association may stay silent (mid-instance included) before it is aborted.
    idle_timeout: float = field(default=60.0, metadata=_check(minimum=1, maximum=86_400))
    # Largest instance accepted (bytes); larger ones are refused (0xA700), never held in memory.
    max_instance_bytes: int = field(default=268_435_456, metadata=_check(minimum=1024))
    # Associations served at once (each may hold up to max_instance_bytes in memory).
    max_associations: int = field(default=8, metadata=_check(minimum=1, maximum=256))
    # Seconds a new connection has to deliver its association request (TLS handshake included);
    # then it is closed. Separate from association_timeout (docs/receiving.md, "Under attack").
    request_timeout: float = field(default=5.0, metadata=_check(minimum=1, maximum=60))
    # Connections open at once from one IP address; more from it are closed at once.
    max_connections_per_peer: int = field(default=4, metadata=_check(minimum=1, maximum=256))
    # Also accept Secondary Capture Image Storage (scanned films, screenshots).
    secondary_capture: bool = False
    # TLS: our certificate and key (PEM); both or neither. With tls_ca, peers must present a
    # certificate signed by that CA.
    tls_cert: str = field(default="", metadata={"path": True})
    tls_key: str = field(default="", metadata={"path": True})
    tls_ca: str = field(default="", metadata={"path": True})


PACS_OUTPUTS = ("sr", "sc")


@dataclass(frozen=True)
class PacsDestination:
    """One PACS (or other DICOM archive) that ``xray-worker send`` delivers to: a
    ``[[pacs.destinations]]`` table of the config file."""

    # Our name for it: outbox rows and `xray-worker report deliveries` use it.
    name: str = field(default="", metadata=_NAME)
    # Its AE title, host and DICOM port.
    ae_title: str = field(default="", metadata=_AE)
    host: str = field(default="", metadata=_HOST)
    port: int = field(default=104, metadata=_PORT)
    # What it receives: "sr" (a structured report per DICOM input), "sc" (a key image per positive).
    outputs: tuple[str, ...] = PACS_OUTPUTS
    # Ask it to commit to keeping what it stored (N-ACTION, Storage Commitment Push Model).
    storage_commitment: bool = False
    # DICOMweb instead of DICOM: its base URL ("http://pacs:8042/dicom-web"); each batch is one
    # STOW-RS request (POST <url>/studies), and ae_title, host and port are not used.
    dicomweb_url: str = field(
        default="",
        metadata={"pattern": r"(https?://[^\s/@]+(/\S*)?)?", "hint": "an http:// or https:// URL, no user@"},
    )
    # HTTP basic auth for dicomweb_url: the user, and the NAME of the environment variable that
    # holds the password (the password itself is never in the config file, nor logged).
    username: str = ""
    password_env: str = field(
        default="", metadata={"pattern": r"([A-Za-z_][A-Za-z0-9_]*)?", "hint": "an environment variable name"}
    )
    # Seconds to wait for the STOW-RS answer.
    http_timeout: float = field(default=60.0, metadata=_check(minimum=1, maximum=3600))


@dataclass(frozen=True)
class PacsSettings:
    """``xray-worker send``: delivering the outbox's objects to PACS (docs/pacs-delivery.md)."""

    # Where to send; none: nothing is queued or sent.
    destinations: tuple[PacsDestination, ...] = ()
    # Our AE title, the calling AE title of every association (configure it on the PACS).
    ae_title: str = field(default="XRAY_SCREEN", metadata=_AE)
    # Objects per association.
    batch_size: int = field(default=50, metadata=_check(minimum=1, maximum=10_000))
    # Failed attempts of one object before it is marked failed (and left for an operator).
    max_attempts: int = field(default=20, metadata=_check(minimum=1, maximum=1000))
    # Seconds before the first retry, doubling (with jitter) up to backoff_cap.
    backoff_base: float = field(default=30.0, metadata=_check(minimum=0))
    backoff_cap: float = field(default=3600.0, metadata=_check(minimum=0))
    # Seconds between looks at the outbox when nothing is due.
    poll_interval: float = field(default=5.0, metadata=_check(minimum=0.05))
    # Seconds to wait for an association, and for the PACS to answer a request.
    association_timeout: float = field(default=30.0, metadata=_check(minimum=1, maximum=3600))
    # Storage commitment: where our SCP listens for the PACS's N-EVENT-REPORT ("0.0.0.0": every
    # interface). Port 0: no listener; only reports sent on the request's own association count.
    commitment_host: str = "127.0.0.1"
    commitment_port: int = field(default=0, metadata=_check(minimum=0, maximum=65535))
    # Seconds to wait for a report before the objects are sent and committed again.
    commitment_timeout: float = field(default=3600.0, metadata=_check(minimum=1))


_ENV_NAME = {"pattern": r"([A-Za-z_][A-Za-z0-9_]*)?", "hint": "an environment variable name"}
_APP_NAME = {"pattern": r"[^|^~\\&\r\n]{0,180}", "hint": "text without | ^ ~ \\ & or line breaks"}


@dataclass(frozen=True)
class Hl7Destination:
    """One RIS (or interface engine) that ``xray-worker send`` delivers each result's HL7 v2
    ORU^R01 to over MLLP: a ``[[hl7.destinations]]`` table (README, "Telling the RIS and the EHR")."""

    # Our name for it: outbox rows and `xray-worker report deliveries` use it (unique across
    # [[pacs.destinations]], [[hl7.destinations]] and [[fhir.destinations]]).
    name: str = field(default="", metadata=_NAME)
    # Its MLLP listener.
    host: str = field(default="", metadata=_HOST)
    port: int = field(default=2575, metadata=_PORT)
    # MSH-3/4 (us) and MSH-5/6 (it), as its interface engine routes them.
    sending_application: str = field(default="XRAY_SCREEN", metadata=_APP_NAME)
    sending_facility: str = field(default="", metadata=_APP_NAME)
    receiving_application: str = field(default="", metadata=_APP_NAME)
    receiving_facility: str = field(default="", metadata=_APP_NAME)
    # Seconds to wait for the connection, and for each message's ACK (none by then: sent again).
    timeout: float = field(default=30.0, metadata=_check(minimum=0.1, maximum=3600))
    # MLLP over TLS, the server's certificate checked against tls_ca (empty: the system's CAs);
    # tls_cert and tls_key: our client certificate, when the listener asks for one (absolute PEM paths).
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class Hl7Settings:
    """``[hl7]``: where each result's ORU^R01 goes (docs/hl7-fhir.md). Retries, backoff and
    ``max_attempts`` are [pacs]'s: one sender delivers every destination."""

    destinations: tuple[Hl7Destination, ...] = ()


FhirAuth = Literal["none", "bearer", "basic"]


@dataclass(frozen=True)
class FhirDestination:
    """One FHIR R4 server that ``xray-worker send`` POSTs each result's transaction Bundle to: a
    ``[[fhir.destinations]]`` table (README, "Telling the RIS and the EHR")."""

    # Our name for it, unique across every destination (see Hl7Destination.name).
    name: str = field(default="", metadata=_NAME)
    # The server's base URL: the Bundle is POSTed to it as it is.
    base_url: str = field(
        default="",
        metadata={"pattern": r"https?://[^\s/@]+(/\S*)?", "hint": "an http:// or https:// URL, no user@"},
    )
    # "none", "bearer" (Authorization: Bearer <the secret>) or "basic" (username and the secret).
    auth: FhirAuth = "none"
    username: str = ""
    # The NAME of the environment variable that holds the token or password (never the secret).
    secret_env: str = field(default="", metadata=_ENV_NAME)
    # Seconds to wait for the answer.
    timeout: float = field(default=60.0, metadata=_check(minimum=0.1, maximum=3600))


@dataclass(frozen=True)
class FhirSettings:
    """``[fhir]``: where each result's FHIR Bundle goes (docs/hl7-fhir.md); needs the ``ehr`` extra."""

    destinations: tuple[FhirDestination, ...] = ()


Priority = Literal["urgent", "routine"]


@dataclass(frozen=True)
class WorklistSettings:
    """``[worklist]``: the reading priority a result asks for, in the ORU (OBR-27, TQ1) and the
    FHIR DiagnosticReport."""

    priority_positive: Priority = "urgent"
    priority_negative: Priority = "routine"


QueryModel = Literal["study", "patient"]
Retrieve = Literal["get", "move"]
# A daily time window, local time: "20:00-06:00" (past midnight), or empty: any time.
_WINDOW = r"(([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9])?"


@dataclass(frozen=True)
class PullSource:
    """One PACS that ``xray-worker pull`` queries (C-FIND) and retrieves from (C-GET or C-MOVE):
    a ``[[pull.sources]]`` table of the config file (README, "Pulling from a PACS")."""

    # Our name for it: the pull table and `xray-worker report pulls` use it.
    name: str = field(default="", metadata=_NAME)
    # Its AE title (the called AE title), host and DICOM port.
    ae_title: str = field(default="", metadata=_AE)
    host: str = field(default="", metadata=_HOST)
    port: int = field(default=104, metadata=_PORT)
    # Our AE title on these associations (the PACS must know it).
    calling_ae_title: str = field(default="XRAY_SCREEN", metadata=_AE)
    # The Query/Retrieve information model: "study" (Study Root) or "patient" (Patient Root).
    query_model: QueryModel = "study"
    # "get": C-GET, the instances come back on our association (no inbound port); "move":
    # C-MOVE to move_destination, our `receive` SCP, which writes them into the inbox.
    retrieve: Retrieve = "get"
    move_destination: str = field(
        default="", metadata={"pattern": f"({_AE_TITLE})?", "hint": "a DICOM AE title (1-16 characters)"}
    )
    # Series of these modalities are retrieved (upper case).
    modalities: tuple[str, ...] = field(
        default=("CR", "DX"), metadata={"each": r"[A-Z0-9_]{1,16}", "hint": "DICOM modalities, e.g. CR, DX"}
    )
    # Instances retrieved per run at most; the rest wait for the next run.
    max_instances: int = field(default=5000, metadata=_check(minimum=1, maximum=10_000_000))
    # Associations retrieving at once.
    max_retrieves: int = field(default=1, metadata=_check(minimum=1, maximum=16))
    # Retrieve only in this daily window, local time ("20:00-06:00"); empty: any time.
    window: str = field(default="", metadata={"pattern": _WINDOW, "hint": 'a window "HH:MM-HH:MM", or empty'})
    # Seconds to wait for the association, for each DIMSE answer, and for the network.
    association_timeout: float = field(default=30.0, metadata=_check(minimum=1, maximum=3600))
    dimse_timeout: float = field(default=60.0, metadata=_check(minimum=1, maximum=3600))
    network_timeout: float = field(default=60.0, metadata=_check(minimum=1, maximum=3600))
    # Seconds one whole C-FIND may take, its pending answers included.
    query_timeout: float = field(default=600.0, metadata=_check(minimum=1, maximum=86_400))


@dataclass(frozen=True)
class PullSettings:
    """``xray-worker pull``: films queried and retrieved from PACS into [inbox] path, for
    ``watch`` to screen."""

    # Where to pull from; none: `pull` has nothing to do.
    sources: tuple[PullSource, ...] = ()
    # Instances one claim takes (one association retrieves them).
    batch_size: int = field(default=20, metadata=_check(minimum=1, maximum=1000))
    # Seconds a claim holds; a process that died holding one leaves it to others after this.
    lease_seconds: int = field(default=600, metadata=_check(minimum=10))
    # Failed retrieves of one instance before it is left failed (for an operator).
    max_attempts: int = field(default=5, metadata=_check(minimum=1, maximum=1000))
    # A PACS unreachable, busy or silent (not one that refuses): tried this many times in a run,
    # the first included, backoff_base seconds apart, doubling up to backoff_cap; then the run stops.
    connection_attempts: int = field(default=3, metadata=_check(minimum=1, maximum=100))
    backoff_base: float = field(default=30.0, metadata=_check(minimum=0, maximum=3600))
    backoff_cap: float = field(default=600.0, metadata=_check(minimum=0, maximum=86_400))


HeatmapsFor = Literal["positives", "all", "none"]
HEATMAPS_FOR: tuple[str, ...] = typing.get_args(HeatmapsFor)


@dataclass(frozen=True)
class ExplainSettings:
    """``[explain]``: which screened films get a Grad-CAM heatmap, and where it is written
    (docs/heatmaps.md; the stage is ``worker/explain/heatmaps.py``)."""

    # Which screened films get a heatmap: positives (the model's positive verdicts), all, none.
    # "none" by default: the shipped model's maps fail the localisation check (docs/heatmaps.md).
    heatmaps: HeatmapsFor = "none"
    # Where heatmaps are written: <folder>/<date>/<content sha256>.png.
    folder: Path = DEFAULT_VAR / "heatmaps"
    # The overlay's long side at most (pixels); smaller films keep their size.
    max_side: int = field(default=1024, metadata=_check(minimum=64, maximum=8192))

    def wants(self, label: str, positive_class: str) -> bool:
        """Whether a film screened with ``label`` gets a heatmap."""
        return self.heatmaps == "all" or (self.heatmaps == "positives" and label == positive_class)


# A listen address for the metrics endpoint: host:port, [v6]:port, or empty (off).
_LISTEN = r"((\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5})?"


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: Prometheus metrics (docs/monitoring.md, ``worker/metrics``)."""

    # Where a long-running command (watch, receive, send) serves /metrics, "host:port";
    # empty: off. One port per process (the units use 9108, 9109, 9110).
    listen: str = field(
        default="", metadata={"pattern": _LISTEN, "hint": 'host:port, e.g. "127.0.0.1:9108", or empty'}
    )
    # A scan writes its summary metrics to this file at the end, in the textfile format of
    # node_exporter's textfile collector; empty: none (`scan --metrics-file` sets it too).
    textfile: str = field(default="", metadata={"path": True})


NOTIFY_EVENTS = ("positive", "failure", "drift", "started", "stopped")


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: JSON webhooks on events (docs/monitoring.md, ``worker/notify``)."""

    # Webhook URLs each event is POSTed to; empty: no notifications.
    urls: tuple[str, ...] = field(
        default=(), metadata={"each": r"https?://[^\s/@]+(/\S*)?", "hint": "http(s):// URLs, no user@"}
    )
    # The events sent: positive, failure, drift, started, stopped.
    events: tuple[str, ...] = field(
        default=NOTIFY_EVENTS, metadata={"each": "|".join(NOTIFY_EVENTS), "hint": ", ".join(NOTIFY_EVENTS)}
    )
    # Seconds one POST may take.
    timeout: float = field(default=5.0, metadata=_check(minimum=0.1, maximum=300))
    # Attempts per delivery; 5xx answers, timeouts and refused connections are tried again.
    max_attempts: int = field(default=4, metadata=_check(minimum=1, maximum=100))
    # Seconds before the first retry, doubling up to backoff_cap.
    backoff_base: float = field(default=1.0, metadata=_check(minimum=0))
    backoff_cap: float = field(default=30.0, metadata=_check(minimum=0))
    # Events waiting to be sent, at most; when full the oldest is dropped (and counted).
    queue_size: int = field(default=1000, metadata=_check(minimum=1, maximum=1_000_000))
    # Seconds a stopping process keeps sending what is queued.
    flush_seconds: float = field(default=5.0, metadata=_check(minimum=0, maximum=600))
    # The NAME of an environment variable holding a bearer token (Authorization: Bearer ...).
    token_env: str = field(
        default="", metadata={"pattern": r"([A-Za-z_][A-Za-z0-9_]*)?", "hint": "an environment variable name"}
    )
    # Also send DICOM Patient ID and Accession Number; never the name or birth date.
    include_patient_data: bool = False


@dataclass(frozen=True)
class DriftSettings:
    """``[drift]``: ``xray-worker report drift``, the recent window against a reference (docs/drift.md)."""

    # What the window is compared with: "site-profile" (the site baseline stored beside the
    # model), a period "2026-11-01..2026-11-30" (UTC dates, both included), or a duration
    # "28d" (that long just before the window).
    reference: str = field(
        default="site-profile",
        metadata={
            "pattern": r"site-profile|\d+[mhdw]|[0-9][0-9:T+-]*\.\.[0-9][0-9:T+-]*",
            "hint": '"site-profile", a period "2026-11-01..2026-11-30", or a duration "28d"',
        },
    )
    # The recent window: the last 7d, 48h, 2w...
    window: str = field(default="7d", metadata={"pattern": r"\d+[mhdw]", "hint": "a duration: 7d, 48h, 2w"})
    # Each figure's significance level (its false alarms per run, at most).
    alpha: float = field(default=0.001, metadata=_check(minimum=1e-9, maximum=0.5))
    # Films a figure needs on each side to be judged.
    min_films: int = field(default=30, metadata=_check(minimum=1))


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    gate: GateSettings = field(default_factory=GateSettings)
    receive: ReceiveSettings = field(default_factory=ReceiveSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    pull: PullSettings = field(default_factory=PullSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    explain: ExplainSettings = field(default_factory=ExplainSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    # The file the settings came from, if any (for messages).
    source: Path | None = None


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.default_factory is not dataclasses.MISSING
}


def load_settings(
    config_path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and flag overrides.

    ``overrides`` maps dotted keys (``"inference.batch_size"``) to values; ``None`` values
    are ignored so click options can be passed straight through.
    """
    environ = os.environ if environ is None else environ
    if config_path is None and environ.get(CONFIG_ENV):
        config_path = Path(environ[CONFIG_ENV])
    raw: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in SECTIONS}

    if config_path is not None:
        _layer_file(raw, config_path)
    _layer_env(raw, environ)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _known(section, key, f"command-line option for {dotted}")
        raw[section][key] = (value, "the command line")

    sections = {name: _build(cls, name, raw[name]) for name, cls in SECTIONS.items()}
    _names_unique(sections, str(config_path))
    return Settings(**sections, source=config_path)


def _names_unique(sections: Mapping[str, Any], where: str) -> None:
    """The outbox keys its rows by destination name: one name, one destination, whatever its kind."""
    seen: dict[str, str] = {}
    for section in ("pacs", "hl7", "fhir"):
        for destination in sections[section].destinations:
            if destination.name in seen:
                raise ConfigError(
                    f"{where}: [[{section}.destinations]] name = {destination.name!r}: used by a "
                    f"[[{seen[destination.name]}.destinations]] destination too; names are unique across them"
                )
            seen[destination.name] = section


def _layer_file(raw: dict[str, dict[str, tuple[Any, str]]], path: Path) -> None:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in table.items():
            _known(section, key, where)
            if isinstance(value, str) and _field(section, key).type in ("Path", Path):
                value = _relative_to(path.parent, value)
            elif isinstance(value, str) and value and _field(section, key).metadata.get("path"):
                value = _relative_to(path.parent, value)  # an optional path: "" stays "" (none)
            elif isinstance(value, str) and _field(section, key).metadata.get("sqlite_url"):
                value = _sqlite_url_relative_to(path.parent, value)
            elif isinstance(value, list) and _field(section, key).metadata.get("paths"):
                value = [_relative_to(path.parent, v) if isinstance(v, str) else v for v in value]
            raw[section][key] = (value, where)


def _relative_to(base: Path, value: str) -> str:
    """Relative paths in a config file are relative to the file's own folder."""
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else base.resolve() / candidate)


def _sqlite_url_relative_to(base: Path, url: str) -> str:
    """``sqlite:///results.db`` in a config file names a file beside it, like other paths."""
    match = re.fullmatch(r"(sqlite(?:\+\w+)?:///)([^?]+)(\?.*)?", url)
    if match is None or match[2] == ":memory:":
        return url
    return f"{match[1]}{_relative_to(base, match[2])}{match[3] or ''}"


def _layer_env(raw: dict[str, dict[str, tuple[Any, str]]], environ: Mapping[str, str]) -> None:
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"{ENV_PREFIX}{section}_{f.name}".upper()
            if name in environ:
                raw[section][f.name] = (environ[name], f"environment variable {name}")


def _field(section: str, key: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(key)


def _known(section: str, key: str, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section [{section}]")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in names:
        raise ConfigError(f"{where}: unknown key [{section}] {key}; known: {', '.join(names)}")


def _build(cls: type, section: str, values: Mapping[str, tuple[Any, str]]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, where = values[f.name]
        if hints[f.name] == tuple[PacsDestination, ...]:
            kwargs[f.name] = _destinations(value, where)
            continue
        if hints[f.name] == tuple[PullSource, ...]:
            kwargs[f.name] = _pull_sources(value, where)
            continue
        if hints[f.name] in (tuple[Hl7Destination, ...], tuple[FhirDestination, ...]):
            kwargs[f.name] = _ris_destinations(value, where, section, typing.get_args(hints[f.name])[0])
            continue
        label = f"{where}: [{section}] {f.name} = {value!r}"
        kwargs[f.name] = _coerce(hints[f.name], value, label)
        _check_range(f, kwargs[f.name], label)
    return cls(**kwargs)


def _tables(value: Any, where: str, name: str, cls: type) -> Iterator[tuple[str, dict[str, Any]]]:
    """``[[name]]`` tables (``name`` is "section.key"), each with its label ("name #2") and
    its keys checked against ``cls``."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        section, _, key = name.partition(".")
        raise ConfigError(f"{where}: [{section}] {key} must be [[{name}]] tables in the config file")
    names = [f.name for f in dataclasses.fields(cls)]
    for number, table in enumerate(value, 1):
        for key in table:
            if key not in names:
                known = ", ".join(names)
                raise ConfigError(f"{where}: [{name} #{number}]: unknown key {key}; known: {known}")
        yield f"{name} #{number}", table


def _destinations(value: Any, where: str) -> tuple[PacsDestination, ...]:
    """``[[pacs.destinations]]`` tables, each checked like a section of its own."""
    built: list[PacsDestination] = []
    for section, table in _tables(value, where, "pacs.destinations", PacsDestination):
        needs = (
            ("name", "dicomweb_url") if table.get("dicomweb_url") else ("name", "ae_title", "host", "port")
        )
        missing = [k for k in needs if k not in table]
        if missing:
            raise ConfigError(f"{where}: [{section}] needs {', '.join(missing)}")
        destination = _build(PacsDestination, section, {k: (v, where) for k, v in table.items()})
        if destination.dicomweb_url and destination.storage_commitment:
            raise ConfigError(
                f"{where}: [{section}] storage_commitment = true: not with dicomweb_url "
                "(STOW-RS has no storage commitment); use one or the other"
            )
        if bool(destination.username) != bool(destination.password_env):
            raise ConfigError(
                f"{where}: [{section}] username and password_env go together: set both or neither"
            )
        if destination.username and not destination.dicomweb_url:
            raise ConfigError(f"{where}: [{section}] username: only for a dicomweb_url destination")
        unknown = sorted(set(destination.outputs) - set(PACS_OUTPUTS))
        if unknown or not destination.outputs:
            raise ConfigError(
                f"{where}: [{section}] outputs = {list(destination.outputs)!r}: choose from sr, sc"
            )
        if destination.name in {d.name for d in built}:
            raise ConfigError(
                f"{where}: [{section}] name = {destination.name!r}: used by another destination"
            )
        built.append(destination)
    return tuple(built)


def _ris_destinations(value: Any, where: str, section: str, cls: type) -> tuple[Any, ...]:
    """``[[hl7.destinations]]`` or ``[[fhir.destinations]]`` tables, each checked like a section."""
    built: list[Any] = []
    needs = ("name", "host", "port") if cls is Hl7Destination else ("name", "base_url")
    for label, table in _tables(value, where, f"{section}.destinations", cls):
        missing = [k for k in needs if k not in table]
        if missing:
            raise ConfigError(f"{where}: [{label}] needs {', '.join(missing)}")
        destination = _build(cls, label, {k: (v, where) for k, v in table.items()})
        named = f"{where}: [{label}] ({destination.name})"
        if cls is FhirDestination and (destination.auth == "none") != (not destination.secret_env):
            raise ConfigError(
                f"{named} auth = {destination.auth!r}: secret_env names the variable holding the "
                "token or password for bearer and basic, and only for them"
            )
        if cls is FhirDestination and (destination.auth == "basic") != bool(destination.username):
            raise ConfigError(f"{named} username: needed with auth = 'basic', and only with it")
        if cls is Hl7Destination and not destination.tls and (destination.tls_ca or destination.tls_cert):
            raise ConfigError(f"{named} tls_ca, tls_cert: only with tls = true")
        if cls is Hl7Destination and bool(destination.tls_cert) != bool(destination.tls_key):
            raise ConfigError(f"{named} tls_cert and tls_key go together: set both or neither")
        if destination.name in {d.name for d in built}:
            raise ConfigError(f"{named} name = {destination.name!r}: used by another destination")
        built.append(destination)
    return tuple(built)


def _pull_sources(value: Any, where: str) -> tuple[PullSource, ...]:
    """``[[pull.sources]]`` tables, each checked like a section of its own."""
    built: list[PullSource] = []
    for section, table in _tables(value, where, "pull.sources", PullSource):
        missing = [k for k in ("name", "ae_title", "host") if k not in table]
        if missing:
            raise ConfigError(f"{where}: [{section}] needs {', '.join(missing)}")
        source = _build(PullSource, section, {k: (v, where) for k, v in table.items()})
        label = f"{where}: [{section}] ({source.name})"
        if source.retrieve == "move" and not source.move_destination:
            raise ConfigError(
                f"{label} retrieve = 'move' needs move_destination: the AE title of our "
                "`xray-worker receive` ([receive] ae_title), known to the PACS as a move destination"
            )
        if not source.modalities:
            raise ConfigError(f"{label} modalities = []: name at least one, e.g. ['CR', 'DX']")
        if source.window and source.window[:5] == source.window[6:]:
            raise ConfigError(f"{label} window = {source.window!r}: starts and ends at the same time")
        if source.name in {s.name for s in built}:
            raise ConfigError(f"{label} name = {source.name!r}: used by another source")
        built.append(source)
    return tuple(built)


def _coerce(hint: Any, value: Any, label: str) -> Any:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{label}: must be one of {', '.join(map(str, choices))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{label}: must be true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{label}: must be a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}: must be a whole number") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{label}: must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}: must be a number") from None
    if hint == tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{label}: must be a list of strings")
        return tuple(i.strip() for i in items if i.strip())
    if hint is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{label}: must be a file path")
        return Path(value).expanduser()
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label}: must be a string")
        return value
    raise ConfigError(f"{label}: unsupported setting type {hint}")  # pragma: no cover


def _check_range(f: dataclasses.Field[Any], value: Any, label: str) -> None:
    minimum, maximum = f.metadata.get("minimum"), f.metadata.get("maximum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{label}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{label}: must be at most {maximum}")
    pattern = f.metadata.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{label}: must be {f.metadata['hint']}")
    each = f.metadata.get("each")  # a pattern each item of a list must match
    if each is not None and not all(re.fullmatch(each, item) for item in value):
        raise ConfigError(f"{label}: must be {f.metadata['hint']}")
