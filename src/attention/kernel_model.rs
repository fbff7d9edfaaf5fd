//! CPU models of the kernels in `src/cuda/attention.cu`, for tests: the fused kernel lane by
//! lane, and the safe path's per-row scale-mask-softmax.
//!
//! No GPU is needed to check the parts of the kernel that are easiest to get wrong: the lane
//! address arithmetic of `ldmatrix`, the reuse of the S accumulators as P's A fragments, the
//! tile loop, the masks and the online softmax. `ldmatrix` and `mma.m16n8k16` are written out
//! here from the PTX ISA's fragment tables, independently of the kernel; the rest mirrors the
//! kernel line by line (same names), so a change there must be mirrored here. What this
//! cannot check (cp.async ordering, barriers, the real instructions) is the GPU check's job.

// Indices and argument lists as the kernel has them, so the two read side by side.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::plan::{FUSED_BLOCK_K as BLOCK_K, FUSED_BLOCK_Q as BLOCK_Q};

/// One 32-bit register: two 16-bit values (kept as f32, already rounded to the dtype).
type Reg = [f32; 2];
/// Per-lane accumulator fragment of one 16x8 f32 tile.
type Acc = [f32; 4];

const WARP: usize = 32;

/// `ldmatrix.x4` (`trans = false`) or `.x4.trans`: lane l supplies the (row, col) address of
/// row l % 8 of matrix l / 8; returns each lane's four registers.
fn ldmatrix_x4(tile: &[Vec<f32>], addr: impl Fn(usize) -> (usize, usize), trans: bool) -> Vec<[Reg; 4]> {
    // m[i][r][c]: matrix i, its row r (the 8 halves at lane i*8 + r's address), column c.
    let m: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|i| {
            (0..8)
                .map(|r| {
                    let (row, col) = addr(i * 8 + r);
                    tile[row][col..col + 8].to_vec()
                })
                .collect()
        })
        .collect();
    (0..WARP)
        .map(|l| {
            let (g, t) = (l / 4, l % 4);
            let mut regs = [[0.0; 2]; 4];
            for (i, reg) in regs.iter_mut().enumerate() {
                for (e, x) in reg.iter_mut().enumerate() {
                    *x = if trans { m[i][2 * t + e][g] } else { m[i][g][2 * t + e] };
                }
            }
            regs
        })
        .collect()
}

/// `mma.sync.m16n8k16.row.col.f32`: d += A (16x16) · B (16x8) from per-lane fragments.
fn mma(d: &mut [Acc], a: &[[Reg; 4]], b: &[[Reg; 2]]) {
    let (mut am, mut bm, mut dm) = ([[0f32; 16]; 16], [[0f32; 8]; 16], [[0f32; 8]; 16]);
    for l in 0..WARP {
        let (g, t) = (l / 4, l % 4);
        for e in 0..2 {
            am[g][2 * t + e] = a[l][0][e];
            am[g + 8][2 * t + e] = a[l][1][e];
            am[g][2 * t + 8 + e] = a[l][2][e];
            am[g + 8][2 * t + 8 + e] = a[l][3][e];
            bm[2 * t + e][g] = b[l][0][e];
            bm[2 * t + 8 + e][g] = b[l][1][e];
            dm[g][2 * t + e] = d[l][e];
            dm[g + 8][2 * t + e] = d[l][2 + e];
        }
    }
    for (i, row) in dm.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x += (0..16).map(|k| am[i][k] * bm[k][j]).sum::<f32>();
        }
    }
    for l in 0..WARP {
        let (g, t) = (l / 4, l % 4);
        for e in 0..2 {
            d[l][e] = dm[g][2 * t + e];
            d[l][2 + e] = dm[g + 8][2 * t + e];
        }
    }
}

/// `__shfl_xor_sync` over a warp's per-lane values.
fn shfl_xor(x: &[f32], mask: usize) -> Vec<f32> {
    (0..WARP).map(|l| x[l ^ mask]).collect()
}

