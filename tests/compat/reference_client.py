#!/usr/bin/env python3
"""Compatibility check: a client generated from the REFERENCE system-API protos drives our Kingdom.

The reference (world-federation-of-advertisers/cross-media-measurement) defines the system API
`wfa.measurement.system.v1alpha` that duchies use to talk to the Kingdom. halo-host keeps its own
copies of those .proto files, written to be wire-compatible. This script proves it from the
outside: it compiles the reference .proto files (never stored in this repository; their location
is an argument) with grpc_tools.protoc into a temporary directory, and uses only those generated
stubs for every system-API call. Our own admin API (proto/halo/v1/admin.proto: CreateMeasurement,
ListRequisitions, GetMeasurement) is compiled against the same reference system protos, which it
imports by the same paths.

It then drives one Honest Majority Share Shuffle (HMSS) measurement through the whole Kingdom
state machine over mutual TLS, each party with its own certificate:

    mc1         CreateMeasurement (admin)                  -> PENDING_REQUISITION_PARAMS
    each duchy  StreamActiveComputations(""), GetComputation, GetComputationParticipant,
                SetParticipantRequisitionParams            -> PENDING_REQUISITION_FULFILLMENT
    each EDP    ListRequisitions (admin); the requisition's assigned duchy calls
                Requisitions.FulfillRequisition            -> PENDING_COMPUTATION
    each duchy  StreamActiveComputations(<token from the first stream>) shows the new state
    worker1     SetComputationResult                       -> PERMISSION_DENIED (negative check)
    aggregator  SetComputationResult                       -> SUCCEEDED, result round-trips

Every step prints PASS or FAIL; the first failure skips the rest; the exit status is non-zero on
any failure. The last line reads "compat: N passed, N failed, N skipped".

Usage (normally through tests/compat/run.sh, which makes the venv):

    # against a Kingdom that is already running
    reference_client.py --reference-protos /tmp/ref/src/main/proto \\
        --kingdom 127.0.0.1:PORT --pki PKI_DIR
    # start a Kingdom from the `halo` binary (temp PKI, data dir and port), then stop it
    reference_client.py --reference-protos /tmp/ref/src/main/proto --spawn target/debug/halo
    # only generate and import the stubs (no Kingdom needed)
    reference_client.py --reference-protos /tmp/ref/src/main/proto --generate-only

Instead of --reference-protos DIR, --reference-git GIT_DIR reads the reference system protos
straight from a (bare) clone of the reference repository into a temporary directory.

PKI directory layout (what `halo pki --out DIR` writes): {DIR}/trust.pem and {DIR}/{stem}/cert.pem,
{DIR}/{stem}/key.pem for the stems kingdom, duchy-aggregator, duchy-worker1, duchy-worker2,
edp-edp1, edp-edp2, mc-mc1. The Kingdom's certificate must be valid for "localhost".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]

# Where the system protos live inside a proto root, and the services whose stubs we need. Every
# .proto these import (transitively) is compiled too; nothing else is.
SYSTEM_DIR = "wfa/measurement/system/v1alpha"
REFERENCE_SERVICE_PROTOS = [
    f"{SYSTEM_DIR}/computations_service.proto",
    f"{SYSTEM_DIR}/computation_participants_service.proto",
    f"{SYSTEM_DIR}/requisitions_service.proto",
]
# Our admin API, relative to halo-host's proto root.
ADMIN_PROTO = "halo/v1/admin.proto"
# Path of the system protos inside the reference repository (for --reference-git).
REFERENCE_REPO_PROTO_ROOT = "src/main/proto"

GOOGLE_API_PROTOS = ("field_behavior.proto", "resource.proto", "client.proto")

AGGREGATOR = "aggregator"
WORKERS = ("worker1", "worker2")
DUCHIES = (AGGREGATOR, *WORKERS)
EDPS = ("edp1", "edp2")
MEASUREMENT_CONSUMER = "mc1"
TLS_SERVER_NAME = "localhost"
# ECDSA with SHA-256, the signature algorithm the reference duchies use for their tink keys.
ECDSA_SHA256_OID = "1.2.840.10045.4.3.2"
PUBLIC_API_VERSION = "v2alpha"


# --------------------------------------------------------------------------------------------
# Minimal stand-ins for google/api/*.proto
#
# The reference protos annotate fields, messages and methods with google.api options. protoc only
# needs the extension declarations to parse them; the values play no part on the wire. The PyPI
# package googleapis-common-protos ships the real files (and their Python modules), which are
# used when present. These stand-ins (our own minimal declarations, with the same extension
# numbers) are the fallback when it is not installed, or when --google-api standin is given.
# --------------------------------------------------------------------------------------------
STANDIN_GOOGLE_API = {
    "field_behavior.proto": """\
// Stand-in written by halo-host tests/compat/reference_client.py: only what protoc needs to parse
// `(google.api.field_behavior) = ...` options.
syntax = "proto3";
package google.api;
import "google/protobuf/descriptor.proto";
enum FieldBehavior {
  FIELD_BEHAVIOR_UNSPECIFIED = 0;
  OPTIONAL = 1;
  REQUIRED = 2;
  OUTPUT_ONLY = 3;
  INPUT_ONLY = 4;
  IMMUTABLE = 5;
  UNORDERED_LIST = 6;
  NON_EMPTY_DEFAULT = 7;
  IDENTIFIER = 8;
}
extend google.protobuf.FieldOptions {
  repeated FieldBehavior field_behavior = 1052 [packed = false];
}
""",
    "resource.proto": """\
