//! Helpers shared by the fuzz targets: tonic's real server-side stream decoder over an
//! in-memory gRPC body, a runtime, and the upload check of the two chunked-body receivers.

use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The duchy servers' `max_decoding_message_size`.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Payload limit given to the body receiver (small, so the fuzzer reaches it).
pub const MAX_PAYLOAD_BYTES: u64 = 4096;

/// One current-thread runtime per fuzzing process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        }
    })
}

/// A scratch directory per fuzzing process (the body receivers write blobs into it).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    })
    .path()
}

/// gRPC length-prefixed framing: flag byte 0 (uncompressed), big-endian u32 length, message.
pub fn grpc_frames(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The request stream a tonic server handler receives for an HTTP/2 body of `body` bytes,
/// decoded by tonic's own prost codec (as in production).
pub fn request_stream<T>(body: Vec<u8>) -> tonic::Streaming<T>
where
    T: prost::Message + Default + Send + 'static,
{
    let mut codec = tonic_prost::ProstCodec::<T, T>::default();
    let decoder = tonic::codec::Codec::decoder(&mut codec);
    tonic::Streaming::new_request(
        decoder,
        http_body_util::Full::new(bytes::Bytes::from(body)),
        None,
        Some(MAX_MESSAGE_BYTES),
    )
}

/// Checks what a body receiver left behind: on success exactly one file at `dest` whose size
/// and SHA-256 are what the receiver reported and at most `max` bytes; on failure no file at
/// all (no blob, no temporary). Removes the file afterwards.
pub fn check_upload(dir: &Path, dest: &Path, outcome: &Result<(u64, String), tonic::Status>) {
    let leftovers: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    match outcome {
        Ok((size, sha256)) => {
            let data = match std::fs::read(dest) {
                Ok(d) => d,
                Err(e) => panic!("receiver reported success but {}: {e}", dest.display()),
            };
            assert_eq!(data.len() as u64, *size, "reported size");
            assert!(*size <= MAX_PAYLOAD_BYTES, "payload limit exceeded: {size}");
            assert_eq!(hex(&Sha256::digest(&data)), *sha256, "reported sha256");
            assert_eq!(
                leftovers,
                vec![dest.to_path_buf()],
                "files left in the blob dir"
            );
        }
        Err(status) => {
            assert!(
                !matches!(status.code(), tonic::Code::Ok | tonic::Code::Unknown),
                "unexpected status {status:?}"
            );
            assert!(leftovers.is_empty(), "failed upload left {leftovers:?}");
        }
    }
    let _ = std::fs::remove_file(dest);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
