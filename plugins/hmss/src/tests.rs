#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use halo_plugin_sdk::identity::IdentityError;
use halo_plugin_sdk::proto::api::v2alpha::EncryptedMessage;
use halo_plugin_sdk::proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_plugin_sdk::proto::system::v1alpha::{
    Computation, DifferentialPrivacyParams, Requisition,
};
use hmss_core::share::split;
use hmss_core::wire::encode_frequency_vector;

const Q: u32 = 127;
const MEASUREMENT_SK: [u8; 32] = [7u8; 32];
const OID: &str = "1.2.840.10045.4.3.2";

/// Stands in for the host's identity service in native tests: a "signature" is the message
/// bytes reversed followed by the certificate name (the host's real ECDSA service is tested
/// in halo-identity, halo-duchy and end to end).
struct TestIdentity;

fn test_signature(certificate: &str, message: &[u8]) -> Vec<u8> {
    let mut s: Vec<u8> = message.iter().rev().copied().collect();
    s.extend_from_slice(certificate.as_bytes());
    s
}

impl halo_plugin_sdk::identity::native::Handler for TestIdentity {
    fn sign(&self, message: &[u8]) -> Result<identity::Signature, IdentityError> {
        let certificate = "duchies/agg/certificates/test".to_string();
        Ok(identity::Signature {
            signature: test_signature(&certificate, message),
            certificate,
            algorithm_oid: OID.into(),
        })
    }

    fn verify(
        &self,
        certificate: &str,
        message: &[u8],
        signature: &[u8],
        algorithm_oid: &str,
    ) -> Result<(), IdentityError> {
        if certificate == "dataProviders/unreachable/certificates/x" {
            return Err(IdentityError::Unavailable("kingdom down".into()));
        }
        if algorithm_oid == OID && signature == test_signature(certificate, message) {
            Ok(())
        } else {
            Err(IdentityError::Invalid("bad signature".into()))
        }
    }
}

/// The sealed-seed plaintext a data provider `dp` produces: a signed `RandomSeed`.
fn signed_seed(dp: &str, seed: &Seed) -> Vec<u8> {
    let message = RandomSeed {
        data: seed.to_vec(),
    }
    .encode_to_vec();
    SignedMessage {
        signature: test_signature(&cert(dp), &message),
        message,
        signature_algorithm_oid: OID.into(),
        certificate: cert(dp),
    }
    .encode_to_vec()
}

fn cert(dp: &str) -> String {
    format!("dataProviders/{dp}/certificates/test")
}

fn spec(reach_only: bool, mf: i32, epsilon: f64, delta: f64) -> MeasurementSpec {
    let dp = Some(DifferentialPrivacyParams { epsilon, delta });
    MeasurementSpec {
        measurement_public_key: public_key(&MEASUREMENT_SK).unwrap(),
        r#type: if reach_only {
            MeasurementType::Reach as i32
        } else {
            MeasurementType::ReachAndFrequency as i32
        },
        maximum_frequency: mf,
        reach_privacy_params: dp,
        frequency_privacy_params: dp,
        vid_sampling_interval_width: 1.0,
        ..Default::default()
    }
}

fn ctx(
    role: Role,
    duchy: &str,
    state: Vec<u8>,
    spec: &MeasurementSpec,
    noise: SysNoise,
) -> ComputationContext {
    let computation = Computation {
        measurement_spec: spec.encode_to_vec(),
        // Requisition r{i} belongs to data provider r{i} (whose certificate is `cert("r{i}")`).
        requisitions: (1..=3)
            .map(|i| Requisition {
                name: format!("computations/c1/requisitions/r{i}"),
                data_provider: format!("dataProviders/r{i}"),
                ..Default::default()
            })
            .collect(),
        mpc_protocol_config: Some(MpcProtocolConfig {
            protocol: Some(MpcProtocol::HonestMajorityShareShuffle(HmssConfig {
                reach_and_frequency_ring_modulus: Q as i32,
                reach_ring_modulus: Q as i32,
                noise_mechanism: noise as i32,
            })),
        }),
        ..Default::default()
    };
    let p = |d: &str, r| Participant {
        duchy_id: d.into(),
        role: r,
        requisition_params: vec![],
    };
    ComputationContext {
        global_id: "c1".into(),
        duchy_id: duchy.into(),
        role,
        protocol: SystemProtocol::HonestMajorityShareShuffle,
        computation: computation.encode_to_vec(),
        participants: vec![
            p("agg", Role::Aggregator),
            p("w1", Role::FirstNonAggregator),
            p("w2", Role::SecondNonAggregator),
        ],
        state,
        attempt: 1,
    }
}

fn published_key(o: &StageOutcome) -> Vec<u8> {
    let rp = RequisitionParams::decode(o.requisition_params.as_deref().unwrap()).unwrap();
    match rp.protocol {
        Some(requisition_params::Protocol::HonestMajorityShareShuffle(h)) => h.tink_public_key,
        other => panic!("{other:?}"),
    }
}

