use super::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8K, BlockQ8_0,
    QK8_0, QK8_1, QK_K,
};
use byteorder::{ByteOrder, LittleEndian};
use half::f16;

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[inline(always)]
pub(crate) unsafe fn sum_i16_pairs_float(x: __m256i) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let summed_pairs = _mm256_madd_epi16(ones, x);
    _mm256_cvtepi32_ps(summed_pairs)
}

#[inline(always)]
pub(crate) unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    sum_i16_pairs_float(dot)
}

#[inline(always)]
pub(crate) unsafe fn hsum_float_8(x: __m256) -> f32 {
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

#[inline(always)]
pub(crate) unsafe fn bytes_from_nibbles_32(rsi: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(rsi as *const __m128i);
    let bytes = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4));
    let low_mask = _mm256_set1_epi8(0xF);
    _mm256_and_si256(low_mask, bytes)
}

#[inline(always)]
pub(crate) unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8_pairs_float(ax, sy)
}

#[inline(always)]
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, xs: &[BlockQ4_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q4_0_q8_0: {n} is not divisible by {QK8_0}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = _mm256_set1_ps(f16::to_f32(x.d) * f16::to_f32(y.d));
            let bx = bytes_from_nibbles_32(x.qs.as_ptr());
            let off = _mm256_set1_epi8(8);
            let bx = _mm256_sub_epi8(bx, off);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let q = mul_sum_i8_pairs_float(bx, by);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q8_0_q8_0: {n} is not divisible by {QK8_0}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = _mm256_set1_ps(f16::to_f32(x.d) * f16::to_f32(y.d));
            let bx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let q = mul_sum_i8_pairs_float(bx, by);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }
}

#[inline(always)]
unsafe fn get_scale_shuffle(i: usize) -> __m128i {
    const K_SHUFFLE: [u8; 128] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7,
        7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10,
        11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13,
        13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
    ];
    _mm_loadu_si128((K_SHUFFLE.as_ptr() as *const __m128i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_k4(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 256] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
        0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
        4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9,
        8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10,
        11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13,
        12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
        14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_q3k(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 128] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11,
        10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
pub(crate) fn vec_dot_q6k_q8k(n: usize, xs: &[BlockQ6K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q6k_8k: {n} is not divisible by {QK_K}"
    );

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let mut q4 = x.ql.as_ptr();
            let mut qh = x.qh.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 128 {
                let is = j * 4;
                let scale_0 = _mm_shuffle_epi8(scales, get_scale_shuffle(is));
                let scale_1 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 1));
                let scale_2 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 2));
                let scale_3 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 3));

                let q4bits1 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4bits2 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4bits_h = _mm256_loadu_si256(qh as *const __m256i);
                qh = qh.add(32);

                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
                let q4h_1 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
                let q4h_2 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
                let q4h_3 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);

                let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                let q4_2 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2);
                let q4_3 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let q8s_0 = _mm256_maddubs_epi16(m32s, q8_0);
                let q8s_1 = _mm256_maddubs_epi16(m32s, q8_1);
                let q8s_2 = _mm256_maddubs_epi16(m32s, q8_2);
                let q8s_3 = _mm256_maddubs_epi16(m32s, q8_3);

                let p16_0 = _mm256_maddubs_epi16(q4_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q4_1, q8_1);
                let p16_2 = _mm256_maddubs_epi16(q4_2, q8_2);
                let p16_3 = _mm256_maddubs_epi16(q4_3, q8_3);

                let p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
                let p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
                let p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
                let p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

                let p16_0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_0), p16_0);
                let p16_1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_1), p16_1);
                let p16_2 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_2), p16_2);
                let p16_3 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_3), p16_3);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_2, p16_3));
            }
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

#[inline(always)]
unsafe fn mm256_set_m128i(a: __m128i, b: __m128i) -> __m256i {
    _mm256_insertf128_si256(_mm256_castsi128_si256(b), a, 1)
}

