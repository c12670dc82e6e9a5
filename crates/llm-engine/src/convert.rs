//! Re-quantizing a GGUF file to another weight format.
//!
//! candle's CPU kernels differ a lot in speed between formats (and between prompt processing and
//! generation), so the fastest format for a model is found by measurement
//! (`engine-bench --format`), and a model can be converted once and cached next to the original.
//! Metadata (tokenizer, chat template, architecture) is copied unchanged; each 2-D weight whose
//! rows fit the target's block size is dequantized and quantized again; the rest (norms, and
//! matrices whose rows do not divide into blocks) keep their format.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{Error, Result};

/// The weight formats a GGUF model can be converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightFormat {
    /// 32-bit floats: no quantization.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit blocks of 32 with a scale.
    Q4_0,
    /// 4-bit blocks of 32 with a scale and a minimum.
    Q4_1,
    /// 4-bit k-quants, blocks of 256.
    Q4K,
}

impl WeightFormat {
    /// Every format, in the order benchmarks report them.
    pub const ALL: [Self; 6] = [
        Self::F32,
        Self::F16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q4K,
    ];

    /// The conventional name (`Q8_0`, `F16`, ...), also used in converted file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q4K => "Q4_K",
        }
    }

    /// Parses a name as [`name`](Self::name) writes it, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|format| format.name().eq_ignore_ascii_case(text))
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q4K => GgmlDType::Q4K,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// Tensors written in the target format.
    pub converted: usize,
    /// Tensors kept as they were (1-D, or rows not divisible into the target's blocks).
    pub kept: usize,
}

/// The path a converted copy of `source` gets: next to it, with the format in the name
/// (`model.Q4_1.gguf` becomes `model.Q4_1.as-Q8_0.gguf`).
pub fn converted_path(source: &Path, format: WeightFormat) -> PathBuf {
    let stem = source.file_stem().map_or_else(
        || "model".into(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    source.with_file_name(format!("{stem}.as-{}.gguf", format.name()))
}

/// Converts `source` to `format` and writes it to `destination` (through a temporary file and
/// an atomic rename). Blocking, and it holds the whole model in memory as F32 one tensor at a
/// time: run it off the async runtime.
///
/// # Errors
/// [`Error::Conversion`] if the source cannot be read as GGUF or the result cannot be written.
pub fn convert_gguf(source: &Path, destination: &Path, format: WeightFormat) -> Result<Conversion> {
    let fail = |what: &str, error: &dyn std::fmt::Display| Error::Conversion {
        path: source.display().to_string(),
        detail: format!("{what}: {error}"),
    };
    let mut reader = BufReader::new(File::open(source).map_err(|e| fail("open", &e))?);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| fail("read GGUF", &e))?;
    let target = format.ggml();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    let mut stats = Conversion {
        converted: 0,
        kept: 0,
    };
    for name in names {
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| fail(name, &e))?;
        let dims = tensor.shape().dims().to_vec();
        let fits = dims.len() == 2 && dims[1] % target.block_size() == 0;
        let tensor = if fits && tensor.dtype() != target {
            let weights = tensor
                .dequantize(&Device::Cpu)
                .map_err(|e| fail(name, &e))?;
            stats.converted += 1;
            QTensor::quantize(&weights, target).map_err(|e| fail(name, &e))?
        } else {
            stats.kept += 1;
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    metadata.sort_by_key(|(key, _)| *key);
    let partial = destination.with_extension("gguf.partial");
    {
        let mut writer =
            BufWriter::new(File::create(&partial).map_err(|e| fail("create output", &e))?);
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        gguf_file::write(&mut writer, &metadata, &refs).map_err(|e| fail("write GGUF", &e))?;
        writer.flush().map_err(|e| fail("write GGUF", &e))?;
    }
    std::fs::rename(&partial, destination).map_err(|e| fail("move output", &e))?;
    Ok(stats)
}
