#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use candle_core::{Context, Device, Result, Storage, Tensor, WithDType};

use half::bf16;
use half::f16;
use rayon::prelude::*;

use std::{f32, iter::Sum};

use crate::attention::SdpaParams;

/// llm-stream: the attention kernels run in rayon's global pool, with the matrix products,
/// instead of a second pool of as many threads (upstream's `FLASH_ATTN_POOL`, which on macOS
/// also raised its threads' QoS class). Two pools kept twice as many threads as cores spinning
/// between kernels: on 2 cores, 4 threads took turns on them through `sched_yield`, and a
/// product's jobs waited for a core that an idle attention thread held.
#[inline(always)]
fn in_kernel_pool<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

/// llm-stream: lanes of [`vec_dot_f32`]'s partial sums (two 8-float vectors on AVX).
const DOT_LANES: usize = 16;

/// Size (in KV positions) processed by each inner‑tile job.
const TILE_KV: usize = 16;

/// Dot product in `f32`.
///
/// llm-stream: upstream summed groups of four products into one running sum, a chain of
/// dependent scalar additions the compiler may not reorder (16 for a head of 64), for every
/// query and key pair of every layer. Sixteen independent partial sums compile to vector fused
/// multiply-adds: a 445-token prompt is processed about 28% faster.
#[inline(always)]
fn vec_dot_f32<T: UpcastF32 + Copy>(a: &[T], b: &[T]) -> f32 {
    let ((a_lanes, a_rest), (b_lanes, b_rest)) =
        (a.as_chunks::<DOT_LANES>(), b.as_chunks::<DOT_LANES>());
    let mut sum = a_rest
        .iter()
        .zip(b_rest)
        .map(|(x, y)| x.to_f32() * y.to_f32())
        .sum::<f32>();
    let mut partial = [0f32; DOT_LANES];
    for (xs, ys) in a_lanes.iter().zip(b_lanes) {
        for i in 0..DOT_LANES {
            partial[i] = xs[i].to_f32().mul_add(ys[i].to_f32(), partial[i]);
        }
    }
    sum += sum_lanes(partial);
    sum
}

/// llm-stream: the sum of `N` (a power of two) floats as a tree of halves, which compiles to a few
/// vector additions where a running sum is `N` dependent ones.
#[inline(always)]
fn sum_lanes<const N: usize>(mut lanes: [f32; N]) -> f32 {
    let mut width = N / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// llm-stream: the largest of `N` (a power of two) floats, as a tree of halves like [`sum_lanes`].
#[inline(always)]
fn max_lanes<const N: usize>(mut lanes: [f32; N]) -> f32 {
    let mut width = N / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] = lanes[i].max(lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// llm-stream: `e^x` for `x <= 0` (a softmax weight), within a few units in the last place of
/// `expf`, in plain float operations that the compiler vectorizes: range reduction by ln 2, the
/// Cephes polynomial, and the power of two built in the exponent bits. Upstream called the C
/// library's `expf` once per query-key pair, a ninth of a long prompt's time. A value computed in
/// a vector lane is the same float as computed alone, so both attention paths still agree.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer, held in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below -87, e^x is under the smallest normal float; the weight is then e^-87, not 0, which
    // no sum of weights at least 1 (the tile's largest is e^0) can tell apart.
    let x = x.max(-87.0);
    let shifted = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut y = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        y = y.mul_add(r, c);
    }
    let y = y.mul_add(r * r, r + 1.0);
    // 2^n for n in -126..=0: the integer in `shifted`'s low bits, plus the exponent bias.
    let pow2n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    y * pow2n
}

/// llm-stream: `acc += v * scale`, over slices so that it compiles to vector operations
/// (upstream indexed `v` by an offset, a bounds check per element).
#[inline]
fn add_scaled<T: UpcastF32 + Copy>(acc: &mut [f32], v: &[T], scale: f32) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = x.to_f32().mul_add(scale, *a);
    }
}