#[inline(always)]
pub(crate) fn vec_dot_q2k_q8k(n: usize, xs: &[BlockQ2K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q2k_q8k: {n} is not divisible by {QK_K}"
    );

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xF);

        let mut acc = _mm256_setzero_ps();

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();

            let mut q2 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let scales8 = _mm_and_si128(mins_and_scales, m4);
            let mins8 = _mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4);
            let mins = _mm256_cvtepi8_epi16(mins8);
            let prod =
                _mm256_madd_epi16(mins, _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i));

            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&dmin), _mm256_cvtepi32_ps(prod), acc);

            let all_scales = _mm256_cvtepi8_epi16(scales8);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            let mut sumi = _mm256_setzero_si256();

            for scale in scales {
                let q2bits = _mm256_loadu_si256(q2 as *const __m256i);
                q2 = q2.add(32);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let q2_0 = _mm256_and_si256(q2bits, m3);
                let q2_1 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 2), m3);
                let q2_2 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 4), m3);
                let q2_3 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 6), m3);

                let p0 = _mm256_maddubs_epi16(q2_0, q8_0);
                let p1 = _mm256_maddubs_epi16(q2_1, q8_1);
                let p2 = _mm256_maddubs_epi16(q2_2, q8_2);
                let p3 = _mm256_maddubs_epi16(q2_3, q8_3);

                let p0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(0)), p0);
                let p1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(1)), p1);
                let p2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(2)), p2);
                let p3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(3)), p3);

                let p0 = _mm256_add_epi32(p0, p1);
                let p2 = _mm256_add_epi32(p2, p3);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p2));
            }
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }

        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q3k_q8k(n: usize, xs: &[BlockQ3K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q3k_q8k: {n} is not divisible by {QK_K}"
    );

    const KMASK1: u32 = 0x03030303;
    const KMASK2: u32 = 0x0f0f0f0f;

    let mut aux = [0u32; 3];

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let mone = _mm256_set1_epi8(1);
        let m32 = _mm_set1_epi8(32);

        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();

            let mut q3 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            LittleEndian::read_u32_into(&x.scales, &mut aux);
            let scales128 = _mm_set_epi32(
                (((aux[1] >> 4) & KMASK2) | (((aux[2] >> 6) & KMASK1) << 4)) as i32,
                (((aux[0] >> 4) & KMASK2) | (((aux[2] >> 4) & KMASK1) << 4)) as i32,
                ((aux[1] & KMASK2) | (((aux[2] >> 2) & KMASK1) << 4)) as i32,
                ((aux[0] & KMASK2) | (((aux[2]) & KMASK1) << 4)) as i32,
            );
            let scales128 = _mm_sub_epi8(scales128, m32);
            let all_scales = _mm256_cvtepi8_epi16(scales128);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            // high bit
            let hbits = _mm256_loadu_si256(x.hmask.as_ptr() as *const __m256i);

            let mut sumi = _mm256_setzero_si256();

            for (j, scale) in scales.iter().enumerate() {
                // load low 2 bits
                let q3bits = _mm256_loadu_si256(q3 as *const __m256i);
                q3 = q3.add(32);

                // Prepare low and high bits
                // We hardcode the shifts here to avoid loading them into a separate register
                let q3l_0 = _mm256_and_si256(q3bits, m3);
                let q3h_0 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 0)), 0)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 4)), 4)
                };
                let q3h_0 = _mm256_slli_epi16(q3h_0, 2);

                let q3l_1 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 2), m3);
                let q3h_1 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 1)), 1)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 5)), 5)
                };
                let q3h_1 = _mm256_slli_epi16(q3h_1, 2);

                let q3l_2 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 4), m3);
                let q3h_2 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 2)), 2)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 6)), 6)
                };
                let q3h_2 = _mm256_slli_epi16(q3h_2, 2);

                let q3l_3 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 6), m3);
                let q3h_3 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 3)), 3)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 7)), 7)
                };
                let q3h_3 = _mm256_slli_epi16(q3h_3, 2);

                // load Q8 quants
                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                // Dot product: we multiply the 2 low bits and 1 high bit part separately, so we
                // can use _mm256_maddubs_epi16, and then subtract. The high bit part has the 2
                // already subtracted (and so, it is zero if the high bit was not set, and 2 if the
                // high bit was set)
                let q8s_0 = _mm256_maddubs_epi16(q3h_0, q8_0);
                let q8s_1 = _mm256_maddubs_epi16(q3h_1, q8_1);
                let q8s_2 = _mm256_maddubs_epi16(q3h_2, q8_2);
                let q8s_3 = _mm256_maddubs_epi16(q3h_3, q8_3);

                let p16_0 = _mm256_maddubs_epi16(q3l_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q3l_1, q8_1);
                let p16_2 = _mm256_maddubs_epi16(q3l_2, q8_2);
                let p16_3 = _mm256_maddubs_epi16(q3l_3, q8_3);

                let p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
                let p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
                let p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
                let p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

                // multiply with scales
                let p16_0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(0)), p16_0);
                let p16_1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(1)), p16_1);
                let p16_2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(2)), p16_2);
                let p16_3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(3)), p16_3);

                // accumulate
                let p16_0 = _mm256_add_epi32(p16_0, p16_1);
                let p16_2 = _mm256_add_epi32(p16_2, p16_3);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_2));
            }

            // multiply with block scale and accumulate
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q4k_q8k(n: usize, xs: &[BlockQ4K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q4k_q8k: {n} is not divisible by {QK_K}"
    );
    let mut utmp = [0u32; 4];
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);

        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();

            LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);

            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;

            let mut q4 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));

            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = mm256_set_m128i(sc128, sc128);

            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q4bits = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);

                let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let p16l = _mm256_maddubs_epi16(q4l, q8l);
                let p16l = _mm256_madd_epi16(scale_l, p16l);
                sumi = _mm256_add_epi32(sumi, p16l);

                let q8h = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let p16h = _mm256_maddubs_epi16(q4h, q8h);
                let p16h = _mm256_madd_epi16(scale_h, p16h);
                sumi = _mm256_add_epi32(sumi, p16h);
            }

            let vd = _mm256_set1_ps(d);
            acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
        }

        let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));

        hsum_float_8(acc) + _mm_cvtss_f32(acc_m)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q5k_q8k(n: usize, xs: &[BlockQ5K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q5k_q8k: {n} is not divisible by {QK_K}"
    );
    let mut utmp = [0u32; 4];
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let mzero = _mm_setzero_si128();
        let mone = _mm256_set1_epi8(1);

        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0;

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();

            LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);

            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;

            let mut q5 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));

            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
            summs += dmin * _mm_extract_epi32(hsum, 0) as f32;

            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = mm256_set_m128i(sc128, sc128);

            let hbits = _mm256_loadu_si256(x.qh.as_ptr() as *const __m256i);
            let mut hmask = mone;

            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 64 {
                let scale_0 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_1 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q5bits = _mm256_loadu_si256(q5 as *const __m256i);
                q5 = q5.add(32);

                //Similar to q3k we hardcode the shifts here to avoid loading them into a separate register
                let q5l_0 = _mm256_and_si256(q5bits, m4);
                let q5l_0_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_0_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_0_shift_input, 0),
                    1 => _mm256_srli_epi16(q5l_0_shift_input, 2),
                    2 => _mm256_srli_epi16(q5l_0_shift_input, 4),
                    3 => _mm256_srli_epi16(q5l_0_shift_input, 6),
                    _ => unreachable!(),
                };
                let q5h_0 = _mm256_slli_epi16(q5l_0_right_shift, 4);
                let q5_0 = _mm256_add_epi8(q5l_0, q5h_0);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
                let q5l_1_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_1_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_1_shift_input, 1),
                    1 => _mm256_srli_epi16(q5l_1_shift_input, 3),
                    2 => _mm256_srli_epi16(q5l_1_shift_input, 5),
                    3 => _mm256_srli_epi16(q5l_1_shift_input, 7),
                    _ => unreachable!(),
                };

                let q5h_1 = _mm256_slli_epi16(q5l_1_right_shift, 4);
                let q5_1 = _mm256_add_epi8(q5l_1, q5h_1);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let p16_0 = _mm256_maddubs_epi16(q5_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q5_1, q8_1);

                let p16_0 = _mm256_madd_epi16(scale_0, p16_0);
                let p16_1 = _mm256_madd_epi16(scale_1, p16_1);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            }
            let vd = _mm256_set1_ps(d);
            acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc) + summs
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q8k_q8k(n: usize, xs: &[BlockQ8K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q8k_8k: {n} is not divisible by {QK_K}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xs, ys) in xs.iter().zip(ys.iter()) {
            let mut sumi = _mm256_setzero_si256();
            let x_qs = xs.qs.as_ptr();
            let y_qs = ys.qs.as_ptr();
            for j in (0..QK_K).step_by(32) {
                let xs = _mm256_loadu_si256(x_qs.add(j) as *const __m256i);
                let ys = _mm256_loadu_si256(y_qs.add(j) as *const __m256i);

                let xs0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 0));
                let ys0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 0));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs0, ys0));

                let xs1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 1));
                let ys1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 1));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs1, ys1));
            }
            let d = _mm256_set1_ps(xs.d * ys.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

/// How [`q8_0_column`] multiplies 32 pairs of bytes into 8 lanes of 4-product sums.
const DOT_AVX2: u8 = 0;
/// One `vpdpbusd` (AVX-VNNI, VEX encoded) instead of `vpmaddubsw` + `vpmaddwd`.
const DOT_AVX_VNNI: u8 = 1;
/// One `vpdpbusd` (AVX512-VNNI on 256-bit registers, EVEX encoded).
const DOT_AVX512_VNNI: u8 = 2;

/// The 8 lanes of 4-byte-product sums of two blocks' bytes: `ax` the weight bytes' magnitudes,
/// `sy` the activation bytes carrying the weight bytes' signs. The two-instruction AVX2 form
/// saturates its 16-bit pair sums only for a pair of -128 weights with -128 activations, and Q8_0
/// quantization yields values in -127..=127, so all three forms give the same integers.
#[inline(always)]
unsafe fn dot_i32<const DOT: u8>(ax: __m256i, sy: __m256i) -> __m256i {
    match DOT {
        DOT_AVX_VNNI => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy),
        DOT_AVX512_VNNI => _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy),
        _ => _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1)),
    }
}

