//! Project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: the one local gate: rustfmt check, clippy with warnings denied on every target, the
//!   whole test suite, the docs with warnings denied, then the real-client tests
//!   (`tests/clients/run.py`: the `openai` package, Chromium, nginx, WebSockets) against the
//!   built server. `.ci/run` installs what those need.
//! - `bench [--against URL [--against-label NAME] [--weights TEXT]]`: the benchmarks that write
//!   `docs/benchmarks.md`: the load benchmark against the server on the default model, five
//!   single streams back to back with their spread (beside another OpenAI-compatible server's,
//!   alternating, when `--against` names its base URL), the transport benchmark at 1,000 and
//!   10,000 streams, and the cost of Redis as shared state.
//! - `reliability [SECONDS] [--write-docs]`: the whole reliability suite: the fast tests, the
//!   differential soak, every fuzz target for SECONDS (default 60) each, and the slow checks of
//!   `llm-bench reliability`, which reports them all; `--write-docs` puts the results in
//!   `docs/reliability.md`.
//! - `soak [MINUTES]`: the differential soak of the test suite (a seeded random schedule of
//!   concurrent requests against the real model, every answer compared with the same request
//!   alone) for MINUTES (default 30); `LLM_STREAM_SOAK_SEED` repeats a schedule.
//! - `fuzz [SECONDS]`: runs every `cargo fuzz` target for a bounded time (needs a nightly
//!   toolchain; installs `cargo-fuzz` if missing).