/// The EDP side: split `v`, seal the seed to `peer_pk`; returns the requisition input.
fn fulfil(id: &str, v: &[u32], seed: Seed, peer_pk: &[u8]) -> StageInput {
    let s2 = split(v, &seed, Q).unwrap();
    let header = Header {
        name: id.into(),
        protocol: Some(header::Protocol::HonestMajorityShareShuffle(
            header::HonestMajorityShareShuffle {
                secret_seed: Some(EncryptedMessage {
                    ciphertext: seal(peer_pk, SEED_INFO, &signed_seed(id, &seed), [seed[0]; 32])
                        .unwrap(),
                    type_url: String::new(),
                }),
                register_count: v.len() as i64,
                data_provider_certificate: cert(id),
            },
        )),
        ..Default::default()
    };
    StageInput {
        origin: InputOrigin::Requisition((id.into(), header.encode_to_vec())),
        data: encode_frequency_vector(&s2),
    }
}

fn peer_input(o: &StageOutcome, from: &str) -> StageInput {
    StageInput {
        origin: InputOrigin::Peer((from.into(), o.sends[0].description)),
        data: o.sends[0].payload.clone(),
    }
}

/// Runs the whole protocol; returns the decrypted result JSON.
fn run(spec: &MeasurementSpec, noise: SysNoise, vectors: [&[u32]; 3]) -> String {
    halo_plugin_sdk::identity::native::install(TestIdentity);
    let c = |role, d: &str, st: Vec<u8>| ctx(role, d, st, spec, noise);
    let agg_start = Hmss::start(c(Role::Aggregator, "agg", vec![])).unwrap();
    let w1_start = Hmss::start(c(Role::FirstNonAggregator, "w1", vec![])).unwrap();
    let w2_start = Hmss::start(c(Role::SecondNonAggregator, "w2", vec![])).unwrap();
    assert_eq!(w1_start.initial_stage, INITIALIZED);
    let agg = c(Role::Aggregator, "agg", agg_start.state);
    let w1 = c(Role::FirstNonAggregator, "w1", w1_start.state);
    let w2 = c(Role::SecondNonAggregator, "w2", w2_start.state);

    let i1 = Hmss::execute(w1.clone(), INITIALIZED, vec![]).unwrap();
    let i2 = Hmss::execute(w2.clone(), INITIALIZED, vec![]).unwrap();
    let ia = Hmss::execute(agg.clone(), INITIALIZED, vec![]).unwrap();
    assert_eq!(i1.next_stage, WAIT_TO_START);
    assert_eq!(i2.next_stage, WAIT_ON_SHUFFLE_INPUT_PHASE_ONE);
    assert_eq!(ia.next_stage, WAIT_ON_AGGREGATION_INPUT);
    assert!(published_key(&ia).is_empty());
    let (pk1, pk2) = (published_key(&i1), published_key(&i2));
    assert_eq!(pk1.len(), 32);

    // EDPs 1 and 2 fulfil at w1 (seed sealed to w2), EDP 3 at w2 (seed sealed to w1).
    let r1 = vec![
        fulfil("r1", vectors[0], [1u8; 48], &pk2),
        fulfil("r2", vectors[1], [2u8; 48], &pk2),
    ];
    let r2 = vec![fulfil("r3", vectors[2], [3u8; 48], &pk1)];

    let s1 = Hmss::execute(w1.clone(), SETUP_PHASE, r1.clone()).unwrap();
    assert_eq!(s1.next_stage, WAIT_ON_SHUFFLE_INPUT_PHASE_TWO);
    assert_eq!(
        (s1.sends[0].to.as_str(), s1.sends[0].description),
        ("w2", 1)
    );
    let s2 = Hmss::execute(w2.clone(), SETUP_PHASE, r2.clone()).unwrap();
    assert_eq!(s2.next_stage, SHUFFLE_PHASE);
    assert_eq!(
        (s2.sends[0].to.as_str(), s2.sends[0].description),
        ("w1", 2)
    );
    let spi = ShufflePhaseInput::decode(s1.sends[0].payload.as_slice()).unwrap();
    assert_eq!(spi.secret_seeds.len(), 2);
    assert_eq!(spi.peer_random_seed.len(), 48);

    let mut in1 = vec![peer_input(&s2, "w2")];
    in1.extend(r1);
    let mut in2 = vec![peer_input(&s1, "w1")];
    in2.extend(r2);
    let a1 = Hmss::execute(w1, SHUFFLE_PHASE, in1).unwrap();
    let a2 = Hmss::execute(w2, SHUFFLE_PHASE, in2).unwrap();
    for a in [&a1, &a2] {
        assert_eq!(a.next_stage, COMPLETE);
        assert_eq!((a.sends[0].to.as_str(), a.sends[0].description), ("agg", 3));
    }
    let out = Hmss::execute(
        agg,
        AGGREGATION_PHASE,
        vec![peer_input(&a1, "w1"), peer_input(&a2, "w2")],
    )
    .unwrap();
    assert_eq!(out.next_stage, COMPLETE);
    let result = out.result.unwrap();
    assert_eq!(result.result_public_key, spec.measurement_public_key);
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&MEASUREMENT_SK).unwrap();
    let signed = SignedMessage::decode(
        open(&sk, RESULT_INFO, &result.encrypted_result)
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(signed.certificate, "duchies/agg/certificates/test");
    assert_eq!(
        signed.signature,
        test_signature(&signed.certificate, &signed.message)
    );
    String::from_utf8(signed.message).unwrap()
}