/// The totals of four vectors of 8 integer lanes: lane `i` of the 128-bit result is `v[i]`'s.
#[inline(always)]
unsafe fn sum_lanes_4(v: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// Dot products of one Q8_0 weight column with `R` Q8_0 activation rows, computed together: each
/// weight block loaded from memory is reused from registers for `R` products.
///
/// llm-stream: for each block in order, the exact integer sum of its 32 byte products, converted to
/// a float, times the product of the two blocks' scales, is added to the float sum in one fused
/// multiply-add (`crates/llm-engine/tests/kernels.rs` holds this as a scalar reference). The AMX kernel
/// ([`matmul_q8_0_amx`]) computes the same floats, so that a prompt row, a decoding row and a
/// batch of either all get the same result for the same values. (Upstream keeps 8 float lanes of
/// 4-product sums per pair and adds them up at the end; exact block sums are as accurate or more,
/// and cost fewer instructions: one conversion per block, and the horizontal sums of four at
/// once, four blocks of one row or one block of four rows.)
///
/// One column at a time, so that the weights stream from memory in the order they are stored:
/// tiles of four columns read four streams 612 bytes apart and, on a Zen 4 core, drew 6 GB/s from
/// memory where one stream drew 20 (with a software prefetch of the next tile, 11).
///
/// # Safety
/// `x` must point at a column of `nb` blocks; `ys` at `R` rows of `nb` blocks each, `ystride`
/// blocks apart. `R` is 1 to 4. The CPU must have the features `DOT` uses, and the caller must
/// enable them (`#[target_feature]`) for this to compile to them.
#[inline(always)]
pub(crate) unsafe fn q8_0_column<const R: usize, const DOT: u8>(
    nb: usize,
    x: *const BlockQ8_0,
    ys: *const BlockQ8_0,
    ystride: usize,
) -> [f32; R] {
    if R > 1 {
        return q8_0_column_rows::<R, DOT>(nb, x, ys, ystride);
    }
    let mut acc = _mm_setzero_ps();
    let mut b = 0;
    while b + 4 <= nb {
        q8_0_blocks::<4, DOT>(x.add(b), ys.add(b), &mut acc);
        b += 4;
    }
    match nb - b {
        3 => q8_0_blocks::<3, DOT>(x.add(b), ys.add(b), &mut acc),
        2 => q8_0_blocks::<2, DOT>(x.add(b), ys.add(b), &mut acc),
        1 => q8_0_blocks::<1, DOT>(x.add(b), ys.add(b), &mut acc),
        _ => {}
    }
    let mut out = [0f32; R];
    out[0] = _mm_cvtss_f32(acc);
    out
}

/// [`q8_0_column`] for 2 to 4 rows: each block's integer sums of the rows added horizontally
/// together, one row per lane, and added to the rows' float sums in one vector multiply-add.
#[inline(always)]
unsafe fn q8_0_column_rows<const R: usize, const DOT: u8>(
    nb: usize,
    x: *const BlockQ8_0,
    ys: *const BlockQ8_0,
    ystride: usize,
) -> [f32; R] {
    let mut acc = _mm_setzero_ps();
    for b in 0..nb {
        let xb = &*x.add(b);
        let bx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let ax = _mm256_sign_epi8(bx, bx);
        let mut sums = [_mm256_setzero_si256(); 4];
        let mut dy_bits = 0u64;
        for r in 0..R {
            let yb = &*ys.add(r * ystride + b);
            dy_bits |= u64::from(yb.d.to_bits()).wrapping_shl(16 * r as u32);
            let by = _mm256_loadu_si256(yb.qs.as_ptr() as *const __m256i);
            sums[r] = dot_i32::<DOT>(ax, _mm256_sign_epi8(by, bx));
        }
        let dx = _mm_set1_ps(xb.d.to_f32());
        let scale = _mm_mul_ps(dx, f16_lanes(dy_bits));
        acc = _mm_fmadd_ps(scale, _mm_cvtepi32_ps(sum_lanes_4(sums)), acc);
    }
    let mut lanes = [0f32; 4];
    _mm_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut out = [0f32; R];
    out.copy_from_slice(&lanes[..R]);
    out
}

/// `G` (1 to 4) consecutive blocks of one column and one row of [`q8_0_column`]: their integer
/// sums horizontally added together, then added to the float sum (lane 0 of `acc`) block by
/// block, in order.
#[inline(always)]
unsafe fn q8_0_blocks<const G: usize, const DOT: u8>(
    x: *const BlockQ8_0,
    y: *const BlockQ8_0,
    acc: &mut __m128,
) {
    let mut sums = [_mm256_setzero_si256(); 4];
    // The scales, four `f16`s packed into one register and converted together (filling an array
    // of floats and loading it as a vector stalled on store forwarding every block).
    let (mut dx_bits, mut dy_bits) = (0u64, 0u64);
    for j in 0..G {
        let (xb, yb) = (&*x.add(j), &*y.add(j));
        dx_bits |= u64::from(xb.d.to_bits()).wrapping_shl(16 * j as u32);
        dy_bits |= u64::from(yb.d.to_bits()).wrapping_shl(16 * j as u32);
        let bx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let by = _mm256_loadu_si256(yb.qs.as_ptr() as *const __m256i);
        sums[j] = dot_i32::<DOT>(_mm256_sign_epi8(bx, bx), _mm256_sign_epi8(by, bx));
    }
    let totals = _mm_cvtepi32_ps(sum_lanes_4(sums));
    let scale = _mm_mul_ps(f16_lanes(dx_bits), f16_lanes(dy_bits));
    fma_lanes_in_order::<G>(scale, totals, acc);
}

/// The four `f16`s packed in `bits` (the first in the low 16 bits) as four float lanes.
#[inline(always)]
unsafe fn f16_lanes(bits: u64) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// Adds `a[j] * b[j]` for the first `G` (1 to 4) lanes to lane 0 of `acc`, lane by lane in order,
/// each in one fused multiply-add: the same floats as one vector multiply-add per lane of the
/// many-row kernels, where each lane is a row.
#[inline(always)]
unsafe fn fma_lanes_in_order<const G: usize>(a: __m128, b: __m128, acc: &mut __m128) {
    *acc = _mm_fmadd_ss(a, b, *acc);
    if G > 1 {
        *acc = _mm_fmadd_ss(_mm_movehdup_ps(a), _mm_movehdup_ps(b), *acc);
    }
    if G > 2 {
        *acc = _mm_fmadd_ss(_mm_movehl_ps(a, a), _mm_movehl_ps(b, b), *acc);
    }
    if G > 3 {
        let (a, b) = (_mm_shuffle_ps::<3>(a, a), _mm_shuffle_ps::<3>(b, b));
        *acc = _mm_fmadd_ss(a, b, *acc);
    }
}

/// llm-stream: Q8_1 activations as [`q4_1_column`] reads them: four blocks' bytes, then their
/// scales `d` and offset sums `s` as floats, the `f16`s `BlockQ8_1::from_float` gives, exactly.
/// A row's last group is padded with zeros. The scales are the same for every weight column, so
/// they are converted once per row here instead of once per column in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8_1x4 {
    qs: [[i8; QK8_1]; 4],
    d: [f32; 4],
    s: [f32; 4],
}

