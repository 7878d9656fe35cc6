//! Scalar multiplication kernels.
//!
//! * Variable base: regular signed odd-digit windows of 5 bits (52 digits, every digit
//!   non-zero, so each window costs five doublings and one addition whatever the scalar),
//!   a table of the odd multiples `P, 3P, …, 31P`, constant-time table reads.
//! * Fixed base ([`FixedTable`]): 37 windows of 7 bits, a table of the 64 odd multiples of
//!   `2^(7i)·P` per window (151.5 KiB), 36 additions and no doublings.
//! * Batches run in affine coordinates with one field inversion per step shared by the
//!   whole batch (Montgomery's trick), so an addition costs 5M + 1S instead of 11M + 5S
//!   and no result needs its own inversion. The rare exceptional additions (equal or opposite
//!   points, reachable only by crafted scalars) are detected and recomputed with the
//!   complete Jacobian formulas.
//!
//! An even scalar `k` is replaced by the odd `n − k` and the result negated, so recoding
//! never branches on the scalar. Table reads scan every entry.

use crate::field::{Fe, batch_invert_nonzero};
use crate::point::{Affine, Jacobian};
use crate::scalar::{Scalar, recode_odd};

/// Below this many elements a batch runs in Jacobian coordinates and shares only the final
/// inversion: one inversion per step would cost more than the affine formulas save.
const SMALL_BATCH: usize = 24;
const VAR_W: u32 = 5;
const VAR_DIGITS: usize = 52;
const VAR_ENTRIES: usize = 16;
const FIXED_W: u32 = 7;
/// Windows of a fixed-base table.
pub const FIXED_WINDOWS: usize = 37;
const FIXED_ENTRIES: usize = 64;

/// A scalar's signed digits, and whether they represent `−k` (even `k`).
struct Recoded {
    digits: Vec<i32>,
    negate: bool,
}

fn recode(k: &Scalar, w: u32, len: usize) -> Recoded {
    let even = !k.is_odd();
    let odd = k.select(&k.neg(), 0u64.wrapping_sub(even as u64));
    let mut digits = Vec::with_capacity(len);
    recode_odd(&odd.0, w, len, &mut digits);
    Recoded {
        digits,
        negate: even,
    }
}

/// Table index and sign mask of a digit (`negate` flips the sign).
#[inline(always)]
fn digit_parts(d: i32, negate: bool) -> (usize, u64) {
    let s = d >> 31; // all ones if negative
    let abs = (d ^ s) - s;
    let idx = ((abs - 1) >> 1) as usize;
    let neg = (s as u64) ^ 0u64.wrapping_sub(negate as u64);
    (idx, neg)
}

/// Reads entry `idx` of `table` touching every entry.
#[inline(always)]
fn ct_select(table: &[Affine], idx: usize) -> Affine {
    let mut x = [0u64; 4];
    let mut y = [0u64; 4];
    for (j, e) in table.iter().enumerate() {
        let m = 0u64.wrapping_sub((j == idx) as u64);
        for l in 0..4 {
            x[l] |= e.x.0[l] & m;
            y[l] |= e.y.0[l] & m;
        }
    }
    Affine { x: Fe(x), y: Fe(y) }
}

fn ct_select_jacobian(table: &[Jacobian; VAR_ENTRIES], idx: usize) -> Jacobian {
    let mut out = [0u64; 12];
    for (j, e) in table.iter().enumerate() {
        let m = 0u64.wrapping_sub((j == idx) as u64);
        for l in 0..4 {
            out[l] |= e.x.0[l] & m;
            out[4 + l] |= e.y.0[l] & m;
            out[8 + l] |= e.z.0[l] & m;
        }
    }
    Jacobian {
        x: Fe([out[0], out[1], out[2], out[3]]),
        y: Fe([out[4], out[5], out[6], out[7]]),
        z: Fe([out[8], out[9], out[10], out[11]]),
    }
}

/// `k·p` in Jacobian coordinates, one point at a time (no inversion).
pub fn mul_var(p: &Affine, k: &Scalar) -> Jacobian {
    if k.is_zero() {
        return Jacobian::IDENTITY;
    }
    let rc = recode(k, VAR_W, VAR_DIGITS);
    let pj = p.to_jacobian();
    let p2 = pj.double();
    let mut table = [pj; VAR_ENTRIES];
    for j in 1..VAR_ENTRIES {
        table[j] = table[j - 1].add(&p2);
    }
    let pick = |d: i32| {
        let (idx, neg) = digit_parts(d, rc.negate);
        let e = ct_select_jacobian(&table, idx);
        Jacobian {
            x: e.x,
            y: Fe::select(&e.y, &e.y.neg(), neg),
            z: e.z,
        }
    };
    let mut acc = pick(rc.digits[VAR_DIGITS - 1]);
    for i in (0..VAR_DIGITS - 1).rev() {
        for _ in 0..VAR_W {
            acc = acc.double();
        }
        acc = acc.add(&pick(rc.digits[i]));
    }
    acc
}

