//! The vendored mistral.rs CPU attention, batched against alone and against a plain reference.
//!
//! A decode step attends one query row per sequence of the batch to that sequence's keys. Each
//! sequence's output must be the same floats as when it runs alone (a batch of one), bit for
//! bit, and within rounding of a plain softmax: upstream's one-token kernel kept its partial
//! results per key tile and head but not per sequence, so every sequence of a batch got the last
//! one's output, and batched requests answered with their neighbours' text.

use candle_core::{Device, Tensor};
use mistralrs::core::{Sdpa, SdpaParams};

mod common;

use common::values;

/// The default model's attention: 9 query heads over 3 key/value heads of 64 dimensions.
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const DIM: usize = 64;

fn params() -> SdpaParams {
    SdpaParams {
        n_kv_groups: HEADS / KV_HEADS,
        softcap: None,
        softmax_scale: 1.0 / (DIM as f32).sqrt(),
        sliding_window: None,
        sinks: None,
    }
}

/// Keys or values of `batch` sequences, `len` positions filled in a cache of `capacity`, laid
/// out as the model's KV cache is: (batch, heads, capacity, dim), narrowed to the filled part.
fn cache(batch: usize, len: usize, capacity: usize, seed: u64) -> Tensor {
    Tensor::from_vec(
        values(batch * KV_HEADS * capacity * DIM, seed),
        (batch, KV_HEADS, capacity, DIM),
        &Device::Cpu,
    )
    .expect("cache")
    .narrow(2, 0, len)
    .expect("filled part")
}

/// softmax(q kᵀ · scale) v for one sequence and query head, in plain f32.
fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let scores: Vec<f32> = k
        .iter()
        .map(|key| q.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    (0..DIM)
        .map(|d| {
            weights
                .iter()
                .zip(v)
                .map(|(w, row)| w * row[d])
                .sum::<f32>()
                / total
        })
        .collect()
}

fn check_decode(batch: usize, len: usize) {
    let capacity = len.div_ceil(128) * 128;
    let q = Tensor::from_vec(
        values(batch * HEADS * DIM, 3 + len as u64),
        (batch, HEADS, 1, DIM),
        &Device::Cpu,
    )
    .expect("q");
    let k = cache(batch, len, capacity, 5 + batch as u64);
    let v = cache(batch, len, capacity, 7 + batch as u64);
    let params = params();
    let together = Sdpa
        .run_attention(&q, &k, &v, None, None, &params)
        .expect("batched attention");
    assert_eq!(together.dims(), &[batch, HEADS, 1, DIM]);
    let together: Vec<Vec<Vec<f32>>> = together
        .squeeze(2)
        .expect("one query row")
        .to_vec3()
        .expect("floats");
    for (b, together) in together.iter().enumerate() {
        let one = |t: &Tensor| t.narrow(0, b, 1).expect("one sequence");
        let alone: Vec<Vec<Vec<f32>>> = Sdpa
            .run_attention(&one(&q), &one(&k), &one(&v), None, None, &params)
            .expect("attention alone")
            .squeeze(2)
            .expect("one query row")
            .to_vec3()
            .expect("floats");
        let keys: Vec<Vec<Vec<f32>>> = one(&k).squeeze(0).expect("k").to_vec3().expect("k");
        let vals: Vec<Vec<Vec<f32>>> = one(&v).squeeze(0).expect("v").to_vec3().expect("v");
        let queries: Vec<Vec<Vec<f32>>> = one(&q).squeeze(0).expect("q").to_vec3().expect("q");
        for h in 0..HEADS {
            let got = &together[h];
            let bits = |row: &[f32]| row.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(got),
                bits(&alone[0][h]),
                "batch of {batch}, {len} keys: sequence {b} head {h} differs from it alone"
            );
            let kv = h / (HEADS / KV_HEADS);
            let want = reference(&queries[h][0], &keys[kv], &vals[kv], params.softmax_scale);
            for (d, (got, want)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-5 + 1e-4 * want.abs(),
                    "batch of {batch}, {len} keys: sequence {b} head {h} dim {d}: {got} against \
                     the plain softmax's {want}"
                );
            }
        }
    }
}

#[test]
fn each_sequence_of_a_decode_batch_gets_the_attention_it_gets_alone() {
    // Across the 16-key tiles of the kernel (fewer keys than a tile, exactly one, one more) and
    // long caches of many tiles.
    for batch in [1, 2, 3, 8] {
        for len in [1, 15, 16, 17, 100, 300] {
            check_decode(batch, len);
        }
    }
}
