//! Causal attention of a prefill chunk on the host, tile by tile as flash attention does it:
//! each query tile of a head walks the keys it can see in tiles that stay in cache — scores by
//! a matrix product (`matrixmultiply`, vectorised for the CPU it runs on), an online softmax
//! with a vectorised `exp`, the weighted values added to the tile's output — and the tiles are
//! shared among the cores.
//!
//! A query row's numbers depend only on its own position and the keys: key tiles start at
//! fixed key positions and each row's softmax is its own, so a row gets the same bits
//! whatever chunk it is read in or whatever rows are beside it.
//!
//! Its own crate so that it is optimised in every build: the engine's debug builds (which
//! the tests run) compile the engine itself unoptimised, and these loops would then be
//! slower than what they replace (Cargo.toml's `[profile.dev.package.wuwei-cpu-attention]`).
//! The engine calls it with the CPU levers only (`engine/src/model/cpu_attention.rs`).

/// Queries per tile: a tile's scores (`QUERY_TILE × KEY_TILE` floats, 128 KiB) and output
/// stay in a core's L2 cache.
const QUERY_TILE: usize = 64;
/// Keys per tile, from key 0 (fixed positions: see the crate comment).
const KEY_TILE: usize = 512;

/// The shapes of one chunk's attention: `q` is `[heads, queries, dim]` row-major, `k` and
/// `v` are `[kv_heads, keys, dim]` with `kv_stride` elements from one kv head to the next
/// (`keys * dim` when packed; more when they are a view of a longer buffer, as a KV cache's
/// are) and rows of `dim`; query `i` is the key at `keys - queries + i`.
#[derive(Debug, Clone, Copy)]
pub struct Shapes {
    pub heads: usize,
    pub kv_heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub kv_stride: usize,
}

impl Shapes {
    /// Elements `k` and `v` must hold.
    pub fn kv_len(&self) -> usize {
        (self.kv_heads - 1) * self.kv_stride + self.keys * self.dim
    }
}

/// One unit of work: consecutive rows of `q` (`head * queries + query`), all of heads that
/// share one kv head, and the part of the output they write.
struct Tile<'a> {
    first_row: usize,
    out: &'a mut [f32],
}

/// What a query's softmax takes besides its scores.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// Scores are `scale · q · k`.
    pub scale: f32,
    /// Sliding window: a query sees itself and the `window - 1` keys before it.
    pub window: Option<usize>,
    /// Per-head attention sinks (gpt-oss): one more logit in each head's softmax, whose
    /// value adds nothing to the output (as MLX's fused attention takes them).
    pub sinks: Option<&'a [f32]>,
}

/// Attention of `q` (`[heads, queries, dim]`) over `k`/`v` (`[kv_heads, keys, dim]`), each
/// query seeing the keys up to its own position (and within `p.window`); returns
/// `[heads, queries, dim]`.
pub fn attend(q: &[f32], k: &[f32], v: &[f32], s: Shapes, p: Params<'_>) -> Vec<f32> {
    assert!(
        q.len() >= s.heads * s.queries * s.dim && k.len() >= s.kv_len() && v.len() >= s.kv_len()
    );
    let (d, n) = (s.dim, s.queries);
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; s.heads * n * d];
    let mut tiles: Vec<Tile<'_>> = Vec::new();
    if n >= QUERY_TILE {
        // Tiles of one head's queries.
        for (head, rows) in out.chunks_mut(n * d).enumerate() {
            for (t, tile) in rows.chunks_mut(QUERY_TILE * d).enumerate() {
                let first_row = head * n + t * QUERY_TILE;
                tiles.push(Tile {
                    first_row,
                    out: tile,
                });
            }
        }
    } else {
        // Few queries (decode: one): a tile holds every head of a kv group, whose rows are
        // consecutive, so the group's keys and values are read once.
        for (g, tile) in out.chunks_mut(group * n * d).enumerate() {
            let first_row = g * group * n;
            tiles.push(Tile {
                first_row,
                out: tile,
            });
        }
    }
    // Longest first to the least loaded core (a later tile sees more keys).
    let work = |t: &Tile<'_>| {
        let span = Span::of(t, s, p.window);
        t.out.len() / d * (span.end_key - span.first_key)
    };
    tiles.sort_by_key(|t| std::cmp::Reverse(work(t)));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tiles.len())
        .max(1);
    let mut shares: Vec<(usize, Vec<Tile<'_>>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for tile in tiles {
        let least = shares
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("a share");
        least.0 += work(&tile);
        least.1.push(tile);
    }
    let run = |share: Vec<Tile<'_>>| {
        let mut scratch = Scratch::default();
        for tile in share {
            attend_tile(q, k, v, s, p, tile, &mut scratch);
        }
    };
    std::thread::scope(|scope| {
        let mut shares = shares.into_iter().map(|(_, share)| share);
        let mine = shares.next().expect("a share");
        for share in shares {
            scope.spawn(move || run(share));
        }
        run(mine);
    });
    out
}