impl Q8_1x4 {
    pub(crate) const ZERO: Self = Self {
        qs: [[0; QK8_1]; 4],
        d: [0.0; 4],
        s: [0.0; 4],
    };
}

/// llm-stream: quantizes one row of activations (whole blocks of 32) into `ys`, zeroed groups of
/// four blocks, as `BlockQ8_1::from_float` does: the same bytes and scale as Q8_0
/// ([`quantize_row_q8_0`]), and `s`, the sum of the bytes as an `f16` times the scale, rounded to
/// an `f16` as upstream rounds it.
pub(crate) fn quantize_row_q8_1x4(xs: &[f32], ys: &mut [Q8_1x4]) {
    assert!(xs.len().is_multiple_of(QK8_1) && ys.len() == (xs.len() / QK8_1).div_ceil(4));
    let mut q8_0 = [BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; QK8_0],
    }];
    for (i, block) in xs.chunks_exact(QK8_1).enumerate() {
        quantize_row_q8_0(block, &mut q8_0);
        let (group, j) = (&mut ys[i / 4], i % 4);
        let sum: i32 = q8_0[0].qs.iter().map(|&q| i32::from(q)).sum();
        group.qs[j] = q8_0[0].qs;
        group.d[j] = q8_0[0].d.to_f32();
        group.s[j] = (f16::from_f32(sum as f32) * q8_0[0].d).to_f32();
    }
}

