//! ListRequisitions pagination: pages followed to the end without duplicates or gaps (also
//! while requisitions are fulfilled and measurements created between pages), page_size
//! default and clamping, and page tokens that are malformed, forged or replayed for another
//! data provider's parent.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use halo_proto::halo::v1::{
    DataProviderRequisition, ListRequisitionsPageToken, ListRequisitionsRequest,
    ListRequisitionsResponse, Protocol,
};
use prost::Message as _;
use tonic::{Code, Status};

use crate::common::*;

/// A Kingdom whose ListRequisitions pages hold 2 by default and 3 at most.
async fn small_pages() -> TestKingdom {
    TestKingdom::start_with(|config, _| {
        config.limits.default_page_size = 2;
        config.limits.max_page_size = 3;
    })
    .await
}

/// Creates `n` HMSS measurements one after the other and moves each to
/// PENDING_REQUISITION_FULFILLMENT; returns their computation names in creation order.
async fn fulfillable(k: &TestKingdom, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
        let c = k.computation(AGG, &m.computation).await;
        k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
            .await;
        names.push(m.computation);
    }
    names
}

async fn page(
    k: &TestKingdom,
    caller: &str,
    parent_dp: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListRequisitionsResponse, Status> {
    k.dp_requisitions(caller)
        .list_requisitions(ListRequisitionsRequest {
            parent: format!("dataProviders/{parent_dp}"),
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn computation_of(r: &DataProviderRequisition) -> String {
    r.computation.as_ref().unwrap().name.clone()
}

/// Follows every page of `dp`'s requisitions with `page_size`; returns the page lengths and
/// the requisitions in order.
async fn follow(
    k: &TestKingdom,
    dp: &str,
    page_size: i32,
) -> (Vec<usize>, Vec<DataProviderRequisition>) {
    let mut lengths = Vec::new();
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let p = page(k, dp, dp, page_size, &token).await.unwrap();
        lengths.push(p.requisitions.len());
        all.extend(p.requisitions);
        if p.next_page_token.is_empty() {
            return (lengths, all);
        }
        assert_ne!(p.next_page_token, token, "a page token must move forward");
        token = p.next_page_token;
        assert!(lengths.len() < 100, "pagination does not end");
    }
}

#[tokio::test]
async fn pages_are_followed_to_the_end_without_duplicates_or_gaps() {
    let k = small_pages().await;
    let computations = fulfillable(&k, 7).await;

    // Default page size (2 here): 2 + 2 + 2 + 1, the last page has no next token, every
    // computation's EDP1 requisition exactly once, in creation order.
    let (lengths, all) = follow(&k, EDP1, 0).await;
    assert_eq!(lengths, vec![2, 2, 2, 1]);
    assert_eq!(
        all.iter().map(computation_of).collect::<Vec<_>>(),
        computations
    );
    let mut names: Vec<_> = all.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 7, "no duplicates");
    assert!(
        all.iter()
            .all(|r| r.name.starts_with(&format!("dataProviders/{EDP1}/")))
    );

    // Explicit page sizes: 1 gives 7 pages (no empty trailing page); 3 (the maximum) gives
    // 3 + 3 + 1.
    let (lengths, all1) = follow(&k, EDP1, 1).await;
    assert_eq!(lengths, vec![1; 7]);
    assert_eq!(all1, all);
    let (lengths, all3) = follow(&k, EDP1, 3).await;
    assert_eq!(lengths, vec![3, 3, 1]);
    assert_eq!(all3, all);

    k.shutdown().await;
}

#[tokio::test]
async fn a_page_token_stays_valid_while_requisitions_change() {
    let k = small_pages().await;
    let computations = fulfillable(&k, 5).await;
    let first = page(&k, EDP1, EDP1, 2, "").await.unwrap();
    assert_eq!(first.requisitions.len(), 2);
    assert!(!first.next_page_token.is_empty());

    // Between pages: a requisition of the first page and one of the next page are fulfilled,
    // and a new measurement is created.
    let second = page(&k, EDP1, EDP1, 1, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(computation_of(&second.requisitions[0]), computations[2]);
    for r in [&first.requisitions[0], &second.requisitions[0]] {
        let name = r.requisition.as_ref().unwrap().name.clone();
        k.try_fulfill(&r.fulfilling_duchy, &name, nonce_for(EDP1), &r.etag)
            .await
            .unwrap();
    }
    let later = fulfillable(&k, 1).await;

    // The rest: what was after the first page, minus the fulfilled one, plus the new one; no
    // requisition of the first page again.
    let mut rest = Vec::new();
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let p = page(&k, EDP1, EDP1, 2, &token).await.unwrap();
        rest.extend(p.requisitions.iter().map(computation_of));
        token = p.next_page_token;
    }
    let mut expected = computations[3..].to_vec();
    expected.extend(later);
    assert_eq!(rest, expected);
    k.shutdown().await;
}

#[tokio::test]
async fn page_size_default_is_50_and_larger_sizes_are_clamped() {
    // The shipped defaults.
    let k = TestKingdom::start().await;
    assert_eq!(k.config.limits.default_page_size, 50);
    assert_eq!(k.config.limits.max_page_size, 1000);
    let computations = fulfillable(&k, 51).await;
    let p = page(&k, EDP1, EDP1, 0, "").await.unwrap();
    assert_eq!(p.requisitions.len(), 50);
    let last = page(&k, EDP1, EDP1, 0, &p.next_page_token).await.unwrap();
    assert_eq!(last.requisitions.len(), 1);
    assert!(last.next_page_token.is_empty());
    assert_eq!(computation_of(&last.requisitions[0]), computations[50]);
    // Within the maximum: all in one page.
    let all = page(&k, EDP1, EDP1, i32::MAX, "").await.unwrap();
    assert_eq!(all.requisitions.len(), 51);
    assert!(all.next_page_token.is_empty());
    k.shutdown().await;

    // A configured maximum clamps larger sizes.
    let k = small_pages().await;
    fulfillable(&k, 4).await;
    for size in [4, 1000, i32::MAX] {
        let p = page(&k, EDP1, EDP1, size, "").await.unwrap();
        assert_eq!(p.requisitions.len(), 3, "page_size {size} is clamped to 3");
        assert!(!p.next_page_token.is_empty());
    }
    // Negative sizes are refused.
    for size in [-1, i32::MIN] {
        assert_code(page(&k, EDP1, EDP1, size, "").await, Code::InvalidArgument);
    }
    k.shutdown().await;
}

fn encode(token: &ListRequisitionsPageToken) -> String {
    URL_SAFE_NO_PAD.encode(token.encode_to_vec())
}

#[tokio::test]
async fn malformed_and_forged_page_tokens_are_invalid_argument() {
    let k = small_pages().await;
    fulfillable(&k, 3).await;
    let first = page(&k, EDP1, EDP1, 1, "").await.unwrap();
    let good = first.next_page_token.clone();
    assert!(page(&k, EDP1, EDP1, 1, &good).await.is_ok());
    let decoded =
        ListRequisitionsPageToken::decode(URL_SAFE_NO_PAD.decode(&good).unwrap().as_slice())
            .unwrap();
    assert_eq!(decoded.parent, format!("dataProviders/{EDP1}"));

    let mut bad: Vec<String> = vec![
        "not a token!".to_owned(),
        "%%%".to_owned(),
        // Valid base64url, not a token message (field 1 with wire type 7).
        URL_SAFE_NO_PAD.encode([0x0f, 0xff]),
        // Truncated.
        good[..good.len() / 2].to_owned(),
        // Far too long.
        "A".repeat(100_000),
        // A well-formed token without a parent.
        encode(&ListRequisitionsPageToken {
            parent: String::new(),
            ..decoded.clone()
        }),
    ];
    // Positions this Kingdom never issues.
    for forged in [
        ListRequisitionsPageToken {
            last_create_time_micros: -1,
            ..decoded.clone()
        },
        ListRequisitionsPageToken {
            last_external_computation_id: 0,
            ..decoded.clone()
        },
        ListRequisitionsPageToken {
            last_external_computation_id: -5,
            ..decoded.clone()
        },
        ListRequisitionsPageToken {
            last_ordinal: -1,
            ..decoded.clone()
        },
    ] {
        bad.push(encode(&forged));
    }
    for token in &bad {
        let err = page(&k, EDP1, EDP1, 1, token).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "token {:?}: {err:?}",
            &token[..token.len().min(40)]
        );
    }
    k.shutdown().await;
}

#[tokio::test]
async fn a_page_token_is_bound_to_its_parent() {
    let k = small_pages().await;
    fulfillable(&k, 3).await;
    let edp1_token = page(&k, EDP1, EDP1, 1, "").await.unwrap().next_page_token;
    let edp2_token = page(&k, EDP2, EDP2, 1, "").await.unwrap().next_page_token;
    assert!(!edp1_token.is_empty() && !edp2_token.is_empty());

    // EDP2 replaying EDP1's token on its own parent, and the other way round.
    assert_code(
        page(&k, EDP2, EDP2, 1, &edp1_token).await,
        Code::InvalidArgument,
    );
    assert_code(
        page(&k, EDP1, EDP1, 1, &edp2_token).await,
        Code::InvalidArgument,
    );
    // A token forged for EDP2's parent, used by EDP1 on its own parent.
    let mut forged =
        ListRequisitionsPageToken::decode(URL_SAFE_NO_PAD.decode(&edp1_token).unwrap().as_slice())
            .unwrap();
    forged.parent = format!("dataProviders/{EDP2}");
    assert_code(
        page(&k, EDP1, EDP1, 1, &encode(&forged)).await,
        Code::InvalidArgument,
    );
    // EDP1 using its own token on EDP2's parent: the parent is not EDP1's at all.
    assert_code(
        page(&k, EDP1, EDP2, 1, &edp1_token).await,
        Code::PermissionDenied,
    );
    // Control: each token works for its own parent.
    assert_eq!(
        page(&k, EDP1, EDP1, 1, &edp1_token)
            .await
            .unwrap()
            .requisitions
            .len(),
        1
    );
    assert_eq!(
        page(&k, EDP2, EDP2, 1, &edp2_token)
            .await
            .unwrap()
            .requisitions
            .len(),
        1
    );
    k.shutdown().await;
}
