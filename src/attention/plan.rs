//! Host-side decisions of the attention paths as plain functions, so the CPU tests can
//! check them: which path runs for a shape and device, how queries are blocked, and the
//! fused kernel's launch geometry. The numbers here must match `src/cuda/attention.cu`.

use candle_core::DType;

/// How one attention call is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The fused flash kernel (CUDA, f16/bf16, head dim 64 or 128, sm_80+).
    Fused,
    /// cuBLAS GEMMs in the input's half dtype plus one fused scale-mask-softmax kernel,
    /// over query blocks (CUDA, f16/bf16, any head dim).
    Safe,
    /// Inputs upcast to f32, matmul → softmax → matmul over query blocks (CPU, f32 inputs).
    Blocked,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Fused => "fused",
            Path::Safe => "safe",
            Path::Blocked => "blocked",
        }
    }
}

/// Shape of one call: q (b, h, lq, d), k (b, h, lk, d), v (b, h, lk, dv).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Query rows per block of the fused kernel (4 warps × 16 rows).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // launched only in a CUDA build; tested everywhere
pub const FUSED_BLOCK_Q: usize = 64;
/// Keys per shared-memory tile of the fused kernel (`BLOCK_K` in the kernel source; the CPU
/// model of the kernel and the tile-count tests read it).
#[cfg(test)]
pub const FUSED_BLOCK_K: usize = 64;
/// Threads per block of the fused kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // launched only in a CUDA build; tested everywhere
pub const FUSED_THREADS: u32 = 128;
/// Head dims with a fused instantiation.
pub const FUSED_HEAD_DIMS: [usize; 2] = [64, 128];
/// CUDA's limit on grid.y, which carries batch × heads.
const GRID_Y_MAX: usize = 65_535;

/// What a call returns without launching anything, decided before any path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trivial {
    /// The output has no element (lq, dv or batch × heads is 0): a zero-size grid would fail
    /// to launch.
    Empty,
    /// No keys (lk = 0): every row sees nothing, which the CUDA paths define as zeros.
    Zeros,
}

/// `Some` when the call needs no kernel at all.
pub fn trivial(s: &Dims) -> Option<Trivial> {
    if s.b * s.h * s.lq * s.dv == 0 {
        Some(Trivial::Empty)
    } else if s.lk == 0 {
        Some(Trivial::Zeros)
    } else {
        None
    }
}

/// Why the fused kernel cannot run a call (dtype, head dims, CUDA's grid limit, its 32-bit
/// indices), or `None` when it can. The device's compute capability is [`choose`]'s concern.
pub fn fused_blocker(dtype: DType, s: &Dims) -> Option<String> {
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Some(format!("{dtype:?} inputs (the fused kernel takes f16/bf16)"));
    }
    if s.dv != s.d {
        return Some(format!("v head dim {} differs from q/k head dim {}", s.dv, s.d));
    }
    if !FUSED_HEAD_DIMS.contains(&s.d) {
        return Some(format!("head dim {} has no fused instantiation (64, 128)", s.d));
    }
    if s.b * s.h > GRID_Y_MAX {
        return Some(format!("batch × heads {} exceeds the grid limit {GRID_Y_MAX}", s.b * s.h));
    }
    if s.lq > i32::MAX as usize || s.lk > i32::MAX as usize {
        return Some("sequence longer than the kernel's 32-bit indices".into());
    }
    None
}

/// The path for a call and why. `compute_capability` is `None` off CUDA.
pub fn choose(compute_capability: Option<(i32, i32)>, dtype: DType, s: &Dims) -> (Path, String) {
    let Some((major, minor)) = compute_capability else {
        return (Path::Blocked, "not a CUDA device".into());
    };
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return (Path::Blocked, format!("{dtype:?} inputs (the half-precision paths take f16/bf16)"));
    }
    if major < 8 {
        return (Path::Blocked, format!("compute capability {major}.{minor} (tensor-core kernels need 8.0)"));
    }
    match fused_blocker(dtype, s) {
        Some(why) => (Path::Safe, why),
        None => (Path::Fused, format!("{dtype:?}, head dim {}", s.d)),
    }
}