/// llm-stream: the key and value rows of one sequence and one query head.
struct HeadRows<'a, T> {
    k: &'a [T],
    v: &'a [T],
    /// Offsets of the sequence and head in `k` and `v`, and their strides per position.
    k_base: usize,
    v_base: usize,
    k_step: usize,
    v_step: usize,
    d: usize,
}

impl<'a, T> HeadRows<'a, T> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        (k, v): (&'a [T], &'a [T]),
        (kstride, vstride): (&[usize], &[usize]),
        b_i: usize,
        (k_head, v_head): (usize, usize),
        d: usize,
    ) -> Self {
        Self {
            k,
            v,
            k_base: b_i * kstride[0] + k_head * kstride[2],
            v_base: b_i * vstride[0] + v_head * vstride[2],
            k_step: kstride[1],
            v_step: vstride[1],
            d,
        }
    }

    #[inline(always)]
    fn k(&self, pos: usize) -> &'a [T] {
        let start = self.k_base + pos * self.k_step;
        &self.k[start..start + self.d]
    }

    #[inline(always)]
    fn v(&self, pos: usize) -> &'a [T] {
        let start = self.v_base + pos * self.v_step;
        &self.v[start..start + self.d]
    }
}

/// llm-stream: one query row against one tile of up to `TILE_KV` keys: writes the tile's
/// softmax-weighted sum of value rows into `acc` and returns its `(sum of weights, largest
/// score)` for [`softmax_merge`]. The tile is `keys` positions from `first`; `mask(position)`
/// is added to a key's score, and -inf leaves the key out. The one-token step and the prompt path both call this and
/// [`softmax_merge`], so that a token's attention is the same floats whichever path computes it:
/// an exact repeat served from the prefix cache computes only its last token, and must answer as
/// the first request did.
///
/// Upstream ran an online softmax key by key (a rescale of the sum whenever a score beat the
/// running maximum, one scalar `expf` per key). Here the tile's scores come first, then their
/// maximum, then all of its weights at once in vector lanes.
#[inline(always)]
fn attend_tile<T: UpcastF32 + Copy>(
    q_row: &[T],
    (scale, logit_softcap): (f32, f32),
    rows: &HeadRows<'_, T>,
    (first, keys): (usize, usize),
    mask: impl Fn(usize) -> f32,
    acc: &mut [f32],
) -> (f32, f32) {
    let mut scores = [f32::NEG_INFINITY; TILE_KV];
    for (j, score) in scores.iter_mut().enumerate().take(keys) {
        let mask = mask(first + j);
        if mask == f32::NEG_INFINITY {
            continue;
        }
        let mut s_val = vec_dot_f32(q_row, rows.k(first + j)) * scale;
        if logit_softcap != 0.0 {
            s_val = logit_softcap * (s_val / logit_softcap).tanh();
        }
        *score = s_val + mask;
    }
    acc.fill(0.0);
    let m = max_lanes(scores);
    if m == f32::NEG_INFINITY {
        return (0.0, m);
    }
    let mut weights = [0f32; TILE_KV];
    for (w, &score) in weights.iter_mut().zip(&scores) {
        let e = exp_nonpositive(score - m);
        *w = if score == f32::NEG_INFINITY { 0.0 } else { e };
    }
    for (j, &w) in weights.iter().enumerate().take(keys) {
        if w != 0.0 {
            add_scaled(acc, rows.v(first + j), w);
        }
    }
    (sum_lanes(weights), m)
}

/// llm-stream: merges a tile's running softmax `(vkq_b, s_b, m_b)` into `(vkq, s, m)`.
#[inline(always)]
fn softmax_merge((vkq, s, m): (&mut [f32], &mut f32, &mut f32), vkq_b: &[f32], s_b: f32, m_b: f32) {
    if *m >= m_b {
        let factor = (m_b - *m).exp();
        for (v, v_b) in vkq.iter_mut().zip(vkq_b) {
            *v += v_b * factor;
        }
        *s += s_b * factor;
    } else {
        let factor = (*m - m_b).exp();
        for (v, v_a) in vkq.iter_mut().zip(vkq_b) {
            *v = v_a + *v * factor;
        }
        *s = s_b + *s * factor;
        *m = m_b;
    }
}