const V1: [u32; 10] = [0, 1, 2, 0, 3, 1, 0, 0, 2, 0];
const V2: [u32; 10] = [1, 0, 1, 0, 0, 1, 0, 2, 0, 0];
const V3: [u32; 10] = [0, 0, 3, 0, 1, 0, 0, 1, 0, 0];

fn truth(mf: u32, vs: [&[u32]; 3]) -> (i64, BTreeMap<u32, f64>) {
    let sum: Vec<u32> = (0..vs[0].len())
        .map(|i| vs.iter().map(|v| v[i]).sum())
        .collect();
    let reach = sum.iter().filter(|&&x| x > 0).count();
    let mut hist: BTreeMap<u32, usize> = BTreeMap::new();
    for &x in sum.iter().filter(|&&x| x > 0) {
        *hist.entry(x.min(mf)).or_default() += 1;
    }
    let dist = hist
        .into_iter()
        .map(|(k, c)| (k, c as f64 / reach as f64))
        .collect();
    (reach as i64, dist)
}

#[test]
fn description_is_valid() {
    let d = Hmss::describe();
    halo_plugin_sdk::stages::validate(&d).unwrap();
    assert_eq!((d.id.as_str(), d.version.as_str()), ("hmss", "1.0.0"));
    assert_eq!(d.stages.len(), 9);
    let shuffle = d.stages.iter().find(|s| s.number == SHUFFLE_PHASE).unwrap();
    assert!(matches!(&shuffle.kind, StageKind::Queued(q) if q.inputs == [1, 2] && q.requisitions));
}

#[test]
fn reach_and_frequency_no_noise_is_exact() {
    let s = spec(false, 3, 1.0, 1e-9);
    let json = run(&s, SysNoise::None, [&V1, &V2, &V3]);
    let (reach, dist) = truth(3, [&V1, &V2, &V3]);
    assert_eq!(json, result_json(reach, &dist, Some(10)));
    assert!(
        json.starts_with("{\"reach\":7,\"frequency\":{\"1\":"),
        "{json}"
    );
}

#[test]
fn reach_only_no_noise_is_exact() {
    let b = |v: &[u32]| -> Vec<u32> { v.iter().map(|&x| u32::from(x > 0)).collect() };
    let (a, bb, c) = (b(&V1), b(&V2), b(&V3));
    let s = spec(true, 1, 1.0, 1e-9);
    let json = run(&s, SysNoise::None, [&a, &bb, &c]);
    let (reach, _) = truth(1, [&a, &bb, &c]);
    assert_eq!(json, result_json(reach, &BTreeMap::new(), Some(10)));
    assert_eq!(
        json,
        "{\"reach\":7,\"frequency\":{},\"frequency_vector_size\":10}"
    );
}

#[test]
fn reach_and_frequency_with_geometric_noise_completes() {
    let s = spec(false, 3, 1.0, 1e-5);
    let json = run(&s, SysNoise::Geometric, [&V1, &V2, &V3]);
    assert!(json.contains("\"frequency_vector_size\":10"), "{json}");
}

