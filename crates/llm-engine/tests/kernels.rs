//! The patched quantized matmul of `vendor/candle-core` against a reference dot product.
//!
//! Q8_0 weights go through the tiled kernels (register tiles, prefetching, VNNI dot products and
//! AMX tiles on CPUs that have them), one activation row or many. Each result must be the float
//! of one fixed arithmetic (exact integer sums per block, then scaled float sums block by block),
//! bit for bit, whichever kernel computes it, so that batching and prompt length never change an
//! answer; and within rounding of upstream's `vec_dot`. Q4_1 weights (the default model's packaged
//! format) go through a register kernel of their own, checked the same way against its own fixed
//! arithmetic. Other formats keep upstream's dot product and tile only the rows: each row of a
//! many-row product must equal that row multiplied alone.

use std::borrow::Cow;

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

mod common;

use common::values;

fn check(format: GgmlDType, k: usize, n: usize, rows: &[usize]) {
    let weights = Tensor::from_vec(values(n * k, 7), (n, k), &Device::Cpu).expect("weights");
    let matmul = QMatMul::from_qtensor(QTensor::quantize(&weights, format).expect("quantize"))
        .expect("matmul");
    for &m in rows {
        let xs = Tensor::from_vec(values(m * k, 11 + m as u64), (m, k), &Device::Cpu).expect("xs");
        let together: Vec<Vec<f32>> = matmul
            .forward(&xs)
            .expect("many rows")
            .to_vec2()
            .expect("floats");
        for (row, got) in together.iter().enumerate() {
            let alone: Vec<Vec<f32>> = matmul
                .forward(&xs.narrow(0, row, 1).expect("row"))
                .expect("one row")
                .to_vec2()
                .expect("floats");
            let differing = got
                .iter()
                .zip(&alone[0])
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differing, 0,
                "{format:?} {m}x{k} by {k}x{n}: row {row} differs from the row alone in {differing} of {n} columns"
            );
        }
    }
}

/// `matmul` of the rows of `values` (`k` each), one vector of floats per row.
fn product(matmul: &QMatMul, values: &[f32], k: usize) -> Vec<Vec<f32>> {
    let rows = values.len() / k;
    let xs = Tensor::from_vec(values.to_vec(), (rows, k), &Device::Cpu).expect("xs");
    matmul
        .forward(&xs)
        .expect("matmul")
        .to_vec2()
        .expect("floats")
}

/// Q8_0 blocks of each row of a `rows` by `k` matrix.
fn q8_0_rows(values: &[f32], k: usize) -> Vec<Vec<BlockQ8_0>> {
    values
        .chunks(k)
        .map(|row| {
            let mut blocks = vec![BlockQ8_0::zeros(); k / 32];
            BlockQ8_0::from_float(row, &mut blocks);
            blocks
        })
        .collect()
}

/// A Q8_0 block's scale and bytes, from its dequantized values: each is a byte times the scale,
/// exactly (at most 8 + 11 significant bits), and `from_float` gives the largest magnitude the
/// byte 127 (the block's largest value times the inverse of its unrounded scale, rounded).
fn q8_0_parts(block: &BlockQ8_0) -> (f32, [i32; 32]) {
    let mut values = [0f32; 32];
    BlockQ8_0::to_float(std::slice::from_ref(block), &mut values);
    let scale = values.iter().fold(0f32, |max, v| max.max(v.abs())) / 127.0;
    let bytes = values.map(|v| if scale == 0.0 { 0.0 } else { v / scale });
    assert!(
        bytes.iter().all(|b| b.fract() == 0.0 && b.abs() <= 127.0),
        "{bytes:?}"
    );
    #[allow(clippy::cast_possible_truncation)] // whole numbers in -127..=127
    (scale, bytes.map(|b| b as i32))
}

/// The dot product every Q8_0 kernel of `vendor/candle-core` computes: for each block in order,
/// the exact integer sum of its 32 byte products, times the product of the scales, added to the
/// float sum in one fused multiply-add.
fn q8_0_dot(column: &[BlockQ8_0], row: &[BlockQ8_0]) -> f32 {
    column.iter().zip(row).fold(0f32, |acc, (x, y)| {
        let ((dx, qx), (dy, qy)) = (q8_0_parts(x), q8_0_parts(y));
        let sum: i32 = qx.iter().zip(&qy).map(|(a, b)| a * b).sum();
        #[allow(clippy::cast_precision_loss)] // at most 32 * 128 * 128, exact in an f32
        (dx * dy).mul_add(sum as f32, acc)
    })
}