// Stand-in written by halo-host tests/compat/reference_client.py: only what protoc needs to parse
// `(google.api.resource)` and `(google.api.resource_reference)` options.
syntax = "proto3";
package google.api;
import "google/protobuf/descriptor.proto";
message ResourceDescriptor {
  enum History {
    HISTORY_UNSPECIFIED = 0;
    ORIGINALLY_SINGLE_PATTERN = 1;
    FUTURE_MULTI_PATTERN = 2;
  }
  enum Style {
    STYLE_UNSPECIFIED = 0;
    DECLARATIVE_FRIENDLY = 1;
  }
  string type = 1;
  repeated string pattern = 2;
  string name_field = 3;
  History history = 4;
  string plural = 5;
  string singular = 6;
  repeated Style style = 10;
}
message ResourceReference {
  string type = 1;
  string child_type = 2;
}
extend google.protobuf.FieldOptions {
  ResourceReference resource_reference = 1055;
}
extend google.protobuf.FileOptions {
  repeated ResourceDescriptor resource_definition = 1053;
}
extend google.protobuf.MessageOptions {
  ResourceDescriptor resource = 1053;
}
""",
    "client.proto": """\
// Stand-in written by halo-host tests/compat/reference_client.py: only what protoc needs to parse
// `(google.api.method_signature)` and related service options.
syntax = "proto3";
package google.api;
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions {
  repeated string method_signature = 1051;
}
extend google.protobuf.ServiceOptions {
  string default_host = 1049;
  string oauth_scopes = 1050;
}
""",
}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """An expectation about the Kingdom's behaviour did not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def run(self, title: str, fn: Callable[[], str | None]) -> bool:
        """Runs one step; prints PASS/FAIL with a detail line. Returns whether it passed."""
        try:
            detail = fn()
        except CheckFailed as e:
            self.fail(title, str(e))
            return False
        except Exception as e:  # noqa: BLE001 - report anything (RpcError, I/O, ...) as a FAIL
            self.fail(title, describe_error(e))
            return False
        self.passed += 1
        print(f"PASS  {title}" + (f"\n      {detail}" if detail else ""), flush=True)
        return True

    def fail(self, title: str, why: str) -> None:
        self.failed += 1
        print(f"FAIL  {title}\n      {why}", flush=True)

    def skip(self, title: str) -> None:
        self.skipped += 1
        print(f"SKIP  {title}", flush=True)

    def summary(self) -> str:
        return f"compat: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def describe_error(e: BaseException) -> str:
    import grpc  # imported lazily: --help works without the venv

    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"RPC failed: {e.code().name}: {e.details()}"
    if isinstance(e, CheckFailed):
        return str(e)
    return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------
# Step 1: generate Python stubs from the reference protos (+ our admin proto) and import them
# --------------------------------------------------------------------------------------------
IMPORT_RE = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def import_closure(include_dirs: list[Path], start: list[str]) -> list[str]:
    """The given .proto files plus everything they import that is found in include_dirs
    (first match wins, as in protoc). Imports found nowhere (google/protobuf/*, google/api/*) are
    left to protoc's other include paths."""
    seen: dict[str, Path] = {}
    todo = list(start)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        path = next((d / rel for d in include_dirs if (d / rel).is_file()), None)
        if path is None:
            if rel in start:
                raise CheckFailed(f"{rel} not found under {', '.join(map(str, include_dirs))}")
            continue
        seen[rel] = path
        todo.extend(IMPORT_RE.findall(path.read_text(encoding="utf-8")))
    return sorted(seen)


def reference_root_from_arg(path: Path) -> Path:
    """Accepts the reference proto root itself, or a checkout whose src/main/proto is it."""
    for candidate in (path, path / REFERENCE_REPO_PROTO_ROOT):
        if (candidate / SYSTEM_DIR / "computations_service.proto").is_file():
            return candidate.resolve()
    raise CheckFailed(
        f"{path} is not a reference proto root: no {SYSTEM_DIR}/computations_service.proto in it"
        f" (nor under {REFERENCE_REPO_PROTO_ROOT}/)"
    )


def extract_reference_from_git(git_dir: Path, rev: str, dest: Path) -> Path:
    """Copies the reference system protos out of a (bare) git repository into dest, read-only
    use of the repository: `git ls-tree` + `git show`. Returns the proto root under dest."""
    tree = f"{REFERENCE_REPO_PROTO_ROOT}/{SYSTEM_DIR}"
    names = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "--name-only", f"{rev}:{tree}"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    protos = [n for n in names if n.endswith(".proto")]
    check(protos, f"no .proto files at {rev}:{tree} in {git_dir}")
    out = dest / SYSTEM_DIR
    out.mkdir(parents=True)
    for name in protos:
        blob = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{rev}:{tree}/{name}"],
            check=True, capture_output=True,
        ).stdout
        (out / name).write_bytes(blob)
    return dest


def google_api_include_from_package() -> Path | None:
    """The include root of googleapis-common-protos' shipped google/api/*.proto, if installed."""
    try:
        import google.api.field_behavior_pb2 as fb  # noqa: PLC0415
    except ImportError:
        return None
    api_dir = Path(fb.__file__).parent
    if all((api_dir / name).is_file() for name in GOOGLE_API_PROTOS):
        return api_dir.parent.parent
    return None


@dataclass
class Stubs:
    """The imported generated modules (reference system API + our admin API)."""

    gen_dir: Path
    google_api_source: str
    compiled: list[str]
    computation_pb2: object = None
    computation_participant_pb2: object = None
    requisition_pb2: object = None
    computations_service_pb2: object = None
    computations_service_pb2_grpc: object = None
    computation_participants_service_pb2: object = None
    computation_participants_service_pb2_grpc: object = None
    requisitions_service_pb2: object = None
    requisitions_service_pb2_grpc: object = None
    admin_pb2: object = None
    admin_pb2_grpc: object = None