/// Grid of the fused kernel: (query blocks, batch × heads, 1).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // launched only in a CUDA build; tested everywhere
pub fn fused_grid(s: &Dims) -> (u32, u32, u32) {
    (s.lq.div_ceil(FUSED_BLOCK_Q) as u32, (s.b * s.h) as u32, 1)
}

/// Key tiles the fused kernel visits for the query block starting at `q0`: all of them, or
/// under the causal mask only those up to the block's last visible key
/// (`q0 + FUSED_BLOCK_Q - 1 + lk - lq`). Mirrors `key_end`/`tiles` in the kernel, for tests.
#[cfg(test)]
pub fn fused_key_tiles(q0: usize, lq: usize, lk: usize, causal: bool) -> usize {
    let end = if causal { (q0 + FUSED_BLOCK_Q + lk).saturating_sub(lq).min(lk) } else { lk };
    end.div_ceil(FUSED_BLOCK_K)
}

/// Kernel name of the fused path.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // launched only in a CUDA build; tested everywhere
pub fn fused_kernel(dtype: DType, d: usize) -> Option<&'static str> {
    Some(match (dtype, d) {
        (DType::F16, 64) => "attn_fwd_f16_d64",
        (DType::F16, 128) => "attn_fwd_f16_d128",
        (DType::BF16, 64) => "attn_fwd_bf16_d64",
        (DType::BF16, 128) => "attn_fwd_bf16_d128",
        _ => return None,
    })
}

/// Query rows per block so that one block's scores (b × h × rows × lk elements of
/// `elem_bytes`) stay within `budget_bytes`; at least one row.
pub fn query_block_rows(budget_bytes: usize, s: &Dims, elem_bytes: usize) -> usize {
    let row_bytes = s.b * s.h * s.lk.max(1) * elem_bytes;
    (budget_bytes / row_bytes).clamp(1, s.lq.max(1))
}

/// The safe path's scale as (power of two applied to q before the score GEMM, rest applied
/// in f32 by the softmax), `pow2 · rest = scale`. Multiplying by a power of two is exact in
/// every float format, and `rest` ∈ [1, 2) keeps each half-precision score at most the scaled
/// score, so raw scores cannot overflow where scaled ones do not. The exponent stays within
/// ±8 so q' neither underflows nor overflows for any real head dim; a scale that is not a
/// positive finite number is left whole to the softmax.
pub fn split_scale(scale: f64) -> (f64, f64) {
    if !(scale.is_finite() && scale > 0.0) {
        return (1.0, scale);
    }
    let pow2 = scale.log2().floor().clamp(-8.0, 8.0).exp2();
    (pow2, scale / pow2)
}