/// Dot products of one Q4_1 weight column with `R` Q8_1 activation rows, computed together.
///
/// llm-stream: a Q4_1 block's values are `d * q + m` (`q` in 0..=15) and a Q8_1 block's `d * q`,
/// with `s` its scale times the sum of its bytes, so a block pair's product is
/// `dx * dy * sum(qx * qy) + mx * sy`. Block `b` goes to lane `b % 4` of two float sums: the exact
/// integer sum of its 32 products, converted to a float, times `dx * dy`, is added to the first
/// in one fused multiply-add, and the rounded product `mx * sy` to the second. The result is the
/// lanes of the two sums added, then `(l0 + l2) + (l1 + l3)`. One row alone and rows together, in
/// a prompt or a batch, go through the same code and get the same floats
/// (`crates/llm-engine/tests/kernels.rs` holds this as a scalar reference). Upstream's x86 build
/// has only the scalar loop of `vec_dot`, which sums `sumi * dx * dy + mx * sy` per block in one
/// float sum: the same products, rounded in another order.
///
/// The 4-bit weights are the unsigned operand of the byte dot product as they are, and a product
/// of two bytes is at most 15 * 128, so the AVX2 pair sums never saturate: all three `DOT` forms
/// give the same integers. Weight blocks are 20 bytes where Q8_0's are 34: decoding, which
/// streams every weight once per token, reads 41% fewer bytes. Without shuffles where a load can
/// do it (the nibbles are unpacked from a broadcast load by a variable shift): on a Zen 4 core a
/// first form, which moved bytes between 128-bit lanes for the nibbles and for every scale, was
/// bound by its shuffle units at a third of the memory's speed.
///
/// # Safety
/// `x` must point at a column of `nb` blocks; `ys` at `R` rows of `nb.div_ceil(4)` groups each,
/// `ystride` groups apart. `R` is 1 to 4. The CPU must have the features `DOT` uses, and the
/// caller must enable them (`#[target_feature]`) for this to compile to them.
#[inline(always)]
pub(crate) unsafe fn q4_1_column<const R: usize, const DOT: u8>(
    nb: usize,
    x: *const BlockQ4_1,
    ys: *const Q8_1x4,
    ystride: usize,
) -> [f32; R] {
    let mut acc = [_mm_setzero_ps(); R];
    let mut macc = [_mm_setzero_ps(); R];
    let groups = nb / 4;
    for g in 0..groups {
        q4_1_group::<4, R, DOT>(x.add(4 * g), ys.add(g), ystride, &mut acc, &mut macc);
    }
    let (x, ys) = (x.add(4 * groups), ys.add(groups));
    match nb % 4 {
        3 => q4_1_group::<3, R, DOT>(x, ys, ystride, &mut acc, &mut macc),
        2 => q4_1_group::<2, R, DOT>(x, ys, ystride, &mut acc, &mut macc),
        1 => q4_1_group::<1, R, DOT>(x, ys, ystride, &mut acc, &mut macc),
        _ => {}
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let lanes = _mm_add_ps(acc[r], macc[r]);
        let pairs = _mm_add_ps(lanes, _mm_movehl_ps(lanes, lanes));
        out[r] = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
    }
    out
}