def generate_stubs(reference_root: Path, admin_root: Path, work: Path, google_api: str) -> Stubs:
    import importlib.resources

    from grpc_tools import protoc

    # Our admin proto goes into an include dir of its own, so that protoc can only resolve its
    # `import "wfa/measurement/system/v1alpha/..."` lines to the REFERENCE files.
    admin_src = admin_root / ADMIN_PROTO
    check(admin_src.is_file(), f"admin proto not found: {admin_src}")
    admin_inc = work / "include-admin"
    (admin_inc / ADMIN_PROTO).parent.mkdir(parents=True)
    shutil.copyfile(admin_src, admin_inc / ADMIN_PROTO)

    # google/api/*.proto: the shipped files from googleapis-common-protos, or our stand-ins.
    google_inc = None if google_api == "standin" else google_api_include_from_package()
    if google_inc is None and google_api == "package":
        raise CheckFailed("googleapis-common-protos with google/api/*.proto is not installed")
    generate_google_api = google_inc is None
    if generate_google_api:
        google_inc = work / "include-google-api-standin"
        (google_inc / "google/api").mkdir(parents=True)
        for name, text in STANDIN_GOOGLE_API.items():
            (google_inc / "google/api" / name).write_text(text, encoding="utf-8")
        source = f"stand-ins written to {google_inc}"
    else:
        source = f"googleapis-common-protos ({google_inc}/google/api)"

    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    include_dirs = [reference_root, admin_inc, google_inc, well_known]

    files = import_closure([reference_root, admin_inc], [*REFERENCE_SERVICE_PROTOS, ADMIN_PROTO])
    if generate_google_api:
        files += [f"google/api/{name}" for name in GOOGLE_API_PROTOS]

    gen = work / "gen"
    gen.mkdir()
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in include_dirs),
            f"--python_out={gen}", f"--grpc_python_out={gen}", *files]
    rc = protoc.main(args)
    check(rc == 0, f"protoc exited {rc} (its errors are printed above); command: {' '.join(args)}")

    if generate_google_api:
        # Make the generated google.api a regular package so that it wins over any installed one.
        (gen / "google/api/__init__.py").touch()
    sys.path.insert(0, str(gen))
    importlib.invalidate_caches()

    stubs = Stubs(gen_dir=gen, google_api_source=source, compiled=files)
    modules = {
        "computation_pb2": f"{SYSTEM_DIR}/computation_pb2",
        "computation_participant_pb2": f"{SYSTEM_DIR}/computation_participant_pb2",
        "requisition_pb2": f"{SYSTEM_DIR}/requisition_pb2",
        "computations_service_pb2": f"{SYSTEM_DIR}/computations_service_pb2",
        "computations_service_pb2_grpc": f"{SYSTEM_DIR}/computations_service_pb2_grpc",
        "computation_participants_service_pb2":
            f"{SYSTEM_DIR}/computation_participants_service_pb2",
        "computation_participants_service_pb2_grpc":
            f"{SYSTEM_DIR}/computation_participants_service_pb2_grpc",
        "requisitions_service_pb2": f"{SYSTEM_DIR}/requisitions_service_pb2",
        "requisitions_service_pb2_grpc": f"{SYSTEM_DIR}/requisitions_service_pb2_grpc",
        "admin_pb2": "halo/v1/admin_pb2",
        "admin_pb2_grpc": "halo/v1/admin_pb2_grpc",
    }
    for attr, path in modules.items():
        module = importlib.import_module(path.replace("/", "."))
        check(Path(module.__file__).resolve().is_relative_to(gen.resolve()),
              f"{module.__name__} was imported from {module.__file__}, not from {gen}")
        setattr(stubs, attr, module)
    return stubs


def verify_stubs(stubs: Stubs) -> str:
    """Sanity checks that the generated code really is the reference's, annotations included,
    and that the admin API links against those same reference descriptors."""
    from google.api import client_pb2, field_behavior_pb2, resource_pb2

    cs = stubs.computations_service_pb2
    method = cs.DESCRIPTOR.services_by_name["Computations"].methods_by_name["GetComputation"]
    check(list(method.GetOptions().Extensions[client_pb2.method_signature]) == ["name"],
          "GetComputation lacks the reference's (google.api.method_signature) = \"name\"")
    name_field = cs.GetComputationRequest.DESCRIPTOR.fields_by_name["name"]
    check(field_behavior_pb2.REQUIRED in name_field.GetOptions().Extensions[
        field_behavior_pb2.field_behavior], "GetComputationRequest.name is not REQUIRED")
    resource = stubs.computation_pb2.Computation.DESCRIPTOR.GetOptions().Extensions[
        resource_pb2.resource]
    check(list(resource.pattern) == ["computations/{computation}"],
          f"unexpected Computation resource pattern {list(resource.pattern)}")
    check(hasattr(cs, "StreamActiveComputationsContinuationToken"),
          "reference computations_service.proto has no StreamActiveComputationsContinuationToken")

    # halo.v1.admin must use the reference's Computation / Requisition descriptors.
    admin = stubs.admin_pb2
    dp_req = admin.DataProviderRequisition.DESCRIPTOR
    check(dp_req.fields_by_name["computation"].message_type
          is stubs.computation_pb2.Computation.DESCRIPTOR,
          "halo.v1 admin's Computation is not the reference descriptor")
    check(dp_req.fields_by_name["requisition"].message_type
          is stubs.requisition_pb2.Requisition.DESCRIPTOR,
          "halo.v1 admin's Requisition is not the reference descriptor")
    services = [s for m in (stubs.computations_service_pb2,
                            stubs.computation_participants_service_pb2,
                            stubs.requisitions_service_pb2, admin)
                for s in m.DESCRIPTOR.services_by_name]
    return (f"{len(stubs.compiled)} .proto files compiled ({', '.join(stubs.compiled)}); "
            f"google/api from {stubs.google_api_source}; services: {', '.join(services)}")