/// Which keys a tile's rows see.
struct Span {
    /// Keys row `r` sees: `lo(r)..=hi(r)`, from its query index.
    queries: usize,
    keys: usize,
    window: Option<usize>,
    first_row: usize,
    /// The keys any row of the tile sees.
    first_key: usize,
    end_key: usize,
}

impl Span {
    fn of(t: &Tile<'_>, s: Shapes, window: Option<usize>) -> Self {
        let rows = t.out.len() / s.dim;
        let first_query = t.first_row % s.queries;
        // Rows of one head see keys growing with the row; rows of several heads cover every
        // query.
        let (q_min, q_max) = if first_query + rows <= s.queries {
            (first_query, first_query + rows - 1)
        } else {
            (0, s.queries - 1)
        };
        let mut span = Span {
            queries: s.queries,
            keys: s.keys,
            window,
            first_row: t.first_row,
            first_key: 0,
            end_key: 0,
        };
        span.first_key = span.lo_of_query(q_min);
        span.end_key = span.hi_of_query(q_max) + 1;
        span
    }

    fn hi_of_query(&self, query: usize) -> usize {
        self.keys - self.queries + query
    }

    fn lo_of_query(&self, query: usize) -> usize {
        let hi = self.hi_of_query(query);
        self.window.map_or(0, |w| (hi + 1).saturating_sub(w))
    }

    /// The first and one past the last key row `r` of the tile sees.
    fn row(&self, r: usize) -> (usize, usize) {
        let query = (self.first_row + r) % self.queries;
        (self.lo_of_query(query), self.hi_of_query(query) + 1)
    }
}

/// A thread's buffers, reused from tile to tile.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