/// Multiplies Q8_0 weights with `m` rows of `activations(m)` for each of `rows` and checks every
/// result against [`q8_0_dot`] of the weight column and the row quantized by upstream's
/// `from_float`, bit for bit, and against upstream's own `vec_dot` (which sums in another order)
/// within rounding.
fn check_q8_0(k: usize, n: usize, rows: &[usize], activations: impl Fn(usize) -> Vec<f32>) {
    let weight_values = values(n * k, 7);
    let weights = Tensor::from_vec(weight_values.clone(), (n, k), &Device::Cpu).expect("w");
    let matmul =
        QMatMul::from_qtensor(QTensor::quantize(&weights, GgmlDType::Q8_0).expect("quantize"))
            .expect("matmul");
    let columns = q8_0_rows(&weight_values, k);
    for &m in rows {
        let xs_values = activations(m);
        let got = product(&matmul, &xs_values, k);
        for (row, (got, blocks)) in got.iter().zip(q8_0_rows(&xs_values, k)).enumerate() {
            for (col, (&value, column)) in got.iter().zip(&columns).enumerate() {
                let expected = q8_0_dot(column, &blocks);
                assert_eq!(
                    value.to_bits(),
                    expected.to_bits(),
                    "{m}x{k} by {k}x{n}: row {row} column {col}: {value} where {expected} was due"
                );
                let upstream = BlockQ8_0::vec_dot(k, column, &blocks);
                assert!(
                    (value - upstream).abs() <= 1e-4 * upstream.abs().max(1.0),
                    "{m}x{k} by {k}x{n}: row {row} column {col}: {value}, upstream {upstream}"
                );
            }
        }
    }
}

#[test]
fn q8_0_matmul_computes_the_reference_dot_products_bit_for_bit() {
    // 576 is the default model's hidden size (18 blocks) and 1536 its MLP width (48): the
    // register kernel sums blocks four at a time, and 64, 160, 224 and 576 leave 2, 1, 3 and 2
    // blocks after the last four; 1 to 5 rows cover every register tile height; from 8 rows a
    // CPU with AMX takes the tile kernel (16, a partial group of 16, and 70 past one 64-row
    // tile); 64 columns are four whole AMX strips, 37 two and a remainder.
    for k in [64, 160, 224, 576, 1536] {
        for n in [37, 64] {
            check_q8_0(k, n, &[1, 2, 3, 4, 5, 8, 16, 33, 70], |m| {
                values(m * k, 11 + m as u64)
            });
        }
    }
}

#[test]
fn q8_0_activations_round_halves_as_upstream() {
    // Blocks whose largest magnitude is 127 quantize with a scale of exactly 1, so values k + 0.5
    // are ties that must round away from zero; an all-zero block has a zero scale.
    let k = 576;
    let activations = |m: usize| -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let (block, j) = (i / 32, (i % 32) as f32);
                match (block % 4, i % 32) {
                    (0, 0) => 127.0,
                    (0, _) => (j * 8.0) % 253.0 - 126.5,
                    (1, 0) => -127.0,
                    (1, _) => -(j % 7.0) - 0.5,
                    (2, _) => 0.0,
                    _ => j * 1.37 - 20.0,
                }
            })
            .collect()
    };
    check_q8_0(k, 37, &[1, 4, 70], activations);
}

#[test]
fn other_formats_rows_together_equal_rows_alone_bit_for_bit() {
    for format in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
        check(format, 768, 19, &[3, 66]);
    }
}

#[test]
fn quantized_storage_from_owned_bytes_keeps_them() {
    // `QStorage::from_data` with owned bytes (weights built in memory, for example several
    // matrices' bytes appended into one): upstream copied the blocks out of the bytes after
    // freeing them. 40 MB, past the size from which the allocator maps memory of its own and
    // unmaps it when freed, so that the copy reads either an unmapped page or a fresh zeroed one
    // instead of bytes that happen to survive. Any 34 bytes are a Q8_0 block.
    let columns = 65536;
    let len = columns * (576 / 32) * std::mem::size_of::<BlockQ8_0>();
    #[allow(clippy::cast_possible_truncation)] // a byte pattern
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
    let storage = QStorage::from_data(Cow::Owned(bytes.clone()), &Device::Cpu, GgmlDType::Q8_0)
        .expect("storage");
    let rebuilt = QTensor::new(storage, (columns, 576)).expect("tensor");
    let kept = rebuilt.data().expect("bytes");
    let differing = kept.iter().zip(&bytes).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} of {len} bytes changed");
}