#[inline]
fn clamp_index(idx: usize, dim: usize) -> usize {
    if dim == 0 {
        0
    } else if idx >= dim {
        dim - 1
    } else {
        idx
    }
}

#[inline(always)]
fn mask_offset(
    dims: &[usize],
    b: usize,
    h: usize,
    b_i: usize,
    h_i: usize,
    q_pos: usize,
    kv_pos: usize,
) -> Option<usize> {
    if dims.is_empty() {
        return Some(0);
    }

    match dims.len() {
        1 => {
            let kv_dim = dims[0];
            if kv_dim == 0 {
                None
            } else {
                Some(clamp_index(kv_pos, kv_dim))
            }
        }
        2 => {
            let q_dim = dims[0];
            let kv_dim = dims[1];
            if q_dim == 0 || kv_dim == 0 {
                None
            } else {
                let q_idx = clamp_index(q_pos, q_dim);
                let kv_idx = clamp_index(kv_pos, kv_dim);
                Some(q_idx * kv_dim + kv_idx)
            }
        }
        3 => {
            let d0 = dims[0];
            let d1 = dims[1];
            let d2 = dims[2];
            if d0 == 0 || d1 == 0 || d2 == 0 {
                return None;
            }
            let q_idx = clamp_index(q_pos, d1);
            let kv_idx = clamp_index(kv_pos, d2);
            if d0 == b || d0 == 1 {
                let b_idx = if d0 == 1 { 0 } else { clamp_index(b_i, d0) };
                Some((b_idx * d1 + q_idx) * d2 + kv_idx)
            } else if d0 == h || d0 == 1 {
                let h_idx = if d0 == 1 { 0 } else { clamp_index(h_i, d0) };
                Some((h_idx * d1 + q_idx) * d2 + kv_idx)
            } else if d0 == b.saturating_mul(h) {
                let combined_idx = clamp_index(b_i * h + h_i, d0);
                Some((combined_idx * d1 + q_idx) * d2 + kv_idx)
            } else {
                Some(q_idx * d2 + kv_idx)
            }
        }
        4 => {
            let d0 = dims[0];
            let d1 = dims[1];
            let d2 = dims[2];
            let d3 = dims[3];
            if d0 == 0 || d1 == 0 || d2 == 0 || d3 == 0 {
                return None;
            }
            let b_idx = if d0 == 1 {
                0
            } else if d0 == b {
                clamp_index(b_i, d0)
            } else if d0 == b.saturating_mul(h) {
                clamp_index(b_i * h + h_i, d0)
            } else {
                clamp_index(b_i, d0)
            };
            let h_idx = if d1 == 1 {
                0
            } else if d1 == h {
                clamp_index(h_i, d1)
            } else if d1 == b {
                clamp_index(b_i, d1)
            } else {
                clamp_index(h_i, d1)
            };
            let q_idx = clamp_index(q_pos, d2);
            let kv_idx = clamp_index(kv_pos, d3);
            Some(((b_idx * d1 + h_idx) * d2 + q_idx) * d3 + kv_idx)
        }
        _ => {
            let q_dim = *dims.get(dims.len().saturating_sub(2))?;
            let kv_dim = *dims.last()?;
            if q_dim == 0 || kv_dim == 0 {
                return None;
            }
            let q_idx = clamp_index(q_pos, q_dim);
            let kv_idx = clamp_index(kv_pos, kv_dim);
            let mut prefix_dim = 1usize;
            for &dim in &dims[..dims.len() - 2] {
                if dim == 0 {
                    return None;
                }
                prefix_dim = prefix_dim.saturating_mul(dim);
            }
            let combined_idx = if prefix_dim == 0 {
                0
            } else {
                let idx_val = b_i * h + h_i;
                idx_val.min(prefix_dim - 1)
            };
            Some((combined_idx * q_dim + q_idx) * kv_dim + kv_idx)
        }
    }
}