#[test]
fn start_rejects_invalid_params() {
    let start = |s: &MeasurementSpec, n| Hmss::start(ctx(Role::Aggregator, "agg", vec![], s, n));
    match start(&spec(false, 3, 0.0, 1e-9), SysNoise::Geometric) {
        Err(StageError::InvalidInput(m)) => assert!(m.contains("epsilon"), "{m}"),
        other => panic!("{other:?}"),
    }
    match start(&spec(false, 3, 1.0, 0.0), SysNoise::DiscreteGaussian) {
        Err(StageError::InvalidInput(m)) => assert!(m.contains("delta"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        start(
            &spec(false, 3, 1.0, 1e-9),
            SysNoise::DeterministicTruncatedLaplace
        ),
        Err(StageError::InvalidInput(_))
    ));
    // 1 + 50 × 3 ≥ 127.
    assert!(matches!(
        start(&spec(false, 50, 1.0, 1e-9), SysNoise::None),
        Err(StageError::InvalidInput(_))
    ));
    // NONE ignores the DP params.
    assert!(start(&spec(false, 3, 0.0, 0.0), SysNoise::None).is_ok());
    let ok = Hmss::start(ctx(
        Role::FirstNonAggregator,
        "w1",
        vec![],
        &spec(true, 1, 1.0, 1e-9),
        SysNoise::Geometric,
    ))
    .unwrap();
    let st: HmssState = state::decode(&ok.state).unwrap();
    assert_eq!((st.seed.len(), st.secret_key.len()), (48, 32));
}

/// A relayed seed must carry a valid signature by the data provider it names; an unavailable
/// check is transient.
#[test]
fn seed_signatures_are_checked() {
    halo_plugin_sdk::identity::native::install(TestIdentity);
    let seed = [5u8; 48];
    let mut s = SecretSeed {
        requisition_id: "r1".into(),
        secret_seed_ciphertext: vec![],
        register_count: 10,
        data_provider_certificate: cert("r1"),
    };
    let owner = "dataProviders/r1";
    assert_eq!(
        verified_seed(&s, owner, &signed_seed("r1", &seed)).unwrap(),
        seed
    );
    // Signed by another data provider than the one named.
    match verified_seed(&s, owner, &signed_seed("r2", &seed)) {
        Err(StageError::InvalidInput(m)) => assert!(m.contains("signature"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Not a SignedMessage at all (e.g. a raw seed).
    assert!(matches!(
        verified_seed(&s, owner, &[0xffu8; 48]),
        Err(StageError::InvalidInput(_))
    ));
    s.data_provider_certificate = "duchies/worker1/certificates/test".into();
    assert!(matches!(
        verified_seed(&s, owner, &signed_seed("r1", &seed)),
        Err(StageError::InvalidInput(_))
    ));
    // Another data provider's certificate, with a seed that data provider really signed (what
    // a relaying duchy or a data provider vouching with someone else's key would send): the
    // signature is valid, the owner is not the requisition's.
    s.data_provider_certificate = cert("r2");
    match verified_seed(&s, owner, &signed_seed("r2", &seed)) {
        Err(StageError::InvalidInput(m)) => assert!(m.contains("dataProviders/r1"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A name that only starts like the owner's is not the owner's.
    s.data_provider_certificate = "dataProviders/r1x/certificates/test".into();
    assert!(matches!(
        verified_seed(&s, owner, &signed_seed("r1", &seed)),
        Err(StageError::InvalidInput(_))
    ));
    s.data_provider_certificate = "dataProviders/unreachable/certificates/x".into();
    assert!(matches!(
        verified_seed(&s, "dataProviders/unreachable", &signed_seed("r1", &seed)),
        Err(StageError::Transient(_))
    ));
}

/// SETUP_PHASE refuses a locally fulfilled requisition without a sealed seed or certificate.
#[test]
fn setup_needs_a_seed_and_a_certificate() {
    let s = spec(false, 3, 1.0, 1e-9);
    let w1 = Hmss::start(ctx(
        Role::FirstNonAggregator,
        "w1",
        vec![],
        &s,
        SysNoise::None,
    ))
    .unwrap();
    let w1 = ctx(Role::FirstNonAggregator, "w1", w1.state, &s, SysNoise::None);
    let good = fulfil("r1", &V1, [1u8; 48], &public_key(&[3u8; 32]).unwrap());
    assert!(Hmss::execute(w1.clone(), SETUP_PHASE, vec![good.clone()]).is_ok());
    for (what, strip) in [
        (
            "secret seed",
            (|h: &mut header::HonestMajorityShareShuffle| h.secret_seed = None) as fn(&mut _),
        ),
        ("certificate", |h| h.data_provider_certificate.clear()),
    ] {
        let mut input = good.clone();
        let InputOrigin::Requisition((_, bytes)) = &mut input.origin else {
            panic!()
        };
        let mut h = Header::decode(bytes.as_slice()).unwrap();
        if let Some(header::Protocol::HonestMajorityShareShuffle(p)) = &mut h.protocol {
            strip(p);
        }
        *bytes = h.encode_to_vec();
        match Hmss::execute(w1.clone(), SETUP_PHASE, vec![input]) {
            Err(StageError::InvalidInput(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn hpke_round_trip() {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&[9u8; 32]).unwrap();
    let sealed = seal(
        &public_key(&[9u8; 32]).unwrap(),
        SEED_INFO,
        b"hello",
        [1; 32],
    )
    .unwrap();
    assert_eq!(sealed.len(), 32 + 5 + 16);
    assert_eq!(open(&sk, SEED_INFO, &sealed).unwrap(), b"hello");
    assert!(open(&sk, RESULT_INFO, &sealed).is_err());
}
