//! Kernel benchmark: the quantized matrix products of one decoding step of the default model
//! (SmolLM2-135M: 30 layers of attention and MLP projections, then the vocabulary head), alone,
//! one activation row each, with every weight read from memory as the model reads it.
//!
//! ```sh
//! cargo run -p llm-engine --bin kernel-bench [-- --steps N] [--formats Q8_0,Q4_1] [--rows 1,4,32]
//! ```
//!
//! For each weight format, thread count (1, then every core: `RAYON_NUM_THREADS`, which the
//! benchmark sets for a child process of itself) and number of activation rows (1 for one
//! decoding sequence, a few for a batch of them, more for a prompt), it prints the time of one
//! step's products and the rate the weights stream at. Set beside a decoding step of the server (its time per
//! generated token) this says how much of a step the matrix products take, and set beside the
//! machine's memory bandwidth how far the kernels are from it.

#![allow(clippy::print_stdout, missing_docs)] // A benchmark binary reports on stdout.

use std::process::Command;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

/// `(output columns, input width)` of each product of one layer, in the order the model runs
/// them: query, key, value, attention output, gate, up, down.
const LAYER: [(usize, usize); 7] = [
    (576, 576),
    (192, 576),
    (192, 576),
    (576, 576),
    (1536, 576),
    (1536, 576),
    (576, 1536),
];
const LAYERS: usize = 30;
const VOCABULARY: usize = 49152;
const HIDDEN: usize = 576;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            #[allow(clippy::cast_precision_loss)] // 24 random bits, exactly representable
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect()
}

fn parse_format(name: &str) -> GgmlDType {
    match name {
        "Q8_0" => GgmlDType::Q8_0,
        "Q4_0" => GgmlDType::Q4_0,
        "Q4_1" => GgmlDType::Q4_1,
        "Q5_0" => GgmlDType::Q5_0,
        "Q5_1" => GgmlDType::Q5_1,
        "Q4K" | "Q4_K" => GgmlDType::Q4K,
        "Q6K" | "Q6_K" => GgmlDType::Q6K,
        other => panic!("unknown format {other}"),
    }
}

/// Times `steps` decoding steps' products in `format` on this process's rayon pool, for each
/// count of activation rows; prints one table row each.
fn measure(format_name: &str, steps: usize, row_counts: &[usize]) {
    let format = parse_format(format_name);
    let device = Device::Cpu;
    let quantize = |(n, k): (usize, usize), seed: u64| {
        let weights = Tensor::from_vec(values(n * k, seed), (n, k), &device).expect("weights");
        QMatMul::from_qtensor(QTensor::quantize(&weights, format).expect("quantize"))
            .expect("matmul")
    };
    let mut products = Vec::new();
    let mut bytes = 0usize;
    for layer in 0..LAYERS {
        for (i, &shape) in LAYER.iter().enumerate() {
            products.push((shape.1, quantize(shape, (layer * 8 + i) as u64)));
            bytes += shape.0 * shape.1 / format.block_size() * format.type_size();
        }
    }
    products.push((HIDDEN, quantize((VOCABULARY, HIDDEN), 999)));
    bytes += VOCABULARY * HIDDEN / format.block_size() * format.type_size();
    for &rows in row_counts {
        let inputs: Vec<Tensor> = [HIDDEN, 1536]
            .iter()
            .map(|&k| Tensor::from_vec(values(rows * k, k as u64), (rows, k), &device).expect("xs"))
            .collect();
        let step = || {
            for (k, product) in &products {
                let xs = if *k == HIDDEN { &inputs[0] } else { &inputs[1] };
                std::hint::black_box(product.forward(xs).expect("product"));
            }
        };
        // On a worker of the pool, as the engine runs its forward passes: a parallel loop
        // started from outside the pool wakes a worker and puts the caller to sleep, every
        // product.
        let mut times = rayon::scope(|_| {
            for _ in 0..3 {
                step();
            }
            (0..steps)
                .map(|_| {
                    let start = Instant::now();
                    step();
                    start.elapsed().as_secs_f64()
                })
                .collect::<Vec<_>>()
        });
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
        #[allow(clippy::cast_precision_loss)]
        let (rate, megabytes) = (bytes as f64 / median / 1e9, bytes as f64 / 1e6);
        println!(
            "| {format_name} | {threads} | {rows} | {megabytes:.1} MB | {:.2} / {:.2} / {:.2} | {rate:.1} |",
            times[0] * 1e3,
            median * 1e3,
            times[times.len() - 1] * 1e3,
        );
    }
}

const USAGE: &str = "\
usage: kernel-bench [--steps N] [--formats Q8_0,Q4_1] [--rows 1,4,32]

Times one decoding step's quantized matrix products of the default model per weight format,
thread count (1, then every core) and number of activation rows, and prints a table.
--steps: steps timed per row count (default 30). Formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K.
";

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut steps, mut formats, mut rows, mut child) =
        (30usize, "Q8_0,Q4_1".to_string(), "1,4,32".to_string(), None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--steps" => {
                steps = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--steps needs a number");
            }
            "--formats" => formats = args.next().expect("--formats needs a list"),
            "--rows" => rows = args.next().expect("--rows needs a list"),
            "--child" => child = Some(args.next().expect("--child needs a format")),
            "--help" | "-h" => {
                print!("{USAGE}");
                return;
            }
            other => {
                eprint!("kernel-bench: unknown argument `{other}`\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let row_counts: Vec<usize> = rows
        .split(',')
        .map(|count| count.parse().expect("--rows needs numbers"))
        .collect();
    if let Some(format) = child {
        measure(&format, steps, &row_counts);
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("{}", llm_engine::cpu_description());
    println!();
    println!(
        "| weights | threads | rows | weight bytes per step | ms per step min / median / max | weight GB/s |"
    );
    println!("|---|---:|---:|---:|---|---:|");
    let me = std::env::current_exe().expect("own path");
    for format in formats.split(',') {
        for threads in [1, cores] {
            let status = Command::new(&me)
                .args([
                    "--child",
                    format,
                    "--steps",
                    &steps.to_string(),
                    "--rows",
                    &rows,
                ])
                .env("RAYON_NUM_THREADS", threads.to_string())
                .status()
                .expect("run a measurement");
            assert!(status.success(), "the {format} measurement failed");
        }
    }
}
