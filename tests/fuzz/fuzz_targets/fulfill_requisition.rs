//! `FulfillRequisition` uploads as a duchy's RequisitionFulfillment server reads them: the
//! HTTP/2 body, decoded by tonic's prost codec, then the production header parser
//! (`fulfillment::parse_fulfill_header`) and chunked-body receiver (`blobs::receive_body` with
//! `fulfillment::fulfill_body_chunk`, an empty body allowed).
//!
//! Input: raw body bytes or a list of messages the harness frames. Invariants: an accepted
//! header names `dataProviders/{dp}/requisitions/{r}` with well-formed ids that re-format to
//! the name, and a non-zero nonce; an accepted body is stored whole under its final name, no
//! larger than the limit, with the reported size and digest; a refused one leaves no file.
#![no_main]

use api::fulfill_requisition_request::{BodyChunk, Header, Payload, header};
use arbitrary::Arbitrary;
use halo_duchy::blobs::receive_body;
use halo_duchy::fulfillment::{fulfill_body_chunk, parse_fulfill_header};
use halo_duchy::names;
use halo_fuzz::{check_upload, grpc_frames, request_stream, runtime, scratch_dir};
use halo_proto::api::v2alpha as api;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

#[derive(Arbitrary, Debug)]
enum Msg {
    Header {
        /// Build `dataProviders/{name}/requisitions/{requisition}` (most real names).
        shaped: bool,
        name: String,
        requisition: String,
        fingerprint: Vec<u8>,
        nonce: u64,
        hmss: Option<(i64, String)>,
        etag: String,
    },
    Chunk(Vec<u8>),
    Empty,
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
            shaped,
            name,
            requisition,
            fingerprint,
            nonce,
            hmss,
            etag,
        } => Payload::Header(Header {
            name: if shaped {
                format!("dataProviders/{name}/requisitions/{requisition}")
            } else {
                name
            },
            requisition_fingerprint: fingerprint,
            nonce,
            protocol: hmss.map(|(register_count, data_provider_certificate)| {
                header::Protocol::HonestMajorityShareShuffle(header::HonestMajorityShareShuffle {
                    register_count,
                    data_provider_certificate,
                    ..Default::default()
                })
            }),
            etag,
            ..Default::default()
        }),
        Msg::Chunk(data) => Payload::BodyChunk(BodyChunk { data }),
        Msg::Empty => return Vec::new(),
        Msg::Raw(bytes) => return bytes,
    };
    api::FulfillRequisitionRequest {
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
    let dest = dir.join("requisition.bin");
    runtime().block_on(async {
        let mut stream = request_stream::<api::FulfillRequisitionRequest>(body);
        let first = match stream.message().await {
            Ok(m) => m,
            Err(_) => return,
        };
        let Ok(h) = parse_fulfill_header(first) else {
            return;
        };
        assert_ne!(h.header.nonce, 0);
        assert!(names::valid_id(&h.data_provider) && names::valid_id(&h.requisition));
        assert_eq!(
            format!(
                "dataProviders/{}/requisitions/{}",
                h.data_provider, h.requisition
            ),
            h.header.name
        );
        let outcome = receive_body(
            &mut stream,
            &dest,
            halo_fuzz::MAX_PAYLOAD_BYTES,
            false,
            fulfill_body_chunk,
        )
        .await;
        check_upload(dir, &dest, &outcome);
    });
});