fn attend_tile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: Shapes,
    p: Params<'_>,
    tile: Tile<'_>,
    scratch: &mut Scratch,
) {
    let d = s.dim;
    let rows = tile.out.len() / d;
    let group = s.heads / s.kv_heads;
    let span = Span::of(&tile, s, p.window);
    let qt = &q[tile.first_row * d..][..rows * d];
    let kv_at = (tile.first_row / s.queries / group) * s.kv_stride;
    let (kh, vh) = (&k[kv_at..], &v[kv_at..]);
    let (first_key, end_key) = (span.first_key, span.end_key);
    scratch.scores.resize(rows * KEY_TILE, 0.0);
    // A sink starts each row's softmax as a logit already seen: its exp(sink - max) is 1.
    scratch.max.clear();
    scratch.sum.clear();
    for r in 0..rows {
        let head = (tile.first_row + r) / s.queries;
        let (max, sum) = p
            .sinks
            .map_or((f32::NEG_INFINITY, 0.0), |sinks| (sinks[head], 1.0));
        scratch.max.push(max);
        scratch.sum.push(sum);
    }
    let out = tile.out;
    out.fill(0.0);
    let mut c0 = first_key / KEY_TILE * KEY_TILE;
    while c0 < end_key {
        let n = KEY_TILE.min(end_key - c0);
        let scores = &mut scratch.scores[..rows * n];
        // scores = scale · q_tile · k[c0..c0 + n]ᵀ
        // SAFETY: every pointer and stride stays within its slice: qt is rows × d, the keys
        // n × d from c0 (c0 + n <= keys), scores rows × n.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                d,
                n,
                p.scale,
                qt.as_ptr(),
                d as isize,
                1,
                kh[c0 * d..].as_ptr(),
                1,
                d as isize,
                0.0,
                scores.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for i in 0..rows {
            let row = &mut scores[i * n..(i + 1) * n];
            // The part of this key tile row i sees.
            let (lo, end) = span.row(i);
            let from = lo.saturating_sub(c0).min(n);
            let to = end.saturating_sub(c0).min(n);
            if from >= to {
                row.fill(0.0);
                continue;
            }
            let seen = &mut row[from..to];
            let max = scratch.max[i].max(exp::max(seen));
            let carry = (scratch.max[i] - max).exp();
            let sum = exp::exp_minus(seen, max);
            row[..from].fill(0.0);
            row[to..].fill(0.0);
            scratch.sum[i] = scratch.sum[i] * carry + sum;
            scratch.max[i] = max;
            if carry != 1.0 {
                out[i * d..(i + 1) * d].iter_mut().for_each(|o| *o *= carry);
            }
        }
        // out += p · v[c0..c0 + n]
        // SAFETY: scores is rows × n, the values n × d from c0, out rows × d.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                n,
                d,
                1.0,
                scores.as_ptr(),
                n as isize,
                1,
                vh[c0 * d..].as_ptr(),
                d as isize,
                1,
                1.0,
                out.as_mut_ptr(),
                d as isize,
                1,
            );
        }
        c0 += n;
    }
    for (i, row) in out.chunks_mut(d).enumerate() {
        let inv = 1.0 / scratch.sum[i];
        row.iter_mut().for_each(|o| *o *= inv);
    }
}