mod tidy;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The fuzz targets under `fuzz/fuzz_targets`.
const FUZZ_TARGETS: &[&str] = &["sse_decoder", "chat_request"];

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fuzz") => fuzz(seconds(args.get(1))?).map(drop),
        Some("bench") => bench(args.get(1..).unwrap_or_default()),
        Some("soak") => soak(minutes(args.get(1))?),
        Some("reliability") => {
            let write_docs = args.iter().any(|arg| arg == "--write-docs");
            let rest: Vec<&String> = args[1..]
                .iter()
                .filter(|arg| *arg != "--write-docs")
                .collect();
            reliability(seconds(rest.first().copied())?, write_docs)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask ci | bench [--against URL [--against-label NAME]] | soak [MINUTES] | reliability [FUZZ_SECONDS] [--write-docs] | fuzz [SECONDS]"
            );
            std::process::exit(2);
        }
    }
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(&["test", "--workspace"], &[])?;
    cargo(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    client_tests()?;
    // The slow reliability checks take seconds: CI runs them too.
    run(Command::new(debug_binary("llm-bench")?).arg("reliability"))?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

fn seconds(arg: Option<&String>) -> Result<u64> {
    count(arg, "seconds", 60)
}

fn minutes(arg: Option<&String>) -> Result<u64> {
    count(arg, "minutes", 30)
}

/// A command's optional number of `unit`, `default` when absent.
fn count(arg: Option<&String>, unit: &str, default: u64) -> Result<u64> {
    match arg {
        Some(text) => text
            .parse()
            .with_context(|| format!("`{text}` is not a number of {unit}")),
        None => Ok(default),
    }
}

/// The differential soak test alone, for `minutes`, its output shown as it runs.
fn soak(minutes: u64) -> Result<()> {
    let seconds = (minutes * 60).to_string();
    cargo(
        &[
            "test",
            // The whole workspace, as `ci` builds it: one package alone unifies dependency
            // features differently and rebuilds mistral.rs.
            "--workspace",
            "--test",
            "http",
            "--",
            "soak::",
            "--nocapture",
        ],
        &[("LLM_STREAM_SOAK_SECS", &seconds)],
    )
}

/// The reliability suite: the fast tests, the differential soak, every fuzz target, then the
/// slow checks of `llm-bench reliability`, which reports them all (and with `write_docs`
/// writes them into `docs/reliability.md`).
fn reliability(fuzz_seconds: u64, write_docs: bool) -> Result<()> {
    cargo(
        &["test", "--workspace", "--test", "http", "--", "reliability"],
        &[],
    )?;
    let reports = target_dir()?.join("bench");
    std::fs::create_dir_all(&reports)?;
    let soak = reports.join("soak.json");
    let soak_report = soak.to_string_lossy();
    cargo(
        &["test", "--workspace", "--test", "http", "--", "soak::"],
        &[("LLM_STREAM_SOAK_REPORT", &soak_report)],
    )?;
    let runs = fuzz(fuzz_seconds)?;
    let fuzz_report = reports.join("fuzz.json");
    std::fs::write(&fuzz_report, serde_json::to_vec_pretty(&runs)?)?;
    cargo(&["build", "--workspace"], &[])?;
    let mut bench = Command::new(debug_binary("llm-bench")?);
    bench
        .arg("reliability")
        .arg("--soak")
        .arg(&soak)
        .arg("--fuzz")
        .arg(&fuzz_report);
    if write_docs {
        bench.arg("--write-docs");
    }
    run(&mut bench)
}

/// Benchmarks that write their tables into docs/benchmarks.md.
/// `bench [--against URL [--against-label NAME]]`: with another OpenAI-compatible server's
/// base URL, single streams are compared with it side by side.
fn bench(options: &[String]) -> Result<()> {
    let mut compare: Vec<String> = Vec::new();
    let mut options = options.iter();
    while let Some(option) = options.next() {
        match option.as_str() {
            "--against" | "--against-label" | "--weights" => {
                let value = options
                    .next()
                    .with_context(|| format!("{option} needs a value"))?;
                compare.extend([option.clone(), value.clone()]);
            }
            other => bail!("unknown bench option `{other}`: use --against URL [--against-label NAME] [--weights TEXT]"),
        }
    }
    cargo(&["build", "--workspace"], &[])?;
    let port = free_port()?;
    let mut server = Command::new(debug_binary("llm-server")?)
        .args(["--port", &port.to_string()])
        .spawn()
        .context("could not start llm-server")?;
    let base = format!("http://127.0.0.1:{port}/v1");
    let result = wait_healthy(port).and_then(|()| {
        run(Command::new(debug_binary("llm-bench")?).args([
            "load",
            "--base",
            &base,
            "--write-docs",
        ]))?;
        // Five single streams back to back (and, given another server, beside its own).
        run(Command::new(debug_binary("llm-bench")?)
            .args(["compare", "--base", &base, "--write-docs"])
            .args(&compare))
    });
    if let Some(pid) = i32::try_from(server.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = server.wait();
    result?;
    run(Command::new(debug_binary("llm-bench")?).args(["transport", "--write-docs"]))?;
    run(Command::new(debug_binary("llm-bench")?).args(["shared-state", "--write-docs"]))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits for the server to answer `/health` with 200 (the model loads in seconds once
/// cached).
fn wait_healthy(port: u16) -> Result<()> {
    use std::io::{Read, Write};
    for _ in 0..600 {
        if let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = socket.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = socket.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("the server did not become healthy in five minutes")
}

/// Builds the server and runs the real-client tests against it.
fn client_tests() -> Result<()> {
    let missing: Vec<&str> = [
        (
            "python3",
            &["-c", "import openai, playwright, websockets"][..],
        ),
        ("chromium", &["--version"][..]),
        ("nginx", &["-v"][..]),
        ("redis-server", &["--version"][..]),
    ]
    .into_iter()
    .filter(|(program, args)| {
        !Command::new(program)
            .args(*args)
            .output()
            .is_ok_and(|output| output.status.success())
    })
    .map(|(program, _)| program)
    .collect();
    if !missing.is_empty() {
        bail!(
            "the real-client tests need {} (`.ci/run` installs them: `pip install -r \
             tests/clients/requirements.txt` in a virtual environment first on PATH, and \
             `apt-get install -y chromium nginx redis-server`)",
            missing.join(", ")
        );
    }
    cargo(&["build", "--workspace"], &[])?;
    let server = debug_binary("llm-server")?;
    run(Command::new("python3")
        .current_dir(workspace_root())
        .arg("tests/clients/run.py")
        .arg("--server-bin")
        .arg(server))
}

/// A binary of the workspace as `cargo build` leaves it.
fn debug_binary(name: &str) -> Result<PathBuf> {
    Ok(target_dir()?.join("debug").join(name))
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR` or the workspace's `target`).
fn target_dir() -> Result<PathBuf> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// Runs every fuzz target for `seconds`; what each did, from libFuzzer's final statistics.
fn fuzz(seconds: u64) -> Result<Vec<serde_json::Value>> {
    let root = workspace_root();
    let have_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !have_fuzz {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let mut runs = Vec::new();
    for target in FUZZ_TARGETS {
        let mut command = Command::new("cargo");
        command
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .args([
                "-rss_limit_mb=1024",
                "-max_len=65536",
                "-print_final_stats=1",
            ]);
        eprintln!("xtask: {command:?}");
        let output = command
            .output()
            .with_context(|| format!("could not start {command:?}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        if !output.status.success() {
            bail!(
                "fuzz target {target} failed with {}: a crash leaves its input in \
                 fuzz/artifacts/{target}/",
                output.status
            );
        }
        runs.push(serde_json::json!({
            "target": target,
            "seconds": seconds,
            "executions": stat("number_of_executed_units")
                .with_context(|| format!("libFuzzer printed no statistics for {target}"))?,
            "crashes": 0,
            "peak_rss_mb": stat("peak_rss_mb"),
        }));
    }
    Ok(runs)
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root()).args(args);
    // `cargo run` gave this program the variables of its own package (CARGO_MANIFEST_DIR
    // pointing at xtask/, CARGO_PKG_NAME, ...). A child cargo passes them on to build
    // scripts, and ring's build script tracks CARGO_MANIFEST_DIR: with it set, everything
    // built on ring (rustls, reqwest, mistral.rs) would be rebuilt each time `cargo xtask ci`
    // follows a plain `cargo test --workspace`, or the other way round, and in every clone at
    // another path.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(key.as_ref());
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    run(&mut command)
}

/// Runs a command to its end, and says how long it took: where the time of a CI run goes.
fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {command:?}");
    let started = std::time::Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    eprintln!("xtask: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn workspace_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process. Prefer it to the compile-time value:
    // checkouts that share one target directory (as CI and `.ci/run` do) can run an xtask binary
    // built from another checkout, whose compile-time path points there.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