# --------------------------------------------------------------------------------------------
# mTLS identities
# --------------------------------------------------------------------------------------------
PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass
class Identity:
    """One party's certificate and key from the PKI directory, and channels that present them."""

    stem: str
    cert_pem: bytes
    key_pem: bytes
    trust_pem: bytes
    leaf_der: bytes
    channels: list = field(default_factory=list)

    @classmethod
    def load(cls, pki: Path, stem: str) -> "Identity":
        cert_pem = (pki / stem / "cert.pem").read_bytes()
        key_pem = (pki / stem / "key.pem").read_bytes()
        trust_pem = (pki / "trust.pem").read_bytes()
        leaf = PEM_CERT_RE.search(cert_pem)
        check(leaf, f"{pki / stem / 'cert.pem'} holds no PEM certificate")
        leaf_der = ssl.PEM_cert_to_DER_cert(leaf.group(0).decode("ascii"))
        return cls(stem, cert_pem, key_pem, trust_pem, leaf_der)

    @property
    def certificate_id(self) -> str:
        """Our Kingdom's certificate id: first 8 bytes of SHA-256(leaf DER), lowercase hex."""
        return hashlib.sha256(self.leaf_der).digest()[:8].hex()

    def channel(self, target: str):
        import grpc

        creds = grpc.ssl_channel_credentials(
            root_certificates=self.trust_pem, private_key=self.key_pem,
            certificate_chain=self.cert_pem)
        ch = grpc.secure_channel(target, creds, options=[
            ("grpc.ssl_target_name_override", TLS_SERVER_NAME),
            # One connection per identity: never share a subchannel (and its client
            # certificate) between parties.
            ("grpc.use_local_subchannel_pool", 1),
            # Loopback only: ignore any http(s)_proxy in the environment.
            ("grpc.enable_http_proxy", 0),
        ])
        self.channels.append(ch)
        return ch

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        self.channels.clear()


def duchy_certificate_name(duchy: str, ident: Identity) -> str:
    return f"duchies/{duchy}/certificates/{ident.certificate_id}"