/// Entry `(i, j)` = `(2j+1)·2^(w·i)·P` for `windows × entries` entries, with the complete
/// Jacobian formulas and one inversion (an identity entry, impossible for a point of prime
/// order and these sizes, would read as `P`).
fn window_tables(p: &Affine, windows: usize, entries: usize, w: u32) -> Vec<Affine> {
    let mut jac = Vec::with_capacity(windows * entries);
    let mut b = p.to_jacobian();
    for _ in 0..windows {
        let b2 = b.double();
        let mut e = b;
        jac.push(e);
        for _ in 1..entries {
            e = e.add(&b2);
            jac.push(e);
        }
        for _ in 0..w {
            b = b.double();
        }
    }
    crate::point::normalize_batch(&jac)
        .into_iter()
        .map(|a| a.unwrap_or(*p))
        .collect()
}

/// The precomputed odd multiples of one fixed point, for many multiplications by it.
#[derive(Clone)]
pub struct FixedTable {
    /// `FIXED_WINDOWS × FIXED_ENTRIES`: entry `(i, j)` is `(2j+1)·2^(7i)·P`.
    entries: Vec<Affine>,
    base: Affine,
}

impl std::fmt::Debug for FixedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedTable")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl FixedTable {
    /// Bytes of memory one table holds.
    pub const BYTES: usize = FIXED_WINDOWS * FIXED_ENTRIES * std::mem::size_of::<Affine>();

    /// Builds the table of `base` (about 2 400 point additions and one batched inversion).
    pub fn new(base: &Affine) -> FixedTable {
        // No entry is the identity: (2j+1)·2^(7i) < n for every window and entry.
        let entries = window_tables(base, FIXED_WINDOWS, FIXED_ENTRIES, FIXED_W);
        FixedTable {
            entries,
            base: *base,
        }
    }

    /// The point this table multiplies.
    pub fn base(&self) -> &Affine {
        &self.base
    }

    fn window(&self, i: usize) -> &[Affine] {
        &self.entries[i * FIXED_ENTRIES..(i + 1) * FIXED_ENTRIES]
    }

    fn pick(&self, i: usize, d: i32, negate: bool) -> Affine {
        let (idx, neg) = digit_parts(d, negate);
        ct_select(self.window(i), idx).cneg(neg)
    }

    /// `k·base` in Jacobian coordinates (one multiplication; batches use [`Self::mul_batch`]).
    pub fn mul(&self, k: &Scalar) -> Jacobian {
        if k.is_zero() {
            return Jacobian::IDENTITY;
        }
        let rc = recode(k, FIXED_W, FIXED_WINDOWS);
        let mut acc = self.pick(0, rc.digits[0], rc.negate).to_jacobian();
        for i in 1..FIXED_WINDOWS {
            acc = acc.add_affine(&self.pick(i, rc.digits[i], rc.negate));
        }
        acc
    }

    /// `kᵢ·base` for every scalar, in affine coordinates (`None` for a zero scalar).
    pub fn mul_batch(&self, scalars: &[Scalar]) -> Vec<Option<Affine>> {
        let n = scalars.len();
        if n < SMALL_BATCH {
            let jac: Vec<Jacobian> = scalars.iter().map(|k| self.mul(k)).collect();
            return crate::point::normalize_batch(&jac);
        }
        let rcs: Vec<Option<Recoded>> = scalars
            .iter()
            .map(|k| (!k.is_zero()).then(|| recode(k, FIXED_W, FIXED_WINDOWS)))
            .collect();
        let mut batch = AffineBatch::new(n);
        for (i, rc) in rcs.iter().enumerate() {
            match rc {
                Some(rc) => batch.acc.push(self.pick(0, rc.digits[0], rc.negate)),
                None => {
                    batch.dead[i] = true;
                    batch.acc.push(self.base);
                }
            }
        }
        let mut addends = Vec::with_capacity(n);
        for w in 1..FIXED_WINDOWS {
            addends.clear();
            for rc in &rcs {
                addends.push(match rc {
                    Some(rc) => self.pick(w, rc.digits[w], rc.negate),
                    None => self.base,
                });
            }
            batch.add(&addends);
        }
        batch.finish(|i| self.mul(&scalars[i]).to_affine())
    }
}