/// `G` (1 to 4) consecutive blocks of a [`q4_1_column`], for each of its `R` rows, into lanes 0
/// to `G - 1` of the rows' sums (the other lanes get zeros added). The weight blocks are unpacked
/// once for all rows.
#[inline(always)]
unsafe fn q4_1_group<const G: usize, const R: usize, const DOT: u8>(
    x: *const BlockQ4_1,
    ys: *const Q8_1x4,
    ystride: usize,
    acc: &mut [__m128; R],
    macc: &mut [__m128; R],
) {
    // The 16 bytes in both halves, the high half shifted right by a nibble: masked, the low
    // nibbles (values 0 to 15) then the high ones (16 to 31), as Q8_1 orders its bytes.
    let (shifts, low) = (
        _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4),
        _mm256_set1_epi8(0x0F),
    );
    let mut bx = [_mm256_setzero_si256(); 4];
    for (j, bx) in bx.iter_mut().enumerate().take(G) {
        let q =
            _mm256_broadcastsi128_si256(_mm_loadu_si128((*x.add(j)).qs.as_ptr() as *const __m128i));
        *bx = _mm256_and_si256(_mm256_srlv_epi32(q, shifts), low);
    }
    // [d0, m0, d1, m1, ...] (each block leads with its two `f16`s), split into [d0, d1, ...]
    // and [m0, m1, ...].
    let pair = |j: usize| (x.add(j) as *const i32).read_unaligned();
    let mut v = _mm_cvtsi32_si128(pair(0));
    if G > 1 {
        v = _mm_insert_epi32::<1>(v, pair(1));
    }
    if G > 2 {
        v = _mm_insert_epi32::<2>(v, pair(2));
    }
    if G > 3 {
        v = _mm_insert_epi32::<3>(v, pair(3));
    }
    let split = _mm256_permutevar8x32_ps(
        _mm256_cvtph_ps(v),
        _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7),
    );
    let (dx, mx) = (
        _mm256_castps256_ps128(split),
        _mm256_extractf128_ps(split, 1),
    );
    for r in 0..R {
        let y = &*ys.add(r * ystride);
        let mut sums = [_mm256_setzero_si256(); 4];
        for j in 0..G {
            let by = _mm256_loadu_si256(y.qs[j].as_ptr() as *const __m256i);
            sums[j] = dot_i32::<DOT>(bx[j], by);
        }
        let totals = _mm_cvtepi32_ps(sum_lanes_4(sums));
        let (dy, sy) = (_mm_loadu_ps(y.d.as_ptr()), _mm_loadu_ps(y.s.as_ptr()));
        acc[r] = _mm_fmadd_ps(_mm_mul_ps(dx, dy), totals, acc[r]);
        macc[r] = _mm_add_ps(macc[r], _mm_mul_ps(mx, sy));
    }
}

/// llm-stream: whether this CPU and kernel run AMX int8 tile instructions: the CPU reports
/// AMX-TILE and AMX-INT8 (CPUID leaf 7), and Linux grants this process the tile data state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which also fails where the kernel or
/// a hypervisor does not support it). `LLM_STREAM_AMX=0` turns the AMX kernel off.
pub(crate) fn amx_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("LLM_STREAM_AMX").is_ok_and(|value| value == "0") {
            return false;
        }
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        // CPUID leaf 7 exists on every CPU with AVX-512.
        let leaf7 = __cpuid_count(7, 0);
        let (amx_tile, amx_int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
        if !(amx_tile && amx_int8) {
            return false;
        }
        request_tile_data()
    })
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); true when granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let result: isize;
    // SAFETY: the arch_prctl system call only reads its two integer arguments.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Rows (activation rows or weight columns) per AMX tile.
const AMX_ROWS: usize = 16;

/// A pointer to the output that parallel jobs write disjoint columns of.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every job writes its own columns of the output and nothing reads it meanwhile.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// llm-stream: the Q8_0 matmul of many activation rows (a prompt) on AMX tiles: `dst` (`m` rows
/// of `n`) from `lhs` (`m` rows of `nb` blocks) and `rhs_t` (`n` weight columns of `nb` blocks).
///
/// For each block, one `tdpbssd` multiplies 16 weight columns by 16 activation rows (8,192 byte
/// products, summed exactly as integers, a block's 32 products per pair), and AVX-512 adds each
/// pair's integer sum, times the product of the scales, to its float sum with one fused
/// multiply-add: the same floats as [`q8_0_column`] computes. The weight columns are read straight
/// from their blocks (a tile load takes 32 bytes from each of 16 rows, any stride apart); the
/// activations are first rearranged into the tiles' byte layout, 16 rows at a time.
///
/// # Safety
/// The CPU must have AMX-INT8 and AVX-512 and [`amx_available`] must have returned true.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q8_0_amx(
    (m, n): (usize, usize),
    nb: usize,
    lhs: &[BlockQ8_0],
    rhs_t: &[BlockQ8_0],
    dst: &mut [f32],
) {
    use rayon::prelude::*;
    assert!(lhs.len() >= m * nb && rhs_t.len() >= n * nb && dst.len() >= m * n);
    let groups = m.div_ceil(AMX_ROWS);
    // Tile B of group g, block b: 8 rows of 64 bytes, row kk holding bytes 4kk..4kk+4 of each of
    // the 16 activation rows' block b; and the 16 rows' scales. Missing rows are zero.
    let tile_bytes = 8 * 64;
    let mut packed = vec![0u8; groups * nb * tile_bytes];
    let mut scales = vec![0f32; groups * nb * AMX_ROWS];
    packed
        .par_chunks_mut(nb * tile_bytes)
        .zip(scales.par_chunks_mut(nb * AMX_ROWS))
        .enumerate()
        .for_each(|(g, (packed, scales))| {
            for row in 0..AMX_ROWS.min(m - g * AMX_ROWS) {
                let blocks = &lhs[(g * AMX_ROWS + row) * nb..][..nb];
                for (b, block) in blocks.iter().enumerate() {
                    scales[b * AMX_ROWS + row] = f16::to_f32(block.d);
                    for kk in 0..8 {
                        let at = b * tile_bytes + kk * 64 + row * 4;
                        for j in 0..4 {
                            packed[at + j] = block.qs[kk * 4 + j] as u8;
                        }
                    }
                }
            }
        });
    let strips = n / AMX_ROWS;
    let out = SharedOut(dst.as_mut_ptr());
    (0..strips).into_par_iter().for_each_init(
        || AmxTiles::configure(),
        |_, strip| {
            // SAFETY: the tiles are configured on this thread; the strip's columns and every
            // group's tiles are in bounds; this job alone writes the strip's columns.
            unsafe { amx_strip((m, n), nb, strip * AMX_ROWS, (&packed, &scales), rhs_t, out) }
        },
    );
    // Columns past the last whole strip (no model here has any): the register-tile kernel.
    for col in strips * AMX_ROWS..n {
        for row in 0..m {
            let t = q8_0_column::<1, DOT_AVX2>(
                nb,
                rhs_t.as_ptr().add(col * nb),
                lhs.as_ptr().add(row * nb),
                nb,
            );
            dst[row * n + col] = t[0];
        }
    }
}