/// The kernel on one (batch·head): q (lq, d), k and v (lk, d), already rounded to the
/// dtype; `round` rounds to it (P and the output). Returns o (lq, d).
#[allow(clippy::too_many_arguments)]
pub fn fused_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lq: usize,
    lk: usize,
    d: usize,
    scale_log2: f32,
    causal: bool,
    round: fn(f32) -> f32,
) -> Vec<f32> {
    let mut o = vec![f32::NAN; lq * d]; // poisoned: every element must be written
    for q0 in (0..lq).step_by(BLOCK_Q) {
        // Shared-memory tiles, refilled per key tile (rows past lk are zeros).
        let load_tile = |src: &[f32], k0: usize| -> Vec<Vec<f32>> {
            (0..BLOCK_K)
                .map(|r| if k0 + r < lk { src[(k0 + r) * d..(k0 + r + 1) * d].to_vec() } else { vec![0.0; d] })
                .collect()
        };
        let key_end = if causal { ((q0 + BLOCK_Q + lk) as i64 - lq as i64).min(lk as i64) } else { lk as i64 };
        let tiles = if key_end > 0 { (key_end as usize).div_ceil(BLOCK_K) } else { 0 };
        for warp in 0..BLOCK_Q / 16 {
            let row0 = |l: usize| q0 + warp * 16 + l / 4;
            let row1 = |l: usize| row0(l) + 8;
            let ld = |row: usize, col: usize| -> Reg {
                if row < lq {
                    [q[row * d + col], q[row * d + col + 1]]
                } else {
                    [0.0; 2]
                }
            };
            // qf[s][lane]
            let qf: Vec<Vec<[Reg; 4]>> = (0..d / 16)
                .map(|s| {
                    (0..WARP)
                        .map(|l| {
                            let c = s * 16 + 2 * (l % 4);
                            [ld(row0(l), c), ld(row1(l), c), ld(row0(l), c + 8), ld(row1(l), c + 8)]
                        })
                        .collect()
                })
                .collect();
            let mut acc = vec![vec![[0f32; 4]; WARP]; d / 8];
            let mut row_max = [vec![f32::NEG_INFINITY; WARP], vec![f32::NEG_INFINITY; WARP]];
            let mut row_sum = [vec![0f32; WARP], vec![0f32; WARP]];
            for tile in 0..tiles {
                let k0 = tile * BLOCK_K;
                let (k_tile, v_tile) = (load_tile(k, k0), load_tile(v, k0));
                let mut s = vec![vec![[0f32; 4]; WARP]; BLOCK_K / 8];
                for ks in 0..d / 16 {
                    for np in 0..BLOCK_K / 16 {
                        let b = ldmatrix_x4(
                            &k_tile,
                            |l| (np * 16 + (l % 8) + 8 * (l / 16), ks * 16 + 8 * ((l / 8) % 2)),
                            false,
                        );
                        let b01: Vec<[Reg; 2]> = b.iter().map(|r| [r[0], r[1]]).collect();
                        let b23: Vec<[Reg; 2]> = b.iter().map(|r| [r[2], r[3]]).collect();
                        mma(&mut s[2 * np], &qf[ks], &b01);
                        mma(&mut s[2 * np + 1], &qf[ks], &b23);
                    }
                }
                for (n, sn) in s.iter_mut().enumerate() {
                    for (l, frag) in sn.iter_mut().enumerate() {
                        for (e, x) in frag.iter_mut().enumerate() {
                            let row = if e < 2 { row0(l) } else { row1(l) } as i64;
                            let col = (k0 + n * 8 + 2 * (l % 4) + (e & 1)) as i64;
                            let masked = col >= lk as i64 || (causal && col > row + lk as i64 - lq as i64);
                            *x = if masked { f32::NEG_INFINITY } else { *x * scale_log2 };
                        }
                    }
                }
                for h in 0..2 {
                    let mut m: Vec<f32> = (0..WARP)
                        .map(|l| s.iter().fold(row_max[h][l], |m, sn| m.max(sn[l][2 * h]).max(sn[l][2 * h + 1])))
                        .collect();
                    m = m.iter().zip(shfl_xor(&m, 1)).map(|(a, b)| a.max(b)).collect();
                    m = m.iter().zip(shfl_xor(&m, 2)).map(|(a, b)| a.max(b)).collect();
                    for l in 0..WARP {
                        let base = if m[l] == f32::NEG_INFINITY { 0.0 } else { m[l] };
                        let alpha = (row_max[h][l] - base).exp2();
                        row_max[h][l] = m[l];
                        let mut sum = 0.0;
                        for sn in s.iter_mut() {
                            sn[l][2 * h] = (sn[l][2 * h] - base).exp2();
                            sn[l][2 * h + 1] = (sn[l][2 * h + 1] - base).exp2();
                            sum += sn[l][2 * h] + sn[l][2 * h + 1];
                        }
                        row_sum[h][l] = row_sum[h][l] * alpha + sum;
                        for an in acc.iter_mut() {
                            an[l][2 * h] *= alpha;
                            an[l][2 * h + 1] *= alpha;
                        }
                    }
                }
                for kk in 0..BLOCK_K / 16 {
                    let pack = |x: f32, y: f32| [round(x), round(y)];
                    let a: Vec<[Reg; 4]> = (0..WARP)
                        .map(|l| {
                            let (s0, s1) = (&s[2 * kk][l], &s[2 * kk + 1][l]);
                            [pack(s0[0], s0[1]), pack(s0[2], s0[3]), pack(s1[0], s1[1]), pack(s1[2], s1[3])]
                        })
                        .collect();
                    for dp in 0..d / 16 {
                        let b = ldmatrix_x4(
                            &v_tile,
                            |l| (kk * 16 + (l % 8) + 8 * ((l / 8) % 2), dp * 16 + 8 * (l / 16)),
                            true,
                        );
                        let b01: Vec<[Reg; 2]> = b.iter().map(|r| [r[0], r[1]]).collect();
                        let b23: Vec<[Reg; 2]> = b.iter().map(|r| [r[2], r[3]]).collect();
                        mma(&mut acc[2 * dp], &a, &b01);
                        mma(&mut acc[2 * dp + 1], &a, &b23);
                    }
                }
            }
            for sums in row_sum.iter_mut() {
                let s1: Vec<f32> = sums.iter().zip(shfl_xor(sums, 1)).map(|(a, b)| a + b).collect();
                let s2: Vec<f32> = s1.iter().zip(shfl_xor(&s1, 2)).map(|(a, b)| a + b).collect();
                *sums = s2.iter().map(|&x| if x > 0.0 { 1.0 / x } else { 0.0 }).collect();
            }
            for (n, an) in acc.iter().enumerate() {
                for l in 0..WARP {
                    let col = n * 8 + 2 * (l % 4);
                    for (row, e, inv) in [(row0(l), 0, row_sum[0][l]), (row1(l), 2, row_sum[1][l])] {
                        if row < lq {
                            o[row * d + col] = round(an[l][e] * inv);
                            o[row * d + col + 1] = round(an[l][e + 1] * inv);
                        }
                    }
                }
            }
        }
    }
    o
}

