//! The patched quantized matmul of `vendor/candle-core` against upstream's own dot product.
//!
//! A prompt or a batch (several activation rows) goes through the tiled kernels: register tiles,
//! and VNNI dot products on CPUs that have them. A single row keeps upstream's one-pair-at-a-time
//! dot product. Both must give the same floats, bit for bit, so that batching and prompt length
//! never change an answer: each row of a many-row product is compared with that row multiplied
//! alone.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

/// Deterministic values in -1..1 (a linear congruential generator: no dependency, same on every
/// machine).
fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            #[allow(clippy::cast_precision_loss)]
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect()
}

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

#[test]
fn q8_0_rows_together_equal_rows_alone_bit_for_bit() {
    // 576 is the default model's hidden size (18 blocks); 37 columns leave a partial column
    // tile; 70 rows go past one 64-row tile; 1 to 5 rows cover every register tile height.
    check(GgmlDType::Q8_0, 576, 37, &[2, 3, 4, 5, 70]);
    check(GgmlDType::Q8_0, 1536, 64, &[4, 9]);
}

#[test]
fn other_formats_rows_together_equal_rows_alone_bit_for_bit() {
    for format in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
        check(format, 768, 19, &[3, 66]);
    }
}
