//! `AdvanceComputation` uploads as a duchy's ComputationControl server reads them: the HTTP/2
//! body, decoded by tonic's prost codec, then the production header parser
//! (`control::parse_advance_header`) and chunked-body receiver (`blobs::receive_body` with
//! `control::advance_body_chunk`).
//!
//! Input: either raw body bytes (arbitrary gRPC framing) or a list of messages that the
//! harness frames correctly (so the fuzzer gets past the framing). Invariants: an accepted
//! header names a well-formed computation with a positive description; an accepted body is
//! stored whole under its final name, no larger than the limit, with the reported size and
//! digest; a refused one leaves no file behind.
#![no_main]

use arbitrary::Arbitrary;
use halo_duchy::blobs::receive_body;
use halo_duchy::control::{advance_body_chunk, parse_advance_header};
use halo_duchy::names;
use halo_fuzz::{check_upload, grpc_frames, request_stream, runtime, scratch_dir};
use halo_proto::system::v1alpha as sys;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sys::advance_computation_request::{BodyChunk, Header, Payload, header::Protocol};

#[derive(Arbitrary, Debug)]
enum Msg {
    Header {
        /// Prefix `computations/` to the name (most real names have it).
        computation_prefix: bool,
        name: String,
        protocol: Option<u8>,
        description: i32,
    },
    Chunk(Vec<u8>),
    Empty,
    /// Arbitrary protobuf bytes as one message.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Body(Vec<u8>),
    Messages(Vec<Msg>),
}

fn encode(m: Msg) -> Vec<u8> {
    let payload = match m {
        Msg::Header {
            computation_prefix,
            name,
            protocol,
            description,
        } => Payload::Header(Header {
            name: if computation_prefix {
                format!("computations/{name}")
            } else {
                name
            },
            protocol: protocol.map(|p| match p % 3 {
                0 => Protocol::LiquidLegionsV2(sys::LiquidLegionsV2 { description }),
                1 => Protocol::ReachOnlyLiquidLegionsV2(sys::ReachOnlyLiquidLegionsV2 {
                    description,
                }),
                _ => Protocol::HonestMajorityShareShuffle(sys::HonestMajorityShareShuffle {
                    description,
                }),
            }),
        }),
        Msg::Chunk(partial_data) => Payload::BodyChunk(BodyChunk { partial_data }),
        Msg::Empty => return Vec::new(),
        Msg::Raw(bytes) => return bytes,
    };
    sys::AdvanceComputationRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

fuzz_target!(|input: Input| {
    let body = match input {
        Input::Body(b) => b,
        Input::Messages(ms) => grpc_frames(&ms.into_iter().map(encode).collect::<Vec<_>>()),
    };
    let dir = scratch_dir();
    let dest = dir.join("payload.bin");
    runtime().block_on(async {
        let mut stream = request_stream::<sys::AdvanceComputationRequest>(body);
        let first = match stream.message().await {
            Ok(m) => m,
            Err(_) => return,
        };
        let Ok(header) = parse_advance_header(first) else {
            return;
        };
        assert!(header.description > 0);
        assert_eq!(
            names::parse_computation(&names::computation_name(&header.gid)),
            Some(header.gid.as_str())
        );
        assert!(names::valid_id(&header.gid));
        let outcome = receive_body(
            &mut stream,
            &dest,
            halo_fuzz::MAX_PAYLOAD_BYTES,
            true,
            advance_body_chunk,
        )
        .await;
        check_upload(dir, &dest, &outcome);
    });
});