/// A batch of affine accumulators advanced together, one inversion per step. Elements that
/// hit an exceptional case are marked dead and recomputed by the caller's fallback.
struct AffineBatch {
    acc: Vec<Affine>,
    dead: Vec<bool>,
    den: Vec<Fe>,
    scratch: Vec<Fe>,
}

impl AffineBatch {
    fn new(n: usize) -> Self {
        AffineBatch {
            acc: Vec::with_capacity(n),
            dead: vec![false; n],
            den: Vec::with_capacity(n),
            scratch: Vec::with_capacity(n),
        }
    }

    /// `accᵢ += qᵢ`.
    fn add(&mut self, q: &[Affine]) {
        self.den.clear();
        for ((a, q), dead) in self.acc.iter().zip(q).zip(self.dead.iter_mut()) {
            let d = q.x.sub(&a.x);
            if d.is_zero() {
                *dead = true;
            }
            self.den.push(if *dead { Fe::ONE } else { d });
        }
        batch_invert_nonzero(&mut self.den, &mut self.scratch);
        for ((a, q), inv) in self.acc.iter_mut().zip(q).zip(self.den.iter()) {
            let l = q.y.sub(&a.y).mul(inv);
            let x3 = l.square().sub(&a.x).sub(&q.x);
            let y3 = l.mul(&a.x.sub(&x3)).sub(&a.y);
            *a = Affine { x: x3, y: y3 };
        }
    }

    /// `accᵢ = 2·accᵢ` (no affine point has y = 0: P-256 has no point of order 2).
    fn double(&mut self) {
        self.den.clear();
        for (a, dead) in self.acc.iter().zip(self.dead.iter()) {
            self.den.push(if *dead { Fe::ONE } else { a.y.double() });
        }
        batch_invert_nonzero(&mut self.den, &mut self.scratch);
        for (a, inv) in self.acc.iter_mut().zip(self.den.iter()) {
            let x2 = a.x.square();
            let t = x2.sub(&Fe::ONE);
            let l = t.double().add(&t).mul(inv);
            let x3 = l.square().sub(&a.x.double());
            let y3 = l.mul(&a.x.sub(&x3)).sub(&a.y);
            *a = Affine { x: x3, y: y3 };
        }
    }

    fn finish(self, fallback: impl Fn(usize) -> Option<Affine>) -> Vec<Option<Affine>> {
        self.acc
            .into_iter()
            .zip(self.dead)
            .enumerate()
            .map(|(i, (a, dead))| if dead { fallback(i) } else { Some(a) })
            .collect()
    }
}

/// The odd multiples `P, 3P, …, 31P` of every point of a batch (affine, batched).
pub struct OddTables {
    /// `n × 16`.
    entries: Vec<Affine>,
    points: Vec<Affine>,
}

impl OddTables {
    pub fn new(points: &[Affine]) -> OddTables {
        let n = points.len();
        if n < SMALL_BATCH {
            // Small batches multiply point by point (see `msm_batch`): no shared table.
            return OddTables {
                entries: Vec::new(),
                points: points.to_vec(),
            };
        }
        let mut twice = AffineBatch::new(n);
        twice.acc.extend_from_slice(points);
        twice.double();
        let p2 = twice.acc;
        let mut entries = vec![Affine::generator(); n * VAR_ENTRIES];
        let mut cur = AffineBatch::new(n);
        cur.acc.extend_from_slice(points);
        for (i, p) in points.iter().enumerate() {
            entries[i * VAR_ENTRIES] = *p;
        }
        for j in 1..VAR_ENTRIES {
            cur.add(&p2);
            for (i, a) in cur.acc.iter().enumerate() {
                entries[i * VAR_ENTRIES + j] = *a;
            }
        }
        // (2j+1)·P = ±2P is impossible for j < 16, so no element is dead here.
        OddTables {
            entries,
            points: points.to_vec(),
        }
    }