/// The softmax's inner loops, vectorised for the CPU they run on.
mod exp {
    /// Largest value of a non-empty slice.
    pub fn max(x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn wide(x: &[f32]) -> f32 {
                max_body(x)
            }
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { wide(x) };
        }
        max_body(x)
    }

    /// Replaces each `x` by `exp(x - m)` (`m` at least every `x`) and returns their sum.
    pub fn exp_minus(x: &mut [f32], m: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn wide(x: &mut [f32], m: f32) -> f32 {
                exp_minus_body(x, m)
            }
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { wide(x, m) };
        }
        exp_minus_body(x, m)
    }

    // The same operations in the same order either way (no fused multiply-adds: Rust never
    // contracts them), so both give the same bits.
    const LANES: usize = 16;

    #[inline(always)]
    fn max_body(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for &r in chunks.remainder() {
            m = m.max(r);
        }
        m
    }

    #[inline(always)]
    fn exp_minus_body(x: &mut [f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let e = exp(c[l] - m);
                c[l] = e;
                acc[l] += e;
            }
        }
        let mut sum = acc.iter().sum::<f32>();
        for r in chunks.into_remainder() {
            *r = exp(*r - m);
            sum += *r;
        }
        sum
    }

    /// `e^x` for `x <= 0` within ~2 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6
    /// polynomial of `r`, `2^n` from the exponent bits); written without branches so that
    /// the loops above vectorise. Underflows to 0 below -87.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Rounds to nearest by adding and subtracting 1.5 · 2^23.
        const ROUND: f32 = 12_582_912.0;
        let x = x.max(-87.0);
        let n = (x * LOG2E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.987_569_1e-4_f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 5e-1;
        let y = p * r * r + r + 1.0;
        let pow2 = f32::from_bits(((n as i32 + 127) << 23) as u32);
        y * pow2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_libm_one() {
        for i in 0..20_000 {
            let x = -87.0 * i as f32 / 20_000.0;
            let (got, want) = (exp::exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp::exp(0.0), 1.0);
        assert!(exp::exp(-1000.0) < 1e-37);
        let mut row: Vec<f32> = (0..37).map(|i| -(i as f32) / 3.0).collect();
        let sum = exp::exp_minus(&mut row, 0.0);
        assert!((sum - row.iter().sum::<f32>()).abs() < 1e-5);
        assert_eq!(exp::max(&[-3.0, 5.0, 1.0]), 5.0);
    }

    /// Attention written out the slow way: every score, a plain softmax.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: Shapes, p: Params<'_>) -> Vec<f32> {
        let (scale, window) = (p.scale, p.window);
        let d = s.dim;
        let mut out = vec![0f32; s.heads * s.queries * d];
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            for i in 0..s.queries {
                let hi = s.keys - s.queries + i;
                let lo = window.map_or(0, |w| (hi + 1).saturating_sub(w));
                let qi = &q[(h * s.queries + i) * d..][..d];
                let scores: Vec<f32> = (lo..=hi)
                    .map(|j| {
                        let kj = &k[g * s.kv_stride + j * d..][..d];
                        scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect();
                let sink = p.sinks.map(|s| s[h]);
                let m = scores
                    .iter()
                    .copied()
                    .chain(sink)
                    .fold(f32::NEG_INFINITY, f32::max);
                let total: f32 = scores.iter().chain(&sink).map(|x| (x - m).exp()).sum();
                let p: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let o = &mut out[(h * s.queries + i) * d..][..d];
                for (j, pj) in (lo..=hi).zip(&p) {
                    let vj = &v[g * s.kv_stride + j * d..][..d];
                    o.iter_mut().zip(vj).for_each(|(o, x)| *o += pj / total * x);
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values in [-1, 1).
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Grouped heads, chunks spanning key tiles in part (and one query: decode), keys and
    /// values packed or a view of longer buffers, with and without a window and sinks, as the
    /// slow way computes it.
    #[test]
    fn attends_as_written_out() {
        let sinks = [0.5, -2.0, 3.0, 0.0];
        for (queries, keys, kv_stride) in [
            (130, 1100, 1100 * 8),
            (1, 1100, 1300 * 8),
            (40, 700, 900 * 8),
        ] {
            let s = Shapes {
                heads: 4,
                kv_heads: 2,
                queries,
                keys,
                dim: 8,
                kv_stride,
            };
            let q = values(s.heads * s.queries * s.dim, 1);
            let k = values(s.kv_len(), 2);
            let v = values(s.kv_len(), 3);
            let cases = [
                (None, None),
                (Some(200), None),
                (Some(1), None),
                (None, Some(&sinks[..])),
                (Some(70), Some(&sinks[..])),
            ];
            for (window, sinks) in cases {
                let p = Params {
                    scale: 0.5,
                    window,
                    sinks,
                };
                let got = attend(&q, &k, &v, s, p);
                let want = reference(&q, &k, &v, s, p);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-5, "{s:?} {p:?}: {worst}");
            }
        }
    }

    /// A query's numbers are the same read alone (decode, a tile of its kv group's heads), in
    /// a short chunk, or in a long one (tiles of one head's queries).
    #[test]
    fn a_row_is_the_same_in_any_chunk() {
        let (heads, keys, dim) = (6, 900, 16);
        let k = values(2 * keys * dim, 5);
        let v = values(2 * keys * dim, 6);
        let q_all = values(heads * 200 * dim, 7);
        let run = |queries: usize| {
            // The last `queries` of the 200 queries, each head's rows.
            let q: Vec<f32> = (0..heads)
                .flat_map(|h| q_all[(h * 200 + 200 - queries) * dim..(h + 1) * 200 * dim].to_vec())
                .collect();
            let s = Shapes {
                heads,
                kv_heads: 2,
                queries,
                keys,
                dim,
                kv_stride: keys * dim,
            };
            let p = Params {
                scale: 0.3,
                window: None,
                sinks: None,
            };
            let out = attend(&q, &k, &v, s, p);
            // Each head's last row.
            (0..heads)
                .flat_map(|h| out[((h + 1) * queries - 1) * dim..(h + 1) * queries * dim].to_vec())
                .collect::<Vec<f32>>()
        };
        let long = run(200);
        assert_eq!(run(1), long);
        assert_eq!(run(30), long);
        assert_eq!(run(64), long);
    }
}