/// `softmax_rows` of the kernel file over a (rows, lk) score block already rounded to the
/// dtype: row r is query `row0 + r % len`; keys past its last visible one get p = 0, and a row
/// whose visible scores are all −inf (or that sees no key) is zeros, never NaN. `round`
/// rounds p to the dtype. Same f32 arithmetic as the kernel (exp2 of the scaled score minus
/// the row's base), so the safe path's host side can be checked on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn softmax_rows(
    s: &[f32],
    len: usize,
    lk: usize,
    row0: usize,
    lq: usize,
    scale_log2: f32,
    causal: bool,
    round: fn(f32) -> f32,
) -> Vec<f32> {
    let mut p = vec![f32::NAN; s.len()];
    for (row, (si, pi)) in s.chunks(lk.max(1)).zip(p.chunks_mut(lk.max(1))).enumerate() {
        let query = (row0 + row % len) as i64;
        let visible = if causal { (query + lk as i64 - lq as i64 + 1).clamp(0, lk as i64) as usize } else { lk };
        let m = si[..visible].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale_log2));
        let base = if m == f32::NEG_INFINITY { 0.0 } else { m };
        let sum: f32 = si[..visible].iter().map(|&x| (x * scale_log2 - base).exp2()).sum();
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        for (j, (x, out)) in si.iter().zip(pi.iter_mut()).enumerate() {
            *out = if j < visible { round((x * scale_log2 - base).exp2() * inv) } else { 0.0 };
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_round(x: f32) -> f32 {
        half::f16::from_f32(x).to_f32()
    }

    fn bf16_round(x: f32) -> f32 {
        half::bf16::from_f32(x).to_f32()
    }

    /// f64 reference of one head; a causal row that sees no key is zeros (as the kernel writes).
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lq: usize,
        lk: usize,
        d: usize,
        scale: f64,
        causal: bool,
    ) -> Vec<f64> {
        let mut out = vec![0.0; lq * d];
        for i in 0..lq {
            let visible = if causal { (i + lk).saturating_sub(lq - 1).min(lk) } else { lk };
            let s: Vec<f64> = (0..visible)
                .map(|j| (0..d).map(|t| q[i * d + t] as f64 * k[j * d + t] as f64).sum::<f64>() * scale)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (j, sj) in s.iter().enumerate() {
                for t in 0..d {
                    out[i * d + t] += (sj - m).exp() / z * v[j * d + t] as f64;
                }
            }
        }
        out
    }

    /// The kernel's data flow, on ragged shapes (no multiple of the 64-row tiles), both head
    /// dims, causal with positive and negative offsets, against f64 within the GPU check's
    /// tolerances. A wrong ldmatrix address, fragment reuse or mask fails here.
    #[test]
    fn kernel_model_matches_f64_reference() {
        for &(lq, lk, d, causal) in &[
            (77, 77, 64, true),
            (100, 37, 128, false),
            (130, 200, 64, true),
            (70, 65, 128, true), // lq > lk: the first rows see no key
            (16, 130, 64, false),
        ] {
            for (round, tol, name) in [(f16_round as fn(f32) -> f32, 2e-3, "f16"), (bf16_round, 1e-2, "bf16")] {
                let mut rng = crate::rng::Rng::new((lq * 7 + lk + d) as u64);
                let mut gen = |n: usize| -> Vec<f32> { rng.normal_vec(n).into_iter().map(round).collect() };
                let (q, k, v) = (gen(lq * d), gen(lk * d), gen(lk * d));
                let scale = 1.0 / (d as f64).sqrt();
                let got =
                    fused_forward(&q, &k, &v, lq, lk, d, (scale * std::f64::consts::LOG2_E) as f32, causal, round);
                let want = reference(&q, &k, &v, lq, lk, d, scale, causal);
                assert!(got.iter().all(|x| x.is_finite()), "unwritten or non-finite output");
                let num: f64 = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
                let den: f64 = want.iter().map(|w| w * w).sum();
                let rel = (num / den).sqrt();
                println!("kernel model {name} lq {lq} lk {lk} d {d} causal={causal}: rel_l2 {rel:.2e} (tol {tol:.0e})");
                assert!(rel <= tol, "rel_l2 {rel}");
            }
        }
    }
}
