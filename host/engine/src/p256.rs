//! The P-256 half of the `crypto` import (`halo:mpc@1.2`, and 1.3's shifted destructor): the batch operations of
//! `halo-p256` split over a thread pool, the per-computation cache of fixed-base tables, and
//! the per-call limits. The arithmetic is the same crate the plugin SDK runs in the guest, so
//! a plugin gets the same bytes from either.
//!
//! A call's elements are cut into pieces of at most [`PIECE`] elements (enough to share one
//! field inversion per step across many points, small enough to bound the scratch memory),
//! and the pieces run on the pool. Before a piece starts the stage deadline is checked, so the
//! host's CPU time counts against it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use halo_p256::mul::FixedTable;
use halo_p256::ops::{self, CryptoError};
use halo_p256::point::{Affine, POINT_LEN};
use rayon::prelude::*;

/// Most elements of one piece.
pub const PIECE: usize = 1024;
/// Below this many elements a call runs on the calling thread.
const PARALLEL_MIN: usize = 64;
/// Elements one call may pass (points, scalars, ciphertexts, messages, or a count).
pub const MAX_ELEMENTS_PER_CALL: usize = 1 << 24;
/// Handles (`fixed-base` resources) one call may hold.
pub const MAX_HANDLES_PER_CALL: usize = 1024;

/// A stage deadline passed while the host was computing: the call ends like a guest that ran
/// out of time.
#[derive(Debug)]
pub struct HostDeadlineExceeded;

impl std::fmt::Display for HostDeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stage deadline exceeded inside the host's crypto import")
    }
}

impl std::error::Error for HostDeadlineExceeded {}

/// What a crypto call returns to the adapters: the guest-visible result, or a trap.
pub type CallResult<T> = Result<Result<T, CryptoError>, HostDeadlineExceeded>;

/// Limits of the P-256 import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P256Limits {
    /// Threads of the crypto pool; 1 runs every call on the calling thread.
    pub threads: usize,
    /// Fixed bases (tables of 151.5 KiB) one computation may register.
    pub max_fixed_bases_per_computation: usize,
    /// Computations whose tables are kept; the least recently used beyond this are dropped.
    pub max_cached_computations: usize,
}

/// A registered fixed base: its table (shared with the cache) and encoding.
#[derive(Clone)]
pub struct FixedBaseHandle {
    pub(crate) table: Arc<FixedTable>,
    pub(crate) encoded: [u8; POINT_LEN],
}

#[derive(Default)]
struct Cache {
    computations: HashMap<String, CachedComputation>,
    clock: u64,
}

#[derive(Default)]
struct CachedComputation {
    tables: HashMap<[u8; POINT_LEN], Arc<FixedTable>>,
    used: u64,
}

/// The process-wide service: pool, generator table, table cache.
pub struct P256Service {
    pool: Option<rayon::ThreadPool>,
    generator: OnceLock<Arc<FixedTable>>,
    cache: Mutex<Cache>,
    limits: P256Limits,
}