/// An IEEE half-precision float's value (finite only: Q4_1 and Q8_1 scales are).
fn f16_value(low: u8, high: u8) -> f32 {
    let bits = u16::from_le_bytes([low, high]);
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let (exponent, mantissa) = (i32::from((bits >> 10) & 0x1f), f32::from(bits & 0x3ff));
    assert!(exponent < 31, "not finite: {bits:#06x}");
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        _ => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(exponent - 15),
    }
}

/// The blocks' bytes of `values` (`rows` by `k`) quantized to `format` by upstream's `from_float`.
fn quantized_bytes(values: &[f32], k: usize, format: GgmlDType) -> Vec<u8> {
    let rows = values.len() / k;
    let tensor = Tensor::from_vec(values.to_vec(), (rows, k), &Device::Cpu).expect("tensor");
    let quantized = QTensor::quantize(&tensor, format).expect("quantize");
    quantized.data().expect("bytes").into_owned()
}

/// The dot product of the Q4_1 kernel of `vendor/candle-core`, from a Q4_1 weight column's bytes
/// (blocks of `d`, `m`, 16 bytes of nibbles) and a Q8_1 row's (`d`, `s`, 32 bytes): block `b` goes
/// to lane `b % 4` of two sums, `dx * dy` times its exact integer sum in a fused multiply-add to
/// the first, the rounded `mx * sy` to the second; then the lanes of the two are added, and
/// `(l0 + l2) + (l1 + l3)`. Also upstream's `vec_dot` order, one float sum of
/// `sumi * dx * dy + mx * sy` per block.
fn q4_1_dots(column: &[u8], row: &[u8]) -> (f32, f32) {
    let (mut acc, mut offsets, mut upstream) = ([0f32; 4], [0f32; 4], 0f32);
    for (b, (x, y)) in column
        .chunks_exact(20)
        .zip(row.chunks_exact(36))
        .enumerate()
    {
        let (dx, mx) = (f16_value(x[0], x[1]), f16_value(x[2], x[3]));
        let (dy, sy) = (f16_value(y[0], y[1]), f16_value(y[2], y[3]));
        let qy = |j: usize| i32::from(y[4 + j] as i8);
        let sum: i32 = (0..16)
            .map(|j| i32::from(x[4 + j] & 15) * qy(j) + i32::from(x[4 + j] >> 4) * qy(j + 16))
            .sum();
        #[allow(clippy::cast_precision_loss)] // at most 32 * 15 * 128, exact in an f32
        let sum = sum as f32;
        acc[b % 4] = (dx * dy).mul_add(sum, acc[b % 4]);
        offsets[b % 4] += mx * sy;
        upstream += sum * dx * dy + mx * sy;
    }
    let lanes: [f32; 4] = std::array::from_fn(|l| acc[l] + offsets[l]);
    ((lanes[0] + lanes[2]) + (lanes[1] + lanes[3]), upstream)
}

#[test]
fn q4_1_matmul_computes_the_reference_dot_products_bit_for_bit() {
    // As for Q8_0: 64, 160, 224 and 576 leave 2, 1, 3 and 2 blocks after the last group of four,
    // and 1 to 5 rows cover every row count of the register kernel.
    for k in [64, 160, 224, 576, 1536] {
        let n = 37;
        let weight_values = values(n * k, 7);
        let weights = Tensor::from_vec(weight_values.clone(), (n, k), &Device::Cpu).expect("w");
        let matmul =
            QMatMul::from_qtensor(QTensor::quantize(&weights, GgmlDType::Q4_1).expect("quantize"))
                .expect("matmul");
        let columns = quantized_bytes(&weight_values, k, GgmlDType::Q4_1);
        let column_bytes = k / 32 * 20;
        for m in [1, 2, 3, 4, 5, 8, 33, 70] {
            let xs_values = values(m * k, 11 + m as u64);
            let got = product(&matmul, &xs_values, k);
            let rows = quantized_bytes(&xs_values, k, GgmlDType::Q8_1);
            let row_bytes = k / 32 * 36;
            for (row, got) in got.iter().enumerate() {
                let row_blocks = &rows[row * row_bytes..(row + 1) * row_bytes];
                for (col, &value) in got.iter().enumerate() {
                    let column = &columns[col * column_bytes..(col + 1) * column_bytes];
                    let (expected, upstream) = q4_1_dots(column, row_blocks);
                    assert_eq!(
                        value.to_bits(),
                        expected.to_bits(),
                        "{m}x{k} by {k}x{n}: row {row} column {col}: {value} where {expected} was due"
                    );
                    assert!(
                        (value - upstream).abs() <= 1e-4 * upstream.abs().max(1.0),
                        "{m}x{k} by {k}x{n}: row {row} column {col}: {value}, upstream {upstream}"
                    );
                }
            }
        }
    }
}