/// The tile configuration of [`matmul_q8_0_amx`] on one thread: `tmm0` the 16 by 16 integer
/// sums, `tmm1` 16 weight columns' 32 bytes, `tmm2` the activations' 8 rows of 64 bytes.
struct AmxTiles;

impl AmxTiles {
    fn configure() -> Self {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1; // palette 1
        for (tile, (rows, bytes)) in [(16u8, 64u16), (16, 32), (8, 64)].into_iter().enumerate() {
            config.0[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            config.0[48 + tile] = rows;
        }
        // SAFETY: AMX is available (the caller's contract) and the configuration is valid.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
        AmxTiles
    }
}

impl Drop for AmxTiles {
    fn drop(&mut self) {
        // SAFETY: releases this thread's tile state.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One strip of 16 weight columns from `col0` against every group of 16 activation rows.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn amx_strip(
    (m, n): (usize, usize),
    nb: usize,
    col0: usize,
    (packed, scales): (&[u8], &[f32]),
    rhs_t: &[BlockQ8_0],
    out: SharedOut,
) {
    #[repr(C, align(64))]
    struct Sums([i32; AMX_ROWS * AMX_ROWS]);
    let mut sums = Sums([0; AMX_ROWS * AMX_ROWS]);
    let columns = &rhs_t[col0 * nb..(col0 + AMX_ROWS) * nb];
    let column_stride = nb * std::mem::size_of::<BlockQ8_0>();
    for g in 0..m.div_ceil(AMX_ROWS) {
        let mut acc = [_mm512_setzero_ps(); AMX_ROWS];
        for b in 0..nb {
            let a = columns[b].qs.as_ptr();
            let tile_b = packed[(g * nb + b) * 512..][..512].as_ptr();
            std::arch::asm!(
                "tilezero tmm0",
                "tileloadd tmm1, [{a} + {a_stride}*1]",
                "tileloadd tmm2, [{b} + {b_stride}*1]",
                "tdpbssd tmm0, tmm1, tmm2",
                "tilestored [{c} + {c_stride}*1], tmm0",
                a = in(reg) a,
                a_stride = in(reg) column_stride,
                b = in(reg) tile_b,
                b_stride = in(reg) 64usize,
                c = in(reg) sums.0.as_mut_ptr(),
                c_stride = in(reg) 64usize,
                options(nostack),
            );
            let dy = _mm512_loadu_ps(scales[(g * nb + b) * AMX_ROWS..].as_ptr());
            for (i, acc) in acc.iter_mut().enumerate() {
                let dx = f16::to_f32(columns[i * nb + b].d);
                let total = _mm512_cvtepi32_ps(_mm512_load_si512(
                    sums.0[i * AMX_ROWS..].as_ptr() as *const _
                ));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(dx), dy), total, *acc);
            }
        }
        let rows = AMX_ROWS.min(m - g * AMX_ROWS);
        for (i, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; AMX_ROWS];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *acc);
            for (r, value) in lanes.iter().take(rows).enumerate() {
                *out.0.add((g * AMX_ROWS + r) * n + col0 + i) = *value;
            }
        }
    }
}

/// llm-stream: quantizes one row of activations to Q8_0 blocks exactly as
/// `BlockQ8_0::from_float` does, eight lanes at a time. Upstream's loop calls `f32::round` (a
/// library call: x86 has no instruction that rounds halves away from zero) and a NaN-aware `max`
/// per value; a prompt's matmuls spent a sixth of their time here, on one thread. Here the
/// rounding is `trunc(x)` plus one away from zero where `|x - trunc(x)| >= 0.5`: every step is
/// exact, so each quantized byte and scale is upstream's bit for bit (for finite inputs; a NaN
/// activation quantizes to -128 here, to 0 upstream).
///
/// `xs` holds `ys.len()` blocks of 32 values.
#[inline(always)]
pub(crate) fn quantize_row_q8_0(xs: &[f32], ys: &mut [BlockQ8_0]) {
    assert_eq!(xs.len(), ys.len() * QK8_0);
    for (block, y) in xs.chunks_exact(QK8_0).zip(ys.iter_mut()) {
        // SAFETY: `block` holds 32 floats and `y.qs` 32 bytes; AVX2 is a build baseline here.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(block.as_ptr().add(i)));
            let a = v.map(|v| _mm256_andnot_ps(sign, v));
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            let d = amax / ((1 << 7) - 1) as f32;
            let id = if d != 0f32 { 1. / d } else { 0. };
            y.d = f16::from_f32(d);
            let (id, half, one) = (_mm256_set1_ps(id), _mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
            let q = v.map(|v| {
                let x = _mm256_mul_ps(v, id);
                let t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
                let away = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
                let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(x, sign)));
                _mm256_cvtps_epi32(_mm256_add_ps(t, step))
            });
            // The packs saturate as `as i8` does and interleave 128-bit lanes; the permute puts
            // the 32 bytes back in order.
            let bytes = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(y.qs.as_mut_ptr() as *mut __m256i, bytes);
        }
    }
}