impl std::fmt::Debug for P256Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P256Service")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl P256Service {
    pub fn new(limits: P256Limits) -> anyhow::Result<P256Service> {
        let pool = if limits.threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(limits.threads)
                    .thread_name(|i| format!("halo-crypto-{i}"))
                    .build()?,
            )
        } else {
            None
        };
        Ok(P256Service {
            pool,
            generator: OnceLock::new(),
            cache: Mutex::new(Cache::default()),
            limits,
        })
    }

    /// The generator's table (built once per process).
    pub fn generator(&self) -> FixedBaseHandle {
        let table = self
            .generator
            .get_or_init(|| Arc::new(FixedTable::new(&Affine::generator())))
            .clone();
        FixedBaseHandle {
            encoded: table.base().encode(),
            table,
        }
    }

    /// The table of `point` for `computation`, from the cache or built now.
    pub fn register(
        &self,
        computation: &str,
        point: &[u8],
    ) -> Result<FixedBaseHandle, CryptoError> {
        let base = ops::point("point", point)?;
        let encoded = base.encode();
        if encoded == Affine::generator().encode() {
            return Ok(self.generator());
        }
        let cap = self.limits.max_fixed_bases_per_computation;
        if computation.is_empty() {
            // A call outside any computation (`describe`, tools): nothing to keep it for.
            return Ok(FixedBaseHandle {
                table: Arc::new(FixedTable::new(&base)),
                encoded,
            });
        }
        {
            let mut cache = self.lock();
            cache.clock += 1;
            let now = cache.clock;
            if let Some(c) = cache.computations.get_mut(computation) {
                c.used = now;
                if let Some(t) = c.tables.get(&encoded) {
                    return Ok(FixedBaseHandle {
                        table: t.clone(),
                        encoded,
                    });
                }
                if c.tables.len() >= cap {
                    return Err(too_many(cap));
                }
            }
        }
        // Build outside the lock (a few milliseconds).
        let table = Arc::new(FixedTable::new(&base));
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        let c = cache
            .computations
            .entry(computation.to_owned())
            .or_default();
        c.used = now;
        if let Some(t) = c.tables.get(&encoded) {
            return Ok(FixedBaseHandle {
                table: t.clone(),
                encoded,
            });
        }
        if c.tables.len() >= cap {
            return Err(too_many(cap));
        }
        c.tables.insert(encoded, table.clone());
        // Keep at most max_cached_computations computations: drop the least recently used.
        while cache.computations.len() > self.limits.max_cached_computations.max(1) {
            // A computation whose tables a running call still holds is not dropped: it would
            // start again from an empty count and could exceed its cap.
            let oldest = cache
                .computations
                .iter()
                .filter(|(k, c)| {
                    k.as_str() != computation
                        && c.tables.values().all(|t| Arc::strong_count(t) == 1)
                })
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    cache.computations.remove(&k);
                }
                None => break,
            }
        }
        Ok(FixedBaseHandle { table, encoded })
    }

    /// Drops the tables of a computation that ended.
    pub fn forget(&self, computation: &str) {
        self.lock().computations.remove(computation);
    }

    /// Tables cached for `computation` (tests, metrics).
    pub fn cached_tables(&self, computation: &str) -> usize {
        self.lock()
            .computations
            .get(computation)
            .map_or(0, |c| c.tables.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic could break halfway.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` over the pieces of `0..n` (in parallel when worth it) and concatenates the
    /// outputs in order. The first error in element order wins; a passed deadline aborts.
    pub fn run<T: Send>(
        &self,
        n: usize,
        deadline: Instant,
        f: impl Fn(Range<usize>) -> Result<Vec<T>, CryptoError> + Sync,
    ) -> CallResult<Vec<T>> {
        self.run_in(n, PIECE, deadline, f)
    }

    /// [`Self::run`] with pieces of at most `piece_size` elements.
    pub fn run_in<T: Send>(
        &self,
        n: usize,
        piece_size: usize,
        deadline: Instant,
        f: impl Fn(Range<usize>) -> Result<Vec<T>, CryptoError> + Sync,
    ) -> CallResult<Vec<T>> {
        let piece_size = piece_size.max(1);
        if n > MAX_ELEMENTS_PER_CALL {
            return Ok(Err(CryptoError::Limit(format!(
                "{n} elements in one call; the host takes at most {MAX_ELEMENTS_PER_CALL}"
            ))));
        }
        let piece = |r: Range<usize>| -> CallResult<Vec<T>> {
            if Instant::now() >= deadline {
                return Err(HostDeadlineExceeded);
            }
            let start = r.start;
            Ok(f(r).map_err(|e| e.shifted(start)))
        };
        let pieces: Vec<Range<usize>> = match (&self.pool, n >= PARALLEL_MIN) {
            (Some(_), true) => {
                // At least one piece per thread, at most PIECE elements each.
                let count = n.div_ceil(piece_size).max(self.limits.threads).min(n);
                let size = n.div_ceil(count);
                (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
            }
            _ => (0..n.max(1))
                .step_by(piece_size)
                .map(|s| s..(s + piece_size).min(n))
                .collect(),
        };
        let results: Vec<CallResult<Vec<T>>> = match (&self.pool, pieces.len() > 1) {
            // In waves of one piece per thread: another call's pieces, queued meanwhile, run
            // between two waves instead of after this whole call.
            (Some(pool), true) => {
                let mut out = Vec::with_capacity(pieces.len());
                for wave in pieces.chunks(self.limits.threads.max(1)) {
                    let done: Vec<CallResult<Vec<T>>> =
                        pool.install(|| wave.par_iter().cloned().map(piece).collect());
                    let stop = done.iter().any(stops);
                    out.extend(done);
                    if stop {
                        break;
                    }
                }
                out
            }
            _ => {
                let mut out = Vec::with_capacity(pieces.len());
                for r in pieces {
                    let res = piece(r);
                    let stop = stops(&res);
                    out.push(res);
                    if stop {
                        break;
                    }
                }
                out
            }
        };
        // Every piece checks all its inputs before computing, so a piece that failed on an
        // input has the lowest bad input of its range. The first such piece names the error;
        // only if no input is bad does the first `identity` result count (as when the whole
        // batch is checked first, which is what the pure implementation does).
        let mut all = Vec::with_capacity(n);
        let mut identity = None;
        for r in results {
            match r? {
                Ok(v) => all.extend(v),
                Err(e @ CryptoError::Identity { .. }) => {
                    identity.get_or_insert(e);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        if let Some(e) = identity {
            return Ok(Err(e));
        }
        Ok(Ok(all))
    }
}

/// Whether a piece's result ends the call: a deadline, or a bad input (later pieces cannot
/// have a lower bad input). An `identity` result does not: a later piece may still hold a bad
/// input, which takes precedence.
fn stops<T>(r: &CallResult<Vec<T>>) -> bool {
    match r {
        Err(_) => true,
        Ok(Err(CryptoError::Identity { .. })) | Ok(Ok(_)) => false,
        Ok(Err(_)) => true,
    }
}

fn too_many(cap: usize) -> CryptoError {
    CryptoError::Limit(format!(
        "this computation already has the host's maximum of {cap} fixed bases"
    ))
}

/// Splits a byte argument of `unit`-byte elements at element range `r`.
pub fn piece<'a>(data: &'a [u8], unit: usize, r: &Range<usize>) -> &'a [u8] {
    &data[r.start * unit..r.end * unit]
}

// ---------------------------------------------------------------------------------------------
// The import's functions, version-independent (the bindings modules adapt them).

use halo_p256::ops::{CIPHERTEXT_LEN, ElGamalKey, SCALAR_LEN};
use wasmtime::component::Resource;

use crate::host::HostState;

/// What an ElGamal operation runs over: elements of an argument, or a count.
enum KeyedInput<'a> {
    Elements(&'a str, &'a [u8], usize),
    Count(u32),
}

/// A ciphertext operation keyed by one scalar: `op(scalar, ciphertexts)`.
pub type ScalarOp = fn(&[u8], &[u8]) -> Result<Vec<u8>, CryptoError>;

fn check_count(argument: &str, data: &[u8], unit: usize) -> Result<usize, CryptoError> {
    ops::count(argument, data, unit)
}

fn pair(a: (&str, usize), b: (&str, usize)) -> Result<(), CryptoError> {
    if a.1 != b.1 {
        return Err(CryptoError::BadLength(format!(
            "{} has {} elements but {} has {}",
            a.0, a.1, b.0, b.1
        )));
    }
    Ok(())
}

/// `?` for the guest-visible error inside a `CallResult` function.
macro_rules! guest {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

fn rng() -> impl FnMut(&mut [u8]) {
    let mut r = rand::rng();
    move |buf: &mut [u8]| rand::RngCore::fill_bytes(&mut r, buf)
}

impl HostState {
    /// A result of `bytes` bytes must fit in the guest's memory.
    fn output_fits(&self, bytes: u128) -> Result<(), CryptoError> {
        if bytes > self.limits.memory_limit as u128 {
            return Err(CryptoError::Limit(format!(
                "a result of {bytes} bytes exceeds the plugin's memory limit of {} bytes",
                self.limits.memory_limit
            )));
        }
        Ok(())
    }

    fn handle(&self, h: &Resource<FixedBaseHandle>) -> wasmtime::Result<FixedBaseHandle> {
        Ok(self.resources.get(h)?.clone())
    }

    fn new_handle(
        &mut self,
        h: FixedBaseHandle,
    ) -> wasmtime::Result<Result<Resource<FixedBaseHandle>, CryptoError>> {
        if self.handles >= MAX_HANDLES_PER_CALL {
            return Ok(Err(CryptoError::Limit(format!(
                "a call may hold at most {MAX_HANDLES_PER_CALL} fixed-base handles at once"
            ))));
        }
        self.handles += 1;
        Ok(Ok(self.resources.push(h)?))
    }

    pub fn fixed_base_generator(
        &mut self,
    ) -> wasmtime::Result<Result<Resource<FixedBaseHandle>, CryptoError>> {
        let h = self.p256.generator();
        self.new_handle(h)
    }

    pub fn fixed_base_register(
        &mut self,
        point: &[u8],
    ) -> wasmtime::Result<Result<Resource<FixedBaseHandle>, CryptoError>> {
        if Instant::now() >= self.deadline {
            return Err(HostDeadlineExceeded.into());
        }
        if self.handles >= MAX_HANDLES_PER_CALL {
            return Ok(Err(CryptoError::Limit(format!(
                "a call may hold at most {MAX_HANDLES_PER_CALL} fixed-base handles at once"
            ))));
        }
        let h = match self.p256.register(&self.computation, point) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        self.new_handle(h)
    }

    pub fn fixed_base_point(&mut self, h: &Resource<FixedBaseHandle>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.handle(h)?.encoded.to_vec())
    }

    pub fn fixed_base_drop(&mut self, h: Resource<FixedBaseHandle>) -> wasmtime::Result<()> {
        self.resources.delete(h)?;
        self.handles = self.handles.saturating_sub(1);
        Ok(())
    }

    pub fn fixed_base_mul(
        &mut self,
        h: &Resource<FixedBaseHandle>,
        scalars: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        let t = self.handle(h)?;
        let n = match check_count("scalars", scalars, SCALAR_LEN) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.p256.run(n, self.deadline, |r| {
            ops::mul_fixed(&t.table, piece(scalars, SCALAR_LEN, &r))
        })?)
    }

    pub fn p256_validate(&mut self, points: &[u8]) -> CallResult<()> {
        let n = guest!(check_count("points", points, POINT_LEN));
        let r = self.p256.run(n, self.deadline, |r| {
            ops::validate_points(piece(points, POINT_LEN, &r)).map(|()| Vec::<u8>::new())
        })?;
        Ok(r.map(|_| ()))
    }

    pub fn p256_compress(&mut self, point: &[u8]) -> CallResult<Vec<u8>> {
        Ok(ops::compress(point))
    }

    pub fn p256_mul(&mut self, points: &[u8], scalar: &[u8]) -> CallResult<Vec<u8>> {
        guest!(ops::scalar("scalar", scalar));
        let n = guest!(check_count("points", points, POINT_LEN));
        self.p256.run(n, self.deadline, |r| {
            ops::mul(piece(points, POINT_LEN, &r), scalar)
        })
    }

    pub fn p256_mul_each(&mut self, points: &[u8], scalars: &[u8]) -> CallResult<Vec<u8>> {
        let n = guest!(check_count("points", points, POINT_LEN));
        let m = guest!(check_count("scalars", scalars, SCALAR_LEN));
        guest!(pair(("points", n), ("scalars", m)));
        self.p256.run(n, self.deadline, |r| {
            ops::mul_each(piece(points, POINT_LEN, &r), piece(scalars, SCALAR_LEN, &r))
        })
    }

    pub fn p256_add_sub(&mut self, a: &[u8], b: &[u8], sub: bool) -> CallResult<Vec<u8>> {
        let n = guest!(check_count("a", a, POINT_LEN));
        let m = guest!(check_count("b", b, POINT_LEN));
        guest!(pair(("a", n), ("b", m)));
        self.p256.run(n, self.deadline, |r| {
            let (a, b) = (piece(a, POINT_LEN, &r), piece(b, POINT_LEN, &r));
            if sub { ops::sub(a, b) } else { ops::add(a, b) }
        })
    }

    pub fn p256_negate(&mut self, points: &[u8]) -> CallResult<Vec<u8>> {
        let n = guest!(check_count("points", points, POINT_LEN));
        self.p256.run(n, self.deadline, |r| {
            ops::negate(piece(points, POINT_LEN, &r))
        })
    }

    pub fn p256_multiples(&mut self, point: &[u8], count: u32) -> CallResult<Vec<u8>> {
        guest!(ops::point("point", point));
        guest!(self.output_fits(count as u128 * POINT_LEN as u128));
        self.p256.run(count as usize, self.deadline, |r| {
            ops::multiples_from(point, r.start as u64 + 1, r.len())
        })
    }

    pub fn p256_hash_to_curve(&mut self, messages: &[Vec<u8>]) -> CallResult<(Vec<u8>, Vec<u32>)> {
        guest!(self.output_fits(messages.len() as u128 * (POINT_LEN as u128 + 4)));
        let hashed = guest!(self.p256.run(messages.len(), self.deadline, |r| {
            Ok(messages[r]
                .iter()
                .map(|m| {
                    let (p, tries) = halo_p256::h2c::hash_to_curve(m);
                    (p.encode(), tries)
                })
                .collect())
        })?);
        let mut points = Vec::with_capacity(hashed.len() * POINT_LEN);
        let mut tries = Vec::with_capacity(hashed.len());
        for (p, t) in hashed {
            points.extend_from_slice(&p);
            tries.push(t);
        }
        Ok(Ok((points, tries)))
    }

    pub fn p256_random_scalars(&mut self, count: u32) -> CallResult<Vec<u8>> {
        guest!(self.output_fits(count as u128 * SCALAR_LEN as u128));
        self.p256.run(count as usize, self.deadline, |r| {
            Ok(ops::random_scalars(r.len(), &mut rng()))
        })
    }

    fn elgamal_key(
        &self,
        key: &Resource<FixedBaseHandle>,
    ) -> wasmtime::Result<(FixedBaseHandle, FixedBaseHandle)> {
        Ok((self.p256.generator(), self.handle(key)?))
    }

    /// An operation under an ElGamal key over `n` elements of `unit` bytes of `data` (none:
    /// `n` from a count), each giving a 66-byte ciphertext.
    fn with_key(
        &mut self,
        key: &Resource<FixedBaseHandle>,
        input: KeyedInput<'_>,
        op: impl Fn(
            &ElGamalKey<'_>,
            std::ops::Range<usize>,
            &mut dyn ops::RandomSource,
        ) -> Result<Vec<u8>, CryptoError>
        + Sync,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        let (g, y) = self.elgamal_key(key)?;
        let n = match input {
            KeyedInput::Elements(argument, data, unit) => match check_count(argument, data, unit) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            },
            KeyedInput::Count(n) => n as usize,
        };
        if let Err(e) = self.output_fits(n as u128 * CIPHERTEXT_LEN as u128) {
            return Ok(Err(e));
        }
        Ok(self.p256.run(n, self.deadline, |r| {
            let k = ElGamalKey {
                generator: &g.table,
                key: &y.table,
            };
            op(&k, r, &mut rng())
        })?)
    }

    pub fn elgamal_encrypt(
        &mut self,
        key: &Resource<FixedBaseHandle>,
        plaintexts: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        let input = KeyedInput::Elements("plaintexts", plaintexts, POINT_LEN);
        self.with_key(key, input, |k, r, rng| {
            ops::encrypt(k, piece(plaintexts, POINT_LEN, &r), rng)
        })
    }

    pub fn elgamal_encrypt_zero(
        &mut self,
        key: &Resource<FixedBaseHandle>,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        self.with_key(key, KeyedInput::Count(count), |k, r, rng| {
            ops::encrypt_zero(k, r.len(), rng)
        })
    }

    pub fn elgamal_rerandomize(
        &mut self,
        key: &Resource<FixedBaseHandle>,
        cts: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        let input = KeyedInput::Elements("ciphertexts", cts, CIPHERTEXT_LEN);
        self.with_key(key, input, |k, r, rng| {
            ops::rerandomize(k, piece(cts, CIPHERTEXT_LEN, &r), rng)
        })
    }

    pub fn elgamal_partial_decrypt_rerandomize(
        &mut self,
        secret: &[u8],
        key: &Resource<FixedBaseHandle>,
        cts: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        if let Err(e) = ops::scalar("secret", secret) {
            // The key handle is checked first (a bad handle is a trap, not data).
            self.elgamal_key(key)?;
            return Ok(Err(e));
        }
        let input = KeyedInput::Elements("ciphertexts", cts, CIPHERTEXT_LEN);
        self.with_key(key, input, |k, r, rng| {
            ops::partial_decrypt_rerandomize(secret, k, piece(cts, CIPHERTEXT_LEN, &r), rng)
        })
    }

    /// The ciphertext operations keyed by one scalar argument: decrypt, partial decrypt,
    /// scale.
    pub fn elgamal_with_scalar(
        &mut self,
        name: &str,
        scalar: &[u8],
        cts: &[u8],
        op: ScalarOp,
    ) -> CallResult<Vec<u8>> {
        guest!(ops::scalar(name, scalar));
        let n = guest!(check_count("ciphertexts", cts, CIPHERTEXT_LEN));
        self.p256.run(n, self.deadline, |r| {
            op(scalar, piece(cts, CIPHERTEXT_LEN, &r))
        })
    }

    pub fn elgamal_is_zero(&mut self, secret: &[u8], cts: &[u8]) -> CallResult<Vec<bool>> {
        guest!(ops::scalar("secret", secret));
        let n = guest!(check_count("ciphertexts", cts, CIPHERTEXT_LEN));
        self.p256.run(n, self.deadline, |r| {
            ops::is_zero(secret, piece(cts, CIPHERTEXT_LEN, &r))
        })
    }

    pub fn elgamal_blind(&mut self, secret: &[u8], k: &[u8], cts: &[u8]) -> CallResult<Vec<u8>> {
        guest!(ops::scalar("secret", secret));
        guest!(ops::scalar("blinding-key", k));
        let n = guest!(check_count("ciphertexts", cts, CIPHERTEXT_LEN));
        self.p256.run(n, self.deadline, |r| {
            ops::blind(secret, k, piece(cts, CIPHERTEXT_LEN, &r))
        })
    }

    pub fn elgamal_scale_random(&mut self, cts: &[u8]) -> CallResult<Vec<u8>> {
        let n = guest!(check_count("ciphertexts", cts, CIPHERTEXT_LEN));
        self.p256.run(n, self.deadline, |r| {
            ops::scale_random(piece(cts, CIPHERTEXT_LEN, &r), &mut rng())
        })
    }

    /// `rᵢⱼ·(Cᵢ + cⱼ·D)` (WIT 1.3 `elgamal-scale-random-shifted`): the shift, lengths and
    /// multiplier cap first (as the pure implementation), then the host's result limits, then
    /// the elements in pieces of whole ciphertexts (each with its `m ≤ 4096` results) on the
    /// pool, so the deadline is checked between pieces of at most ~8k results.
    pub fn elgamal_scale_random_shifted(
        &mut self,
        cts: &[u8],
        shift: &[u8],
        multipliers: &[u8],
    ) -> CallResult<Vec<u8>> {
        let (n, m) = guest!(ops::shifted_preflight(cts, shift, multipliers));
        if n > MAX_ELEMENTS_PER_CALL {
            return Ok(Err(CryptoError::Limit(format!(
                "{n} elements in one call; the host takes at most {MAX_ELEMENTS_PER_CALL}"
            ))));
        }
        let results = n as u128 * m as u128;
        if results > MAX_ELEMENTS_PER_CALL as u128 {
            return Ok(Err(CryptoError::Limit(format!(
                "{n} ciphertexts × {m} multipliers = {results} results in one call; the host \
                 takes at most {MAX_ELEMENTS_PER_CALL}"
            ))));
        }
        guest!(self.output_fits(results * CIPHERTEXT_LEN as u128));
        if let Err(bad) = ops::decode_scalars("multipliers", multipliers) {
            // A bad ciphertext at or below the bad multiplier's index comes first; checked in
            // pieces like any other input.
            let j = match &bad {
                CryptoError::InvalidScalar { index, .. } => *index as usize,
                _ => 0,
            };
            let upto = n.min(j.saturating_add(1));
            let head = &cts[..upto * CIPHERTEXT_LEN];
            guest!(self.p256.run(upto, self.deadline, |r| {
                ops::decode_ciphertexts("ciphertexts", piece(head, CIPHERTEXT_LEN, &r))
                    .map(|_| Vec::<u8>::new())
            })?);
            return Ok(Err(bad));
        }
        if m == 0 {
            // Nothing to compute, but every ciphertext is still checked (as the pure
            // implementation does), in pieces under the deadline.
            guest!(self.p256.run(n, self.deadline, |r| {
                ops::decode_ciphertexts("ciphertexts", piece(cts, CIPHERTEXT_LEN, &r))
                    .map(|_| Vec::<u8>::new())
            })?);
            return Ok(Ok(Vec::new()));
        }
        let columns = (PIECE * 8 / m).max(1);
        self.p256.run_in(n, columns, self.deadline, |r| {
            let start = r.start;
            ops::scale_random_shifted(
                piece(cts, CIPHERTEXT_LEN, &r),
                shift,
                multipliers,
                &mut rng(),
            )
            .map_err(|e| match e {
                // `run_in` adds `start` (the piece's first ciphertext); a result index
                // needs start·m.
                CryptoError::Identity { index } => CryptoError::Identity {
                    index: index.saturating_add(
                        u32::try_from(start.saturating_mul(m - 1)).unwrap_or(u32::MAX),
                    ),
                },
                e => e,
            })
        })
    }

    pub fn elgamal_add_sub(&mut self, a: &[u8], b: &[u8], sub: bool) -> CallResult<Vec<u8>> {
        let n = guest!(check_count("a", a, CIPHERTEXT_LEN));
        let m = guest!(check_count("b", b, CIPHERTEXT_LEN));
        guest!(pair(("a", n), ("b", m)));
        self.p256.run(n, self.deadline, |r| {
            let (a, b) = (piece(a, CIPHERTEXT_LEN, &r), piece(b, CIPHERTEXT_LEN, &r));
            if sub {
                ops::ciphertext_sub(a, b)
            } else {
                ops::ciphertext_add(a, b)
            }
        })
    }

    pub fn sort_blocks(&mut self, data: &[u8], block: u32) -> CallResult<Vec<u8>> {
        let block = block as usize;
        if block == 0 {
            return Ok(Err(CryptoError::BadLength(
                "block size must be at least 1".into(),
            )));
        }
        let n = guest!(check_count("data", data, block));
        if n > MAX_ELEMENTS_PER_CALL {
            return Ok(Err(CryptoError::Limit(format!(
                "{n} records in one call; the host takes at most {MAX_ELEMENTS_PER_CALL}"
            ))));
        }
        if Instant::now() >= self.deadline {
            return Err(HostDeadlineExceeded);
        }
        // Sort 4-byte indices, not slices: the scratch is 4 bytes per record.
        let mut order = guest!(ops::block_order(n));
        let by_bytes =
            |a: &u32, b: &u32| ops::block_at(data, block, *a).cmp(ops::block_at(data, block, *b));
        match &self.p256.pool {
            Some(pool) => pool.install(|| order.par_sort_unstable_by(by_bytes)),
            None => order.sort_unstable_by(by_bytes),
        }
        if Instant::now() >= self.deadline {
            return Err(HostDeadlineExceeded);
        }
        Ok(Ok(ops::gather_blocks(data, block, &order)))
    }
}