    fn pick(&self, i: usize, d: i32, negate: bool) -> Affine {
        let (idx, neg) = digit_parts(d, negate);
        ct_select(&self.entries[i * VAR_ENTRIES..(i + 1) * VAR_ENTRIES], idx).cneg(neg)
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn points(&self) -> &[Affine] {
        &self.points
    }
}

/// The scalars of one term of [`msm_batch`]: one for every element, or one each.
#[derive(Clone, Copy)]
pub enum Scalars<'a> {
    One(&'a Scalar),
    Each(&'a [Scalar]),
}

impl Scalars<'_> {
    fn get(&self, i: usize) -> &Scalar {
        match self {
            Scalars::One(k) => k,
            Scalars::Each(v) => &v[i],
        }
    }
}

/// For every element `i`: `Σⱼ kⱼᵢ·Pⱼᵢ` over the terms `(tables[j], scalars[j])` with shared
/// doublings (Straus), in affine coordinates; `None` where the sum is the identity.
pub fn msm_batch(terms: &[(&OddTables, Scalars<'_>)]) -> Vec<Option<Affine>> {
    let Some((first, _)) = terms.first() else {
        return Vec::new();
    };
    let n = first.len();
    if n < SMALL_BATCH {
        let jac: Vec<Jacobian> = (0..n)
            .map(|i| {
                let mut acc = Jacobian::IDENTITY;
                for (t, s) in terms {
                    acc = acc.add(&mul_var(&t.points[i], s.get(i)));
                }
                acc
            })
            .collect();
        return crate::point::normalize_batch(&jac);
    }
    // Recode once per distinct scalar: a shared scalar once for the whole term.
    let recoded: Vec<Vec<Option<Recoded>>> = terms
        .iter()
        .map(|(_, s)| match s {
            Scalars::One(k) => vec![(!k.is_zero()).then(|| recode(k, VAR_W, VAR_DIGITS))],
            Scalars::Each(v) => v
                .iter()
                .map(|k| (!k.is_zero()).then(|| recode(k, VAR_W, VAR_DIGITS)))
                .collect(),
        })
        .collect();
    let rc = |j: usize, i: usize| -> Option<&Recoded> {
        let v = &recoded[j];
        if v.len() == 1 {
            v[0].as_ref()
        } else {
            v[i].as_ref()
        }
    };
    let mut batch = AffineBatch::new(n);
    let top = VAR_DIGITS - 1;
    // The top window: the first term's entry, plus the other terms' entries added with the
    // complete Jacobian formulas (they may meet equal points for crafted inputs, and that
    // must not show in the timing), normalized together.
    let mut start = Vec::with_capacity(n);
    for i in 0..n {
        let mut acc = Jacobian::IDENTITY;
        for (j, (t, _)) in terms.iter().enumerate() {
            match rc(j, i) {
                Some(r) => acc = acc.add_affine(&t.pick(i, r.digits[top], r.negate)),
                None => batch.dead[i] = true,
            }
        }
        start.push(acc);
    }
    let start = if terms.len() == 1 {
        start.iter().map(|j| j.affine_if_z_one()).collect()
    } else {
        crate::point::normalize_batch(&start)
    };
    for (i, p) in start.into_iter().enumerate() {
        match p {
            Some(p) => batch.acc.push(p),
            None => {
                batch.dead[i] = true;
                batch.acc.push(first.points[i]);
            }
        }
    }
    let mut addends = Vec::with_capacity(n);
    for w in (0..top).rev() {
        for _ in 0..VAR_W {
            batch.double();
        }
        for (j, (t, _)) in terms.iter().enumerate() {
            addends.clear();
            for i in 0..n {
                addends.push(match rc(j, i) {
                    Some(r) => t.pick(i, r.digits[w], r.negate),
                    None => t.points[i],
                });
            }
            batch.add(&addends);
        }
    }
    batch.finish(|i| {
        let mut acc = Jacobian::IDENTITY;
        for (t, s) in terms {
            acc = acc.add(&mul_var(&t.points[i], s.get(i)));
        }
        acc.to_affine()
    })
}

/// `aᵢ + bᵢ` for every pair, batched; `None` where the sum is the identity.
pub fn add_batch(a: &[Affine], b: &[Affine]) -> Vec<Option<Affine>> {
    let mut batch = AffineBatch::new(a.len());
    batch.acc.extend_from_slice(a);
    batch.add(b);
    batch.finish(|i| a[i].to_jacobian().add_affine(&b[i]).to_affine())
}

const SHARED_W: u32 = 4;
const SHARED_WINDOWS: usize = 65;
const SHARED_ENTRIES: usize = 8;
/// Scalars per point from which [`SharedTables`] beat [`msm_batch`]: building a table costs
/// about 256 doublings and 455 additions, after which a multiplication costs 64 additions,
/// against 255 doublings and 51 additions for a multiplication with its own odd multiples.
pub const SHARED_MIN_SCALARS: usize = 3;

/// Per-point tables for points that are each multiplied by several scalars: entry `(i, j)`
/// of a point `P` is `(2j+1)·2^(4i)·P` (65 windows of 8 odd multiples, 32.5 KiB a point),
/// built for the whole batch at once. A multiplication then costs 64 additions and no
/// doublings.
pub struct SharedTables {
    /// `points × SHARED_WINDOWS × SHARED_ENTRIES`.
    entries: Vec<Affine>,
    points: Vec<Affine>,
}

impl SharedTables {
    /// Bytes of table per point.
    pub const BYTES_PER_POINT: usize =
        SHARED_WINDOWS * SHARED_ENTRIES * std::mem::size_of::<Affine>();

    /// The tables of every point, built in affine coordinates with one inversion per step.
    pub fn new(points: &[Affine]) -> SharedTables {
        let n = points.len();
        let per = SHARED_WINDOWS * SHARED_ENTRIES;
        let mut entries = vec![Affine::generator(); n * per];
        // base = 2^(4i)·P for every point; twice = 2·base; cur runs over the odd multiples.
        let mut base = AffineBatch::new(n);
        base.acc.extend_from_slice(points);
        for i in 0..SHARED_WINDOWS {
            let mut twice = AffineBatch::new(n);
            twice.acc.extend_from_slice(&base.acc);
            twice.double();
            let mut cur = AffineBatch::new(n);
            cur.acc.extend_from_slice(&base.acc);
            for (p, a) in cur.acc.iter().enumerate() {
                entries[p * per + i * SHARED_ENTRIES] = *a;
            }
            for j in 1..SHARED_ENTRIES {
                cur.add(&twice.acc);
                for (p, a) in cur.acc.iter().enumerate() {
                    entries[p * per + i * SHARED_ENTRIES + j] = *a;
                }
            }
            // (2j−1)·B = ±2·B is impossible for j < 8 and a point of prime order n, and no
            // affine point doubles to the identity, so no element is ever dead here; if one
            // were, its table is rebuilt point by point below.
            for (p, dead) in cur.dead.iter().enumerate() {
                if *dead {
                    Self::rebuild(&mut entries[p * per..(p + 1) * per], &points[p]);
                }
            }
            if i + 1 < SHARED_WINDOWS {
                base = twice;
                for _ in 1..SHARED_W {
                    base.double();
                }
            }
        }
        SharedTables {
            entries,
            points: points.to_vec(),
        }
    }

    /// One point's table with the complete Jacobian formulas.
    fn rebuild(out: &mut [Affine], p: &Affine) {
        let table = window_tables(p, SHARED_WINDOWS, SHARED_ENTRIES, SHARED_W);
        for (o, a) in out.iter_mut().zip(table) {
            *o = a;
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    fn pick(&self, p: usize, i: usize, d: i32, negate: bool) -> Affine {
        let (idx, neg) = digit_parts(d, negate);
        let start = (p * SHARED_WINDOWS + i) * SHARED_ENTRIES;
        ct_select(&self.entries[start..start + SHARED_ENTRIES], idx).cneg(neg)
    }

    /// `kₑ·P_{e / per_point}` for every scalar: `per_point` consecutive scalars for each
    /// point, in point order, in affine coordinates (`None` where the product is the
    /// identity, i.e. for a zero scalar). `scalars.len()` must be `len() × per_point`.
    pub fn mul_rows(&self, per_point: usize, scalars: &[Scalar]) -> Vec<Option<Affine>> {
        let n = scalars.len();
        debug_assert_eq!(n, self.points.len() * per_point);
        if n == 0 || per_point == 0 {
            return Vec::new();
        }
        let point_of = |e: usize| (e / per_point).min(self.points.len().saturating_sub(1));
        let rcs: Vec<Option<Recoded>> = scalars
            .iter()
            .map(|k| (!k.is_zero()).then(|| recode(k, SHARED_W, SHARED_WINDOWS)))
            .collect();
        let mut batch = AffineBatch::new(n);
        for (e, rc) in rcs.iter().enumerate() {
            let p = point_of(e);
            match rc {
                Some(rc) => batch.acc.push(self.pick(p, 0, rc.digits[0], rc.negate)),
                None => {
                    batch.dead[e] = true;
                    batch.acc.push(self.points[p]);
                }
            }
        }
        let mut addends = Vec::with_capacity(n);
        for w in 1..SHARED_WINDOWS {
            addends.clear();
            for (e, rc) in rcs.iter().enumerate() {
                let p = point_of(e);
                addends.push(match rc {
                    Some(rc) => self.pick(p, w, rc.digits[w], rc.negate),
                    None => self.points[p],
                });
            }
            batch.add(&addends);
        }
        batch.finish(|e| mul_var(&self.points[point_of(e)], &scalars[e]).to_affine())
    }
}