/// llm-stream: a weight format's register kernel, the dot products of one weight column with
/// 1 to 4 activation rows ([`q8_0_column`], [`q4_1_column`]), for [`matmul_columns`].
pub(crate) trait ColumnKernel {
    /// A block of weights.
    type Weight;
    /// A block, or a group of blocks, of quantized activations.
    type Activation;

    /// How many [`Self::Activation`]s hold a row of `nb` blocks.
    fn row_units(nb: usize) -> usize;

    /// # Safety
    /// As [`q8_0_column`], with this kernel's blocks.
    unsafe fn column<const R: usize, const DOT: u8>(
        nb: usize,
        x: *const Self::Weight,
        ys: *const Self::Activation,
        ystride: usize,
    ) -> [f32; R];
}

/// Q8_0 weights by Q8_0 activations.
pub(crate) struct Q8_0Column;

impl ColumnKernel for Q8_0Column {
    type Weight = BlockQ8_0;
    type Activation = BlockQ8_0;

    fn row_units(nb: usize) -> usize {
        nb
    }

    #[inline(always)]
    unsafe fn column<const R: usize, const DOT: u8>(
        nb: usize,
        x: *const BlockQ8_0,
        ys: *const BlockQ8_0,
        ystride: usize,
    ) -> [f32; R] {
        q8_0_column::<R, DOT>(nb, x, ys, ystride)
    }
}

/// Q4_1 weights by Q8_1 activations ([`Q8_1x4`]).
pub(crate) struct Q4_1Column;

impl ColumnKernel for Q4_1Column {
    type Weight = BlockQ4_1;
    type Activation = Q8_1x4;

    fn row_units(nb: usize) -> usize {
        nb.div_ceil(4)
    }

    #[inline(always)]
    unsafe fn column<const R: usize, const DOT: u8>(
        nb: usize,
        x: *const BlockQ4_1,
        ys: *const Q8_1x4,
        ystride: usize,
    ) -> [f32; R] {
        q4_1_column::<R, DOT>(nb, x, ys, ystride)
    }
}

/// Multiplies `cols` weight columns (`rhs_t`, `nb` blocks each) with `rows` quantized activation
/// rows (`lhs`, `nb` blocks each), writing `out[col * rows + row]` (column-major, as the caller
/// gathers a tile). One column at a time by up to 4 rows (`K`'s kernel). For Q8_0 these are the
/// floats [`matmul_q8_0_amx`] gives too.
///
/// The byte dot products use VNNI when the CPU has it (detected at run time: the build's baseline,
/// x86-64-v3, does not include it).
pub(crate) fn matmul_columns<K: ColumnKernel>(
    nb: usize,
    shape: (usize, usize),
    lhs: &[K::Activation],
    rhs_t: &[K::Weight],
    out: &mut [f32],
) {
    // AVX-512 first where there is a choice: its encoding reaches 32 vector registers.
    if std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the CPU has AVX512-VNNI and 256-bit AVX-512 instructions.
        unsafe { matmul_columns_avx512_vnni::<K>(nb, shape, lhs, rhs_t, out) }
    } else if std::arch::is_x86_feature_detected!("avxvnni") {
        // SAFETY: the CPU has AVX-VNNI.
        unsafe { matmul_columns_avx_vnni::<K>(nb, shape, lhs, rhs_t, out) }
    } else {
        matmul_columns_with::<K, DOT_AVX2>(nb, shape, lhs, rhs_t, out)
    }
}

#[target_feature(enable = "avxvnni")]
unsafe fn matmul_columns_avx_vnni<K: ColumnKernel>(
    nb: usize,
    shape: (usize, usize),
    lhs: &[K::Activation],
    rhs_t: &[K::Weight],
    out: &mut [f32],
) {
    matmul_columns_with::<K, DOT_AVX_VNNI>(nb, shape, lhs, rhs_t, out)
}

#[target_feature(enable = "avx512vnni,avx512vl")]
unsafe fn matmul_columns_avx512_vnni<K: ColumnKernel>(
    nb: usize,
    shape: (usize, usize),
    lhs: &[K::Activation],
    rhs_t: &[K::Weight],
    out: &mut [f32],
) {
    matmul_columns_with::<K, DOT_AVX512_VNNI>(nb, shape, lhs, rhs_t, out)
}

#[inline(always)]
fn matmul_columns_with<K: ColumnKernel, const DOT: u8>(
    nb: usize,
    (rows, cols): (usize, usize),
    lhs: &[K::Activation],
    rhs_t: &[K::Weight],
    out: &mut [f32],
) {
    let units = K::row_units(nb);
    assert!(lhs.len() >= rows * units && rhs_t.len() >= cols * nb && out.len() >= rows * cols);
    for col in 0..cols {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(4);
            let start = col * rows + r0;
            // SAFETY: the assert above bounds every column and row read.
            unsafe {
                let x = rhs_t.as_ptr().add(col * nb);
                let ys = lhs.as_ptr().add(r0 * units);
                match r {
                    4 => out[start..start + 4]
                        .copy_from_slice(&K::column::<4, DOT>(nb, x, ys, units)),
                    3 => out[start..start + 3]
                        .copy_from_slice(&K::column::<3, DOT>(nb, x, ys, units)),
                    2 => out[start..start + 2]
                        .copy_from_slice(&K::column::<2, DOT>(nb, x, ys, units)),
                    _ => out[start] = K::column::<1, DOT>(nb, x, ys, units)[0],
                }
            }
            r0 += r;
        }
    }
}