# --------------------------------------------------------------------------------------------
# Continuation tokens and API ids
# --------------------------------------------------------------------------------------------
def b64url_decode_nopad(text: str) -> bytes:
    check(re.fullmatch(r"[A-Za-z0-9_-]+", text),
          f"{text!r} is not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def external_id_of(api_id: str) -> int | None:
    """Reference API ids are base64url (no padding) of an 8-byte big-endian int64."""
    try:
        raw = b64url_decode_nopad(api_id)
    except (CheckFailed, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------
class Scenario:
    def __init__(self, stubs: Stubs, target: str, pki: Path, rpc_timeout: float,
                 stream_timeout: float) -> None:
        import grpc

        self.grpc = grpc
        self.s = stubs
        self.rpc_timeout = rpc_timeout
        self.stream_timeout = stream_timeout
        self.ids = {d: Identity.load(pki, f"duchy-{d}") for d in DUCHIES}
        self.ids.update({e: Identity.load(pki, f"edp-{e}") for e in EDPS})
        self.ids[MEASUREMENT_CONSUMER] = Identity.load(pki, f"mc-{MEASUREMENT_CONSUMER}")

        s = stubs
        # Reference system-API stubs, one set per duchy, each on that duchy's own channel.
        self.computations = {}
        self.participants = {}
        self.requisitions = {}
        for d in DUCHIES:
            ch = self.ids[d].channel(target)
            self.computations[d] = s.computations_service_pb2_grpc.ComputationsStub(ch)
            self.participants[d] = (
                s.computation_participants_service_pb2_grpc.ComputationParticipantsStub(ch))
            self.requisitions[d] = s.requisitions_service_pb2_grpc.RequisitionsStub(ch)
        # Our admin API for the consumer and the data providers.
        self.measurements = s.admin_pb2_grpc.MeasurementsStub(
            self.ids[MEASUREMENT_CONSUMER].channel(target))
        self.dp_requisitions = {
            e: s.admin_pb2_grpc.DataProviderRequisitionsStub(self.ids[e].channel(target))
            for e in EDPS}

        # Shared state between steps.
        self.nonces = {e: secrets.randbits(63) | 1 for e in EDPS}  # non-zero fixed64
        self.nonce_hashes = {e: hashlib.sha256(n.to_bytes(8, "big")).digest()
                             for e, n in self.nonces.items()}
        self.encrypted_specs = {e: f"encrypted-requisition-spec-{e}-".encode()
                                + secrets.token_bytes(16) for e in EDPS}
        self.measurement_spec = b""
        self.measurement = None
        self.computation_name = ""
        self.first_tokens: dict[str, str] = {}
        self.resumed_tokens: dict[str, str] = {}

    def close(self) -> None:
        for ident in self.ids.values():
            ident.close()

    # -- helpers -------------------------------------------------------------------------------
    def state_name(self, state: int) -> str:
        return self.s.computation_pb2.Computation.State.Name(state)

    def get_computation(self, duchy: str):
        req = self.s.computations_service_pb2.GetComputationRequest(name=self.computation_name)
        return self.computations[duchy].GetComputation(req, timeout=self.rpc_timeout)

    def expect_state(self, computation, want: str) -> None:
        got = self.state_name(computation.state)
        check(got == want, f"{computation.name}: state {got}, expected {want}")

    def stream_until(self, duchy: str, token: str, accept: Callable[[object], bool],
                     reject: Callable[[object], str | None] = lambda c: None):
        """Reads StreamActiveComputations(token) as `duchy` until a response whose computation
        `accept`s; fails on the deadline or if `reject` returns a reason. Cancels the stream."""
        req = self.s.computations_service_pb2.StreamActiveComputationsRequest(
            continuation_token=token)
        call = self.computations[duchy].StreamActiveComputations(
            req, timeout=self.stream_timeout)
        seen = 0
        try:
            for resp in call:
                seen += 1
                why = reject(resp.computation)
                check(why is None, why or "")
                if accept(resp.computation):
                    return resp, seen
        except self.grpc.RpcError as e:
            if e.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CheckFailed(
                    f"{self.computation_name} did not appear as expected within "
                    f"{self.stream_timeout:g}s ({seen} responses read)") from None
            raise
        finally:
            call.cancel()
        raise CheckFailed(f"stream ended after {seen} responses without the expected computation")

    # -- steps ---------------------------------------------------------------------------------
    def create_measurement(self) -> str:
        admin = self.s.admin_pb2
        spec = admin.MeasurementSpec(
            measurement_public_key=b"mc1-measurement-public-key",
            type=admin.MeasurementSpec.REACH_AND_FREQUENCY,
            maximum_frequency=5,
            vid_sampling_interval_start=0.0,
            vid_sampling_interval_width=1.0,
            nonce_hashes=[self.nonce_hashes[e] for e in EDPS],
        )
        spec.reach_privacy_params.epsilon = 1.0
        spec.reach_privacy_params.delta = 1e-12
        spec.frequency_privacy_params.epsilon = 1.0
        spec.frequency_privacy_params.delta = 1e-12
        self.measurement_spec = spec.SerializeToString()
        req = admin.CreateMeasurementRequest(
            parent=f"measurementConsumers/{MEASUREMENT_CONSUMER}",
            request_id=str(uuid.uuid4()),
            protocol=admin.HONEST_MAJORITY_SHARE_SHUFFLE,
            measurement_spec=self.measurement_spec,
            data_providers=[
                admin.CreateMeasurementRequest.DataProviderEntry(
                    data_provider=f"dataProviders/{e}",
                    encrypted_requisition_spec=self.encrypted_specs[e],
                    nonce_hash=self.nonce_hashes[e])
                for e in EDPS],
        )
        m = self.measurements.CreateMeasurement(req, timeout=self.rpc_timeout)
        self.measurement = m
        check(m.name.startswith(f"measurementConsumers/{MEASUREMENT_CONSUMER}/measurements/"),
              f"unexpected measurement name {m.name!r}")
        check(re.fullmatch(r"computations/[^/]+", m.computation),
              f"unexpected computation name {m.computation!r}")
        check(m.protocol == admin.HONEST_MAJORITY_SHARE_SHUFFLE,
              f"protocol {admin.Protocol.Name(m.protocol)}, expected HONEST_MAJORITY_SHARE_SHUFFLE")
        self.computation_name = m.computation
        self.expect_state(m, "PENDING_REQUISITION_PARAMS")
        return f"{m.name} -> {m.computation} (PENDING_REQUISITION_PARAMS)"

    def first_stream(self, duchy: str) -> str:
        resp, seen = self.stream_until(
            duchy, "", lambda c: c.name == self.computation_name)
        check(resp.continuation_token, "response carries no continuation_token")
        self.first_tokens[duchy] = resp.continuation_token
        self.expect_state(resp.computation, "PENDING_REQUISITION_PARAMS")
        return f"found after {seen} response(s); token {resp.continuation_token}"

    def initial_computation(self) -> str:
        c = self.get_computation(AGGREGATOR)
        self.expect_state(c, "PENDING_REQUISITION_PARAMS")
        check(c.name == self.computation_name, f"name {c.name!r}")
        check(c.measurement_spec == self.measurement_spec,
              "measurement_spec bytes do not round-trip")
        parts = sorted(p.name for p in c.computation_participants)
        want = sorted(f"{self.computation_name}/participants/{d}" for d in DUCHIES)
        check(parts == want, f"participants {parts}, expected {want}")
        check(len(c.requisitions) == len(EDPS),
              f"{len(c.requisitions)} requisitions, expected {len(EDPS)}")
        hashes = sorted(r.nonce_hash for r in c.requisitions)
        check(hashes == sorted(self.nonce_hashes.values()),
              "requisition nonce_hashes differ from the ones sent")
        spec_hashes = sorted(r.requisition_spec_hash for r in c.requisitions)
        check(spec_hashes == sorted(hashlib.sha256(v).digest()
                                    for v in self.encrypted_specs.values()),
              "requisition_spec_hash is not SHA-256 of the encrypted requisition spec")
        for r in c.requisitions:
            check(r.name.startswith(f"{self.computation_name}/requisitions/"),
                  f"requisition name {r.name!r}")
        which = c.mpc_protocol_config.WhichOneof("protocol")
        check(which == "honest_majority_share_shuffle",
              f"mpc_protocol_config.protocol is {which!r}, expected honest_majority_share_shuffle")
        return (f"{len(parts)} participants, {len(c.requisitions)} requisitions, "
                f"public_api_version={c.public_api_version!r}")

    def set_params(self, duchy: str) -> str:
        cp_pb2 = self.s.computation_participant_pb2
        svc = self.s.computation_participants_service_pb2
        name = f"{self.computation_name}/participants/{duchy}"
        p = self.participants[duchy].GetComputationParticipant(
            svc.GetComputationParticipantRequest(name=name), timeout=self.rpc_timeout)
        check(p.name == name, f"GetComputationParticipant returned {p.name!r}")
        state = cp_pb2.ComputationParticipant.State.Name(p.state)
        check(state == "CREATED", f"participant state {state}, expected CREATED")

        ident = self.ids[duchy]
        cert_name = duchy_certificate_name(duchy, ident)
        params = cp_pb2.ComputationParticipant.RequisitionParams(duchy_certificate=cert_name)
        hmss = params.honest_majority_share_shuffle
        if duchy in WORKERS:
            hmss.tink_public_key = b"k"
            hmss.tink_public_key_signature = b"s"
            hmss.tink_public_key_signature_algorithm_oid = ECDSA_SHA256_OID
        else:
            hmss.SetInParent()  # the aggregator publishes an empty HonestMajorityShareShuffle
        check(params.WhichOneof("protocol") == "honest_majority_share_shuffle", "oneof not set")
        p2 = self.participants[duchy].SetParticipantRequisitionParams(
            svc.SetParticipantRequisitionParamsRequest(
                name=name, requisition_params=params, etag=p.etag),
            timeout=self.rpc_timeout)
        state = cp_pb2.ComputationParticipant.State.Name(p2.state)
        check(state == "READY", f"participant state {state} after setting params, expected "
              "READY (HMSS skips confirmation)")
        rp = p2.requisition_params
        check(rp.duchy_certificate == cert_name,
              f"duchy_certificate {rp.duchy_certificate!r}, expected {cert_name!r}")
        check(rp.WhichOneof("protocol") == "honest_majority_share_shuffle",
              f"requisition_params.protocol is {rp.WhichOneof('protocol')!r}")
        if duchy in WORKERS:
            check(rp.honest_majority_share_shuffle == hmss, "tink key params do not round-trip")
        note = ""
        if rp.duchy_certificate_der:
            check(rp.duchy_certificate_der == ident.leaf_der,
                  "duchy_certificate_der is not the duchy's certificate")
            note = ", duchy_certificate_der matches"
        return f"{name}: CREATED -> READY with {cert_name} (etag {p.etag!r}){note}"

    def after_params(self) -> str:
        c = self.get_computation(WORKERS[0])
        self.expect_state(c, "PENDING_REQUISITION_FULFILLMENT")
        rq = self.s.requisition_pb2.Requisition
        states = {rq.State.Name(r.state) for r in c.requisitions}
        check(states == {"UNFULFILLED"}, f"requisition states {states}, expected UNFULFILLED")
        return "PENDING_REQUISITION_FULFILLMENT, requisitions UNFULFILLED"

    def fulfill(self, edp: str) -> str:
        admin = self.s.admin_pb2
        rq = self.s.requisition_pb2.Requisition
        resp = self.dp_requisitions[edp].ListRequisitions(
            admin.ListRequisitionsRequest(parent=f"dataProviders/{edp}"),
            timeout=self.rpc_timeout)
        prefix = f"{self.computation_name}/requisitions/"
        mine = [r for r in resp.requisitions if r.requisition.name.startswith(prefix)]
        check(len(mine) == 1, f"{len(mine)} requisitions of {self.computation_name} listed for "
              f"{edp} (of {len(resp.requisitions)} in all), expected 1")
        dpr = mine[0]
        r = dpr.requisition
        check(dpr.name.startswith(f"dataProviders/{edp}/requisitions/"),
              f"unexpected data-provider requisition name {dpr.name!r}")
        check(r.nonce_hash == self.nonce_hashes[edp], "nonce_hash is not the one sent")
        check(r.requisition_spec_hash == hashlib.sha256(self.encrypted_specs[edp]).digest(),
              "requisition_spec_hash is not SHA-256 of the encrypted requisition spec")
        check(dpr.encrypted_requisition_spec == self.encrypted_specs[edp],
              "encrypted_requisition_spec does not round-trip")
        check(rq.State.Name(r.state) == "UNFULFILLED", f"state {rq.State.Name(r.state)}")

        # HMSS pre-assigns the fulfilling (non-aggregator) duchy.
        fp = r.fulfilling_computation_participant
        m = re.fullmatch(re.escape(self.computation_name) + r"/participants/([^/]+)", fp)
        check(m, f"fulfilling_computation_participant {fp!r} is not a participant of "
              f"{self.computation_name}")
        duchy = m.group(1)
        check(duchy in WORKERS, f"HMSS requisition assigned to {duchy!r}, expected a worker")
        if dpr.fulfilling_duchy:
            check(dpr.fulfilling_duchy == duchy,
                  f"admin fulfilling_duchy {dpr.fulfilling_duchy!r} != {duchy!r}")

        svc = self.s.requisitions_service_pb2
        done = self.requisitions[duchy].FulfillRequisition(
            svc.FulfillRequisitionRequest(
                name=r.name, nonce=self.nonces[edp],
                fulfillment_context=rq.FulfillmentContext(build_label="halo-compat")),
            timeout=self.rpc_timeout)
        check(done.name == r.name, f"FulfillRequisition returned {done.name!r}")
        check(rq.State.Name(done.state) == "FULFILLED",
              f"state {rq.State.Name(done.state)} after FulfillRequisition")
        check(done.nonce == self.nonces[edp], "nonce does not round-trip")
        check(done.fulfilling_computation_participant == fp,
              f"fulfilling participant changed to {done.fulfilling_computation_participant!r}")
        return f"{r.name} fulfilled by {duchy}"

    def after_fulfillment(self) -> str:
        c = self.get_computation(WORKERS[1])
        self.expect_state(c, "PENDING_COMPUTATION")
        rq = self.s.requisition_pb2.Requisition
        states = {rq.State.Name(r.state) for r in c.requisitions}
        check(states == {"FULFILLED"}, f"requisition states {states}, expected FULFILLED")
        nonces = sorted(r.nonce for r in c.requisitions)
        check(nonces == sorted(self.nonces.values()), "requisition nonces do not round-trip")
        return "PENDING_COMPUTATION, requisitions FULFILLED with their nonces"

    def resumed_stream(self, duchy: str) -> str:
        token = self.first_tokens[duchy]

        def stale(c) -> str | None:
            # Everything before the token was already delivered: our computation must not come
            # back in the state the first stream showed.
            if c.name == self.computation_name and \
                    self.state_name(c.state) == "PENDING_REQUISITION_PARAMS":
                return "continuation token not honoured: computation re-sent in its old state"
            return None

        resp, seen = self.stream_until(
            duchy, token,
            lambda c: c.name == self.computation_name
            and self.state_name(c.state) == "PENDING_COMPUTATION",
            reject=stale)
        check(resp.continuation_token and resp.continuation_token != token,
              "resumed stream returned no new continuation token")
        self.resumed_tokens[duchy] = resp.continuation_token
        return f"PENDING_COMPUTATION after {seen} response(s)"

    def decode_tokens(self) -> str:
        Token = self.s.computations_service_pb2.StreamActiveComputationsContinuationToken
        expected_id = external_id_of(self.computation_name.split("/")[1])
        lines = []
        for duchy in DUCHIES:
            decoded = []
            for token in (self.first_tokens[duchy], self.resumed_tokens[duchy]):
                t = Token.FromString(b64url_decode_nopad(token))
                check(t.HasField("last_seen_update_time"),
                      f"{duchy}: token {token!r} has no last_seen_update_time")
                ts = t.last_seen_update_time
                check(ts.seconds > 0 or ts.nanos > 0, f"{duchy}: zero update time in {token!r}")
                check(t.last_seen_external_computation_id != 0,
                      f"{duchy}: token {token!r} has no last_seen_external_computation_id")
                if expected_id is not None:
                    check(t.last_seen_external_computation_id == expected_id,
                          f"{duchy}: token id {t.last_seen_external_computation_id} is not the "
                          f"external id {expected_id} of {self.computation_name}")
                decoded.append(((ts.seconds, ts.nanos), t.last_seen_external_computation_id))
            check(decoded[1] > decoded[0],
                  f"{duchy}: resumed token {decoded[1]} does not come after {decoded[0]}")
            lines.append(f"{duchy}: {decoded[0][0]} -> {decoded[1][0]}")
        id_note = (f"id {expected_id} = API id of {self.computation_name}"
                   if expected_id is not None else
                   f"(computation API id {self.computation_name!r} is not an 8-byte base64url id)")
        return f"timestamps advance ({'; '.join(lines)}); {id_note}"

    def worker_cannot_set_result(self) -> str:
        svc = self.s.computations_service_pb2
        try:
            self.computations[WORKERS[0]].SetComputationResult(
                svc.SetComputationResultRequest(
                    name=self.computation_name,
                    aggregator_certificate=duchy_certificate_name(AGGREGATOR,
                                                                  self.ids[AGGREGATOR]),
                    result_public_key=b"pk", encrypted_result=b"forged",
                    public_api_version=PUBLIC_API_VERSION),
                timeout=self.rpc_timeout)
        except self.grpc.RpcError as e:
            check(e.code() == self.grpc.StatusCode.PERMISSION_DENIED,
                  f"expected PERMISSION_DENIED, got {e.code().name}: {e.details()}")
        else:
            raise CheckFailed(f"{WORKERS[0]} was allowed to set the result")
        c = self.get_computation(AGGREGATOR)
        self.expect_state(c, "PENDING_COMPUTATION")
        check(not c.encrypted_result, "a result was stored despite the refusal")
        return "PERMISSION_DENIED; computation still PENDING_COMPUTATION"

    def set_result(self) -> str:
        svc = self.s.computations_service_pb2
        cert = duchy_certificate_name(AGGREGATOR, self.ids[AGGREGATOR])
        c = self.computations[AGGREGATOR].SetComputationResult(
            svc.SetComputationResultRequest(
                name=self.computation_name, aggregator_certificate=cert,
                result_public_key=b"pk", encrypted_result=b"result",
                public_api_version=PUBLIC_API_VERSION),
            timeout=self.rpc_timeout)
        self.expect_state(c, "SUCCEEDED")
        c2 = self.get_computation(WORKERS[1])
        self.expect_state(c2, "SUCCEEDED")
        for what, comp in (("SetComputationResult", c), ("GetComputation", c2)):
            check(comp.encrypted_result == b"result",
                  f"{what}: encrypted_result {comp.encrypted_result!r}, expected b'result'")
            check(comp.aggregator_certificate == cert,
                  f"{what}: aggregator_certificate {comp.aggregator_certificate!r}")
        return f"SUCCEEDED, encrypted_result round-trips, aggregator_certificate {cert}"

    def measurement_succeeded(self) -> str:
        admin = self.s.admin_pb2
        m = self.measurements.GetMeasurement(
            admin.GetMeasurementRequest(name=self.measurement.name), timeout=self.rpc_timeout)
        self.expect_state(m, "SUCCEEDED")
        check(m.encrypted_result == b"result", f"encrypted_result {m.encrypted_result!r}")
        check(m.result_public_key == b"pk", f"result_public_key {m.result_public_key!r}")
        cert = duchy_certificate_name(AGGREGATOR, self.ids[AGGREGATOR])
        check(m.aggregator_certificate == cert,
              f"aggregator_certificate {m.aggregator_certificate!r}, expected {cert!r}")
        return f"{m.name}: SUCCEEDED with the result"

    def steps(self) -> list[tuple[str, Callable[[], str | None]]]:
        steps: list[tuple[str, Callable[[], str | None]]] = [
            (f"{MEASUREMENT_CONSUMER}: admin CreateMeasurement (HMSS, 2 EDPs)",
             self.create_measurement)]
        steps += [(f"{d}: StreamActiveComputations(\"\") delivers the new computation",
                   lambda d=d: self.first_stream(d)) for d in DUCHIES]
        steps.append((f"{AGGREGATOR}: GetComputation (participants, requisitions, spec)",
                      self.initial_computation))
        steps += [(f"{d}: GetComputationParticipant + SetParticipantRequisitionParams",
                   lambda d=d: self.set_params(d)) for d in DUCHIES]
        steps.append(("GetComputation after all params", self.after_params))
        steps += [(f"{e}: admin ListRequisitions; assigned duchy FulfillRequisition",
                   lambda e=e: self.fulfill(e)) for e in EDPS]
        steps.append(("GetComputation after fulfilment", self.after_fulfillment))
        steps += [(f"{d}: StreamActiveComputations(first token) shows PENDING_COMPUTATION",
                   lambda d=d: self.resumed_stream(d)) for d in DUCHIES]
        steps.append(("continuation tokens decode as StreamActiveComputationsContinuationToken",
                      self.decode_tokens))
        steps.append((f"{WORKERS[0]}: SetComputationResult is refused (negative check)",
                      self.worker_cannot_set_result))
        steps.append((f"{AGGREGATOR}: SetComputationResult", self.set_result))
        steps.append((f"{MEASUREMENT_CONSUMER}: admin GetMeasurement", self.measurement_succeeded))
        return steps


# --------------------------------------------------------------------------------------------
# Kingdom: an already-running one, or one started from the halo binary (--spawn)
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"kingdom exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise CheckFailed(f"kingdom did not accept connections on 127.0.0.1:{port} in {timeout:g}s")


def stop(proc: subprocess.Popen) -> None:
    """Stops the kingdom process this script started (by its pid only)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Spawned:
    proc: subprocess.Popen | None = None
    log: Path | None = None


@contextlib.contextmanager
def spawned_kingdom(halo_bin: str, work: Path, startup_timeout: float, spawned: Spawned
                    ) -> Iterator[tuple[str, Path]]:
    pki = work / "pki"
    data = work / "kingdom-data"
    data.mkdir()
    subprocess.run([halo_bin, "pki", "--out", str(pki)], check=True, timeout=120)
    port = free_port()
    spawned.log = work / "kingdom.log"
    with open(spawned.log, "wb") as log:
        spawned.proc = subprocess.Popen(
            [halo_bin, "kingdom", "--pki", str(pki), "--data-dir", str(data),
             "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, spawned.proc, startup_timeout)
        print(f"kingdom started: pid {spawned.proc.pid}, 127.0.0.1:{port}, log {spawned.log}",
              flush=True)
        yield f"127.0.0.1:{port}", pki
    finally:
        stop(spawned.proc)


def print_log_tail(path: Path, lines: int = 60) -> None:
    with contextlib.suppress(OSError):
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        print(f"---- last {len(tail)} lines of {path} ----")
        print("\n".join(tail))
        print("----")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference-protos", type=Path, metavar="DIR",
                     help="reference proto root (the one holding wfa/measurement/system/v1alpha),"
                          " or a reference checkout holding src/main/proto")
    ref.add_argument("--reference-git", type=Path, metavar="GIT_DIR",
                     help="(bare) git directory of the reference repository; its system protos"
                          " are read into a temporary directory")
    p.add_argument("--reference-rev", default="HEAD", help="revision for --reference-git")
    p.add_argument("--admin-protos", type=Path, default=REPO_ROOT / "proto", metavar="DIR",
                   help="halo-host proto root holding halo/v1/admin.proto (default: %(default)s)")
    p.add_argument("--google-api", choices=("auto", "package", "standin"), default="auto",
                   help="google/api/*.proto from googleapis-common-protos (package), our minimal"
                        " stand-ins (standin), or the package when installed (auto, default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--kingdom", metavar="HOST:PORT", help="address of a running Kingdom")
    mode.add_argument("--spawn", metavar="HALO_BIN",
                      help="start `HALO_BIN kingdom` with a fresh PKI and data dir, then stop it")
    mode.add_argument("--generate-only", action="store_true",
                      help="only generate and import the stubs (no Kingdom)")
    p.add_argument("--pki", type=Path, metavar="DIR", help="PKI directory (with --kingdom)")
    p.add_argument("--rpc-timeout", type=float, default=10.0, help="seconds per unary call")
    p.add_argument("--stream-timeout", type=float, default=10.0,
                   help="deadline in seconds for each StreamActiveComputations read")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for a spawned kingdom to listen")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary directory (generated code, PKI, kingdom log)")
    args = p.parse_args(argv)
    if args.kingdom and not args.pki:
        p.error("--kingdom needs --pki")
    if not (args.kingdom or args.spawn or args.generate_only):
        p.error("give --kingdom HOST:PORT --pki DIR, --spawn HALO_BIN, or --generate-only")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="halo-compat-"))
    stubs: Stubs | None = None
    spawned = Spawned()
    try:
        def gen() -> str:
            nonlocal stubs
            if args.reference_git:
                root = extract_reference_from_git(
                    args.reference_git, args.reference_rev, work / "reference-protos")
            else:
                root = reference_root_from_arg(args.reference_protos)
            stubs = generate_stubs(root, args.admin_protos, work, args.google_api)
            return f"reference root {root}\n      " + verify_stubs(stubs)

        if not report.run("generate + import Python stubs (reference system API + halo.v1 admin)",
                          gen):
            return finish(report)
        if args.generate_only:
            return finish(report)

        if args.spawn:
            kingdom = spawned_kingdom(args.spawn, work, args.startup_timeout, spawned)
        else:
            kingdom = contextlib.nullcontext((args.kingdom, args.pki))
        with kingdom as (target, pki):
            print(f"kingdom {target}, PKI {pki}", flush=True)
            scenario = None

            def connect() -> str:
                nonlocal scenario
                scenario = Scenario(stubs, target, pki, args.rpc_timeout, args.stream_timeout)
                return ", ".join(f"{k}={v.certificate_id}" for k, v in scenario.ids.items()
                                 if k in DUCHIES)

            ok = report.run("load PKI identities (certificate ids)", connect)
            steps = scenario.steps() if ok else []
            try:
                for i, (title, fn) in enumerate(steps):
                    if not report.run(title, fn):
                        for later, _ in steps[i + 1:]:
                            report.skip(later)
                        break
            finally:
                if scenario:
                    scenario.close()
        return finish(report)
    except Exception as e:  # noqa: BLE001 - setup errors (pki, spawn) are failures too
        report.fail("kingdom setup", describe_error(e))
        return finish(report)
    finally:
        if report.failed and spawned.log:
            print_log_tail(spawned.log)
        if args.keep_temp or (report.failed and spawned.log):
            print(f"temporary files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def finish(report: Report) -> int:
    print(report.summary(), flush=True)
    return 1 if report.failed or not report.passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
