//! `llm-server`: serves a chat model over an OpenAI-compatible HTTP API.
//!
//! This file parses arguments and hands over to [`app::run`]; nothing more.

mod app;
mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    cli::init_logging(args.log_format);
    if let Some(threads) = args.threads {
        // Before any thread exists: every compute pool (rayon's, the attention kernels', the
        // matrix products' split) reads it when it starts.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One clear sentence (with its causes), not a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