struct MaskInfo<'a> {
    data: &'a [f32],
    dims: &'a [usize],
    b: usize,
    h: usize,
}

impl<'a> MaskInfo<'a> {
    #[inline(always)]
    fn value(&self, b_i: usize, h_i: usize, q_pos: usize, kv_pos: usize) -> f32 {
        if let Some(idx) = mask_offset(self.dims, self.b, self.h, b_i, h_i, q_pos, kv_pos) {
            *self.data.get(idx).unwrap_or(&0.0)
        } else {
            0.0
        }
    }
}

pub(crate) trait DowncastF32 {
    fn cast(x: f32) -> Self;
}

impl DowncastF32 for f32 {
    fn cast(x: f32) -> Self {
        x
    }
}

impl DowncastF32 for f16 {
    fn cast(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl DowncastF32 for bf16 {
    fn cast(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Up‑cast helper: convert any supported element type to `f32` once so that the
/// hot kernels can run entirely in `f32` and only down‑cast when writing out.
pub trait UpcastF32 {
    fn to_f32(self) -> f32;
}

impl UpcastF32 for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl UpcastF32 for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

impl UpcastF32 for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

pub fn run_flash_attn_cpu<T>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sdpa_params: &SdpaParams,
) -> Result<Tensor>
where
    T: WithDType + Sum + num_traits::real::Real + DowncastF32 + UpcastF32 + Copy,
{
    // Inline CPU slice extraction for q, k, v, and optional mask
    let (q_guard, q_layout) = q.storage_and_layout();
    let q_data: &[T] = if let Storage::Cpu(cpu) = &*q_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for q")?;
        &data[q_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for q".into()));
    };
    let (k_guard, k_layout) = k.storage_and_layout();
    let k_data: &[T] = if let Storage::Cpu(cpu) = &*k_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for k")?;
        &data[k_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for k".into()));
    };
    let (v_guard, v_layout) = v.storage_and_layout();
    let v_data: &[T] = if let Storage::Cpu(cpu) = &*v_guard {
        let data = cpu.as_slice::<T>().context("Expected CPU storage for v")?;
        &data[v_layout.start_offset()..]
    } else {
        return Err(candle_core::Error::Msg("Expected CPU storage for v".into()));
    };
    let mut mask_buffer: Option<Vec<f32>> = None;
    let mut mask_dims: Option<Vec<usize>> = None;
    if let Some(mask_tensor) = mask {
        mask_dims = Some(mask_tensor.shape().dims().to_vec());
        let buffer = {
            let (guard, layout) = mask_tensor.storage_and_layout();
            if let Storage::Cpu(cpu) = &*guard {
                let data = cpu
                    .as_slice::<T>()
                    .context("Expected CPU storage for mask")?;
                data[layout.start_offset()..]
                    .iter()
                    .map(|v| (*v).to_f32())
                    .collect::<Vec<f32>>()
            } else {
                return Err(candle_core::Error::Msg(
                    "Expected CPU storage for mask".into(),
                ));
            }
        };
        mask_buffer = Some(buffer);
    }
    // q_guard, k_guard, v_guard, and m_guard (if any) are kept in scope to hold storage alive

    let q_stride = q.stride();
    let k_stride = k.stride();
    let v_stride = v.stride();

    // Fast path for decode: q_len == 1
    let mask_dims_ref = mask_dims.as_deref();
    let mask_slice = mask_buffer.as_deref();

    if q.shape().dims()[1] == 1 {
        return flash_attn_cpu_single_q(
            q_data,
            k_data,
            v_data,
            mask_slice,
            mask_dims_ref,
            q.shape().dims(),
            k.shape().dims(),
            v.shape().dims(),
            q_stride,
            k_stride,
            v_stride,
            sdpa_params.softmax_scale,
            0.0,
            sdpa_params.softcap.unwrap_or(0.0),
        );
    }

    flash_attn_cpu(
        q_data,
        k_data,
        v_data,
        mask_slice,
        mask_dims_ref,
        q.shape().dims(),
        k.shape().dims(),
        v.shape().dims(),
        q_stride,
        k_stride,
        v_stride,
        sdpa_params.softmax_scale,
        0.0,
        sdpa_params.softcap.unwrap_or(0.0),
    )
}

/// Optimised path for the common decode case: q_len == 1 but kv_len ≫ 1.
/// All intermediate maths is done in `f32`; we down‑cast to `T` exactly once
/// when writing the output buffer.
#[allow(clippy::too_many_arguments)]
fn flash_attn_cpu_single_q<T>(
    q_data: &[T],
    k_data: &[T],
    v_data: &[T],
    mask_vec: Option<&[f32]>,
    mask_dims: Option<&[usize]>,
    qshape: &[usize],
    kshape: &[usize],
    vshape: &[usize],
    qstride: &[usize],
    kstride: &[usize],
    vstride: &[usize],
    scale: f32,
    max_bias: f32,
    logit_softcap: f32,
) -> Result<Tensor>
where
    T: WithDType + Copy + UpcastF32 + DowncastF32,
{
    let (b, _q_len, h, d) = (qshape[0], qshape[1], qshape[2], qshape[3]);
    let kv_len = kshape[1];
    let kv_tiles = kv_len.div_ceil(TILE_KV);
    let dv = d;

    // --- head tiling factors and softmax helper -----------------------
    let k_h = kshape[2];
    let v_h = vshape[2];
    let rk2 = h / k_h;
    let rv2 = h / v_h;
    let n2 = 2_usize.pow((h as f32).log2().ceil() as u32);

    // final output
    let mut out = vec![T::cast(0.0); b * h * dv];
    // llm-stream: scratch for every (sequence, tile, head), not only every (tile, head).
    // Upstream sized and indexed it by tile and head alone, so in a batch of several sequences
    // each sequence's partial results overwrote the previous one's, and every sequence of the
    // batch got the attention output of the last: batched decoding answered each request with
    // a mix of its own text and its neighbours' (the last sequence's context leaked into all).
    let slots = b * kv_tiles * h;
    let mut scratch = vec![0f32; slots * dv];
    let mut scratch_s = vec![0f32; slots]; // softmax S per tile
    let mut scratch_m = vec![f32::NEG_INFINITY; slots];
    let slot = |b_i: usize, tile_idx: usize, h_i: usize| (b_i * kv_tiles + tile_idx) * h + h_i;

    // Store as plain usize so the capture is Sync (raw *mut T is not Sync)
    let scratch_ptr = scratch.as_mut_ptr() as usize;
    let scratch_s_ptr = scratch_s.as_mut_ptr() as usize;
    let scratch_m_ptr = scratch_m.as_mut_ptr() as usize;

    let mask_info = match (mask_vec, mask_dims) {
        (Some(data), Some(dims)) => Some(MaskInfo { data, dims, b, h }),
        _ => None,
    };

    in_kernel_pool(|| {
        // llm-stream: one parallel item per (sequence, tile); each writes only its own slots.
        (0..b * kv_tiles).into_par_iter().for_each(|item| {
            let (b_i, tile_idx) = (item / kv_tiles, item % kv_tiles);
            let start = tile_idx * TILE_KV;
            let end = (start + TILE_KV).min(kv_len);

            for h_i in 0..h {
                // Per‑head slope for ALiBi / NTK bias.
                let slope = if max_bias > 0.0 {
                    2.0f32.powf(-max_bias * ((h_i + 1) as f32) / n2 as f32)
                } else {
                    1.0
                };
                let k_head = h_i / rk2;
                let v_head = h_i / rv2;
                let rows = HeadRows::new(
                    (k_data, v_data),
                    (kstride, vstride),
                    b_i,
                    (k_head, v_head),
                    d,
                );

                // pointers into scratch
                let base_s = slot(b_i, tile_idx, h_i);
                let base_vk = base_s * dv;

                let q_base = b_i * qstride[0] + h_i * qstride[2];
                let q_row = &q_data[q_base..q_base + d];

                // Re‑materialise the pointer from the captured usize.
                let vkq: &mut [f32] = unsafe {
                    std::slice::from_raw_parts_mut((scratch_ptr as *mut f32).add(base_vk), dv)
                };
                let (s, m) = attend_tile(
                    q_row,
                    (scale, logit_softcap),
                    &rows,
                    (start, end - start),
                    |pos| {
                        mask_info
                            .as_ref()
                            .map(|mask| slope * mask.value(b_i, h_i, 0, pos))
                            .unwrap_or(0.0)
                    },
                    &mut vkq[..dv],
                );

                unsafe {
                    *((scratch_s_ptr as *mut f32).add(base_s)) = s;
                    *((scratch_m_ptr as *mut f32).add(base_s)) = m;
                }
            }
        });
    });

    // -------- serial reduction over tiles (per sequence and head) --------
    for b_i in 0..b {
        for h_i in 0..h {
            let out_off = (b_i * h + h_i) * dv;

            // start with tile 0
            let first = slot(b_i, 0, h_i);
            let mut vkq = scratch[first * dv..(first + 1) * dv].to_vec();
            let mut s = scratch_s[first];
            let mut m = scratch_m[first];

            for tile_idx in 1..kv_tiles {
                let base_s = slot(b_i, tile_idx, h_i);
                let m_b = scratch_m[base_s];
                let s_b = scratch_s[base_s];
                let vkq_b = &scratch[base_s * dv..(base_s + 1) * dv];
                softmax_merge((&mut vkq, &mut s, &mut m), vkq_b, s_b, m_b);
            }

            let inv_s = 1.0 / s;
            for (o, v) in out[out_off..][..dv].iter_mut().zip(vkq.iter()) {
                *o = T::cast(*v * inv_s);
            }
        }
    }

    Tensor::from_vec(out, (b, h, 1, dv), &Device::Cpu)
}

/// Main forward flash-attention CPU routine.
/// Shapes follow Candle convention: (B, S, H, D)
#[allow(clippy::too_many_arguments)]
fn flash_attn_cpu<T>(
    q_data: &[T],
    k_data: &[T],
    v_data: &[T],
    mask_vec: Option<&[f32]>,
    mask_dims: Option<&[usize]>,
    qshape: &[usize],
    kshape: &[usize],
    vshape: &[usize],
    qstride: &[usize],
    kstride: &[usize],
    vstride: &[usize],
    scale: f32,
    max_bias: f32,
    logit_softcap: f32,
) -> Result<Tensor>
where
    T: WithDType + Copy + UpcastF32 + DowncastF32,
{
    let (b, q_len, h, d) = (qshape[0], qshape[1], qshape[2], qshape[3]);
    let kv_len = kshape[1];
    let k_h = kshape[2];
    let v_h = vshape[2];
    let rk2 = h / k_h;
    let rv2 = h / v_h;
    let dv = d;

    let n2 = 2_usize.pow((h as f32).log2().ceil() as u32);

    let mut out = vec![T::cast(0.0); b * q_len * h * dv];

    assert_eq!(qstride[3], 1, "q must have contiguous rows");
    assert_eq!(kstride[3], 1, "k must have contiguous rows");
    assert_eq!(vstride[3], 1, "v must have contiguous rows");

    let mask_info = match (mask_vec, mask_dims) {
        (Some(data), Some(dims)) => Some(MaskInfo { data, dims, b, h }),
        _ => None,
    };

    in_kernel_pool(|| {
        out.par_chunks_mut(dv)
            .with_min_len(64)
            .enumerate()
            .for_each(|(row_idx, out_chunk)| {
                // Decode flat index back to (batch, head, q_pos)
                let rows_per_batch = h * q_len;
                let b_i = row_idx / rows_per_batch;
                let rem = row_idx % rows_per_batch;
                let h_i = rem / q_len;
                let q_pos = rem % q_len;

                let slope = if max_bias > 0.0 {
                    2.0f32.powf(-max_bias * ((h_i + 1) as f32) / n2 as f32)
                } else {
                    1.0
                };

                let k_head = h_i / rk2;
                let v_head = h_i / rv2;
                let rows = HeadRows::new(
                    (k_data, v_data),
                    (kstride, vstride),
                    b_i,
                    (k_head, v_head),
                    d,
                );

                // Q row
                let q_base = b_i * qstride[0] + q_pos * qstride[1] + h_i * qstride[2];
                let q_row = &q_data[q_base..q_base + d];

                // llm-stream: the keys are taken in tiles of `TILE_KV` (`attend_tile`), and the
                // tiles merged in order, exactly as `flash_attn_cpu_single_q` computes a one-token
                // step. A row's result is then the same floats whether its
                // token is computed within a prompt or alone: an exact repeat served from the
                // prefix cache computes only its last token, and must answer as the first request
                // did. (Upstream ran one softmax over all keys here, and the answers drifted.)
                let mut vkq = vec![0f32; dv];
                let mut s = 0.0f32;
                let mut m = f32::NEG_INFINITY;
                let mut merged_any = false;
                let mut tile_vkq = vec![0f32; dv];

                for tile_start in (0..kv_len).step_by(TILE_KV) {
                    let tile_end = (tile_start + TILE_KV).min(kv_len);
                    let (tile_s, tile_m) = attend_tile(
                        q_row,
                        (scale, logit_softcap),
                        &rows,
                        (tile_start, tile_end - tile_start),
                        |pos| {
                            mask_info
                                .as_ref()
                                .map(|mask| slope * mask.value(b_i, h_i, q_pos, pos))
                                .unwrap_or(0.0)
                        },
                        &mut tile_vkq,
                    );
                    if tile_m == f32::NEG_INFINITY {
                        // Every key of the tile is masked: nothing to merge.
                        continue;
                    }
                    // merge, as the one-token step's serial reduction over tiles
                    if !merged_any {
                        vkq.copy_from_slice(&tile_vkq);
                        s = tile_s;
                        m = tile_m;
                        merged_any = true;
                    } else {
                        softmax_merge((&mut vkq, &mut s, &mut m), &tile_vkq, tile_s, tile_m);
                    }
                }

                // final normalisation + downcast
                let inv_s = 1.0 / s;
                for (o, v) in out_chunk.iter_mut().zip(vkq.iter()) {
                    *o = T::cast(*v * inv_s);
                }
            });
    });

    let out_shape = (b, h, q_len, dv);
    Tensor::from_vec(out, out_shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::SdpaParams;
    use candle_core::{Device, Tensor, D};
    use candle_nn::ops::softmax;

    use candle_core::Result as CandleResult;

    const EPS: f32 = 1e-4;

    #[test]
    fn test_flash_attn_cpu_single_q() -> CandleResult<()> {
        // Test for q_len == 1 (single Q)
        let b = 1;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, 1, h, d) filled with ones
        let q_vec = vec![1.0f32; b * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, 1, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, no softcap
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: None,
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, 1, d)
        assert_eq!(out.shape().dims(), &[b, h, 1, d]);

        // Naive attention
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, 1, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;
        let weights = softmax(&logits, D::Minus1)?;

        let attn_out = weights.matmul(&v_resh)?;

        let naive_out = attn_out.reshape(&[b, h, 1, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }

        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_full_q() -> CandleResult<()> {
        // Test for q_len > 1 (full Q)
        let b = 1;
        let q_len = 2;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, q_len, h, d) filled with ones
        let q_vec = vec![1.0f32; b * q_len * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, q_len, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, no softcap
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: None,
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, q_len, d)
        assert_eq!(out.shape().dims(), &[b, h, q_len, d]);

        // Naive attention
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, q_len, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;
        let weights = softmax(&logits, D::Minus1)?;

        let attn_out = weights.matmul(&v_resh)?;

        let naive_out = attn_out.reshape(&[b, h, q_len, d])?;

        // 7) Compare element‐by‐element
        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }

        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_single_q_softcap() -> CandleResult<()> {
        // Test for q_len == 1 (single Q) with softcap
        let b = 1;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, 1, h, d) filled with ones
        let q_vec = vec![1.0f32; b * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, 1, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, softcap = Some(0.5)
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: Some(0.5),
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;
        let sc = sdpa.softcap.unwrap();

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, 1, d)
        assert_eq!(out.shape().dims(), &[b, h, 1, d]);

        // Naive attention with softcap
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, 1, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;

        let logits = (logits / sc as f64)?;
        let logits = logits.tanh()?;
        let logits = (logits * sc as f64)?;

        let weights = softmax(&logits, D::Minus1)?;
        let attn_out = weights.matmul(&v_resh)?;
        let naive_out = attn_out.reshape(&[b, h, 1, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }
        Ok(())
    }

    #[test]
    fn test_flash_attn_cpu_full_q_softcap() -> CandleResult<()> {
        // Test for q_len > 1 (full Q) with softcap
        let b = 1;
        let q_len = 2;
        let h = 2;
        let d = 4;
        let kv_len = 2;

        // Create q with shape (b, q_len, h, d) filled with ones
        let q_vec = vec![1.0f32; b * q_len * h * d];
        let q = Tensor::from_vec(q_vec.clone(), (b, q_len, h, d), &Device::Cpu)?;

        // Create k and v with shape (b, kv_len, h, d) filled with ones
        let k_vec = vec![1.0f32; b * kv_len * h * d];
        let v_vec = vec![1.0f32; b * kv_len * h * d];
        let k = Tensor::from_vec(k_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v_vec.clone(), (b, kv_len, h, d), &Device::Cpu)?;

        // SDPA parameters: scale = 1.0, softcap = Some(0.5)
        let sdpa = SdpaParams {
            softmax_scale: 1.0,
            softcap: Some(0.5),
            n_kv_groups: 1,
            sliding_window: None,
            sinks: None,
        };
        let scale = sdpa.softmax_scale;
        let sc = sdpa.softcap.unwrap();

        // Run the flash attention CPU function
        let out = run_flash_attn_cpu::<f32>(&q, &k, &v, None, &sdpa)?;
        // Expect output shape (b, h, q_len, d)
        assert_eq!(out.shape().dims(), &[b, h, q_len, d]);

        // Naive attention with softcap
        let q_perm = q.clone().permute((0, 2, 1, 3))?;
        let k_perm = k.clone().permute((0, 2, 1, 3))?;
        let v_perm = v.clone().permute((0, 2, 1, 3))?;

        let q_resh = q_perm.reshape(&[b * h, q_len, d])?;
        let k_resh = k_perm.reshape(&[b * h, kv_len, d])?;
        let v_resh = v_perm.reshape(&[b * h, kv_len, d])?;

        let logits = (q_resh.matmul(&k_resh.transpose(1, 2)?)? * scale as f64)?;

        let logits = (logits / sc as f64)?;
        let logits = logits.tanh()?;
        let logits = (logits * sc as f64)?;

        let weights = softmax(&logits, D::Minus1)?;
        let attn_out = weights.matmul(&v_resh)?;
        let naive_out = attn_out.reshape(&[b, h, q_len, d])?;

        let flash_data = out.flatten_all()?.to_vec1::<f32>()?;
        let naive_data = naive_out.flatten_all()?.to_vec1::<f32>()?;
        for (f_val, n_val) in flash_data.iter().zip(naive_data.iter()) {
            assert!((f_val - n_val).abs() < EPS);
        }
        Ok(())
    }
}