/// The fused kernel copies K and V rows with 16-byte `cp.async`: a tensor whose storage
/// starts at an element offset that is not a multiple of 8 halves must be copied first.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // launched only in a CUDA build; tested everywhere
pub fn needs_realign(start_offset: usize) -> bool {
    start_offset % 8 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(b: usize, h: usize, lq: usize, lk: usize, d: usize) -> Dims {
        Dims { b, h, lq, lk, d, dv: d }
    }

    #[test]
    fn chooses_fused_only_where_it_applies() {
        let s = dims(2, 16, 4100, 4100, 128);
        let h100 = Some((9, 0));
        assert_eq!(choose(None, DType::BF16, &s).0, Path::Blocked);
        assert_eq!(choose(h100, DType::BF16, &s).0, Path::Fused);
        assert_eq!(choose(h100, DType::F16, &dims(1, 12, 77, 77, 64)).0, Path::Fused);
        assert_eq!(choose(h100, DType::F32, &s).0, Path::Blocked);
        assert_eq!(choose(Some((7, 5)), DType::F16, &s).0, Path::Blocked);
        assert_eq!(choose(h100, DType::F16, &dims(1, 8, 100, 100, 80)).0, Path::Safe);
        assert_eq!(choose(h100, DType::F16, &Dims { dv: 64, ..s }).0, Path::Safe);
        assert_eq!(choose(h100, DType::F16, &dims(70_000, 1, 10, 10, 64)).0, Path::Safe);
        // Every fallback says why.
        let (_, why) = choose(h100, DType::F16, &dims(1, 8, 100, 100, 80));
        assert!(why.contains("head dim 80"), "{why}");
    }

    /// A forced fused path is refused, with the reason, wherever `choose` would not take it
    /// on an sm_80+ card; the grid limit is exact.
    #[test]
    fn fused_blocker_names_every_reason() {
        assert_eq!(fused_blocker(DType::F16, &dims(1, 65_535, 10, 10, 64)), None);
        let why = fused_blocker(DType::F16, &dims(1, 65_536, 10, 10, 64)).unwrap();
        assert!(why.contains("65536") && why.contains("grid limit"), "{why}");
        assert!(fused_blocker(DType::BF16, &dims(257, 256, 10, 10, 128)).is_some(), "b × h = 65 792");
        assert!(fused_blocker(DType::F32, &dims(1, 1, 10, 10, 64)).unwrap().contains("F32"));
        assert!(fused_blocker(DType::F16, &dims(1, 1, 10, 10, 512)).unwrap().contains("head dim 512"));
        assert!(fused_blocker(DType::F16, &Dims { dv: 32, ..dims(1, 1, 10, 10, 64) }).is_some());
        assert!(fused_blocker(DType::F16, &dims(1, 1, 1 << 31, 10, 64)).unwrap().contains("32-bit"));
        // choose() agrees: fused exactly where nothing blocks it.
        for s in [dims(1, 65_535, 10, 10, 64), dims(1, 65_536, 10, 10, 64), dims(2, 8, 5, 5, 96)] {
            let fused = choose(Some((8, 9)), DType::F16, &s).0 == Path::Fused;
            assert_eq!(fused, fused_blocker(DType::F16, &s).is_none(), "{s:?}");
        }
    }

    /// Zero-size grids never launch: empty outputs and key-less calls are decided here.
    #[test]
    fn trivial_calls_need_no_kernel() {
        assert_eq!(trivial(&dims(1, 8, 0, 77, 64)), Some(Trivial::Empty));
        assert_eq!(trivial(&dims(0, 8, 10, 77, 64)), Some(Trivial::Empty));
        assert_eq!(trivial(&dims(2, 0, 10, 77, 64)), Some(Trivial::Empty));
        assert_eq!(trivial(&Dims { dv: 0, ..dims(1, 1, 10, 10, 64) }), Some(Trivial::Empty));
        assert_eq!(trivial(&dims(1, 8, 10, 0, 64)), Some(Trivial::Zeros));
        assert_eq!(trivial(&dims(0, 8, 10, 0, 64)), Some(Trivial::Empty), "empty wins over zeros");
        assert_eq!(trivial(&dims(1, 1, 1, 1, 64)), None);
        // The grid these would have launched is zero-sized along some axis.
        assert_eq!(fused_grid(&dims(1, 8, 0, 77, 64)).0, 0);
        assert_eq!(fused_grid(&dims(0, 8, 10, 77, 64)).1, 0);
    }

    #[test]
    fn fused_kernel_exists_for_every_fused_choice() {
        for dt in [DType::F16, DType::BF16] {
            for d in FUSED_HEAD_DIMS {
                assert_eq!(choose(Some((8, 0)), dt, &dims(1, 1, 5, 5, d)).0, Path::Fused);
                assert!(fused_kernel(dt, d).is_some());
            }
        }
        assert_eq!(fused_kernel(DType::F16, 96), None);
        assert_eq!(fused_kernel(DType::F32, 64), None);
    }

    #[test]
    fn fused_grid_covers_every_query() {
        assert_eq!(fused_grid(&dims(2, 16, 4100, 4100, 128)), (65, 32, 1));
        assert_eq!(fused_grid(&dims(1, 8, 50_000, 1024, 128)), (782, 8, 1));
        assert_eq!(fused_grid(&dims(1, 12, 77, 77, 64)), (2, 12, 1));
        assert_eq!(fused_grid(&dims(1, 1, 64, 64, 64)), (1, 1, 1));
    }

    /// The causal tile count must cover every key a row of the block may see and no tile
    /// that is masked for all of its rows; checked against brute force.
    #[test]
    fn causal_key_tiles_cover_exactly_the_visible_keys() {
        for &(lq, lk) in &[(77, 77), (130, 200), (200, 130), (64, 64), (65, 1), (1000, 1000), (5, 300)] {
            for q0 in (0..lq).step_by(FUSED_BLOCK_Q) {
                let rows = q0..(q0 + FUSED_BLOCK_Q).min(lq);
                // Highest key any real row sees (-1: none).
                let last = rows.map(|i| (i + lk) as i64 - lq as i64).max().unwrap().min(lk as i64 - 1);
                let want = if last < 0 { 0 } else { (last as usize + 1).div_ceil(FUSED_BLOCK_K) };
                let got = fused_key_tiles(q0, lq, lk, true);
                // Padding rows past lq may extend the range by at most the block's own padding.
                assert!(got >= want, "lq {lq} lk {lk} q0 {q0}: {got} tiles < {want} needed");
                assert!(got <= lk.div_ceil(FUSED_BLOCK_K));
                if q0 + FUSED_BLOCK_Q <= lq {
                    assert_eq!(got, want, "lq {lq} lk {lk} q0 {q0}");
                }
            }
            assert_eq!(fused_key_tiles(0, lq, lk, false), lk.div_ceil(FUSED_BLOCK_K));
        }
    }

    #[test]
    fn query_blocks_respect_the_budget() {
        let s = dims(4, 8, 5000, 1024, 4);
        // 4 × 8 × 1024 × 4 B = 128 KiB per query row.
        assert_eq!(query_block_rows(256 << 20, &s, 4), 2048);
        assert_eq!(query_block_rows(256 << 20, &s, 2), 4096);
        assert_eq!(query_block_rows(1, &s, 4), 1);
        assert_eq!(query_block_rows(usize::MAX, &s, 4), 5000);
    }

    #[test]
    fn scale_splits_into_an_exact_power_of_two_and_a_rest_below_two() {
        for d in [16usize, 40, 64, 80, 128, 512, 1024] {
            let scale = 1.0 / (d as f64).sqrt();
            let (pow2, rest) = split_scale(scale);
            assert_eq!(pow2.log2().fract(), 0.0, "d {d}: {pow2} is not a power of two");
            assert!((1.0..2.0).contains(&rest), "d {d}: rest {rest}");
            assert!((pow2 * rest - scale).abs() <= 1e-15 * scale);
            // Exact in f16 and bf16: q · pow2 loses nothing.
            assert_eq!(half::f16::from_f64(pow2).to_f64(), pow2);
            assert_eq!(half::bf16::from_f64(pow2).to_f64(), pow2);
        }
        assert_eq!(split_scale(0.125), (0.125, 1.0));
        assert_eq!(split_scale(1.0), (1.0, 1.0));
        // Far outside any head dim the exponent is clamped; odd scales go whole to the softmax.
        assert_eq!(split_scale(1e-10).0, 2f64.powi(-8));
        assert_eq!(split_scale(0.0), (1.0, 0.0));
        assert_eq!(split_scale(-0.5), (1.0, -0.5));
    }

    #[test]
    fn realign_only_unaligned_offsets() {
        assert!(!needs_realign(0));
        assert!(!needs_realign(64));
        assert!(needs_realign(3));
        assert!(needs_realign(12));
    }
}
