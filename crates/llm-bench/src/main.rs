//! Benchmarks and the slow half of the reliability suite.
//!
//! - `llm-bench load`: N concurrent streaming clients against any OpenAI-compatible URL;
//!   time to first token, inter-token latency, end-to-end latency, aggregate tokens per second.
//! - `llm-bench transport`: thousands of SSE streams from a scripted engine at a fixed token
//!   rate; the latency the transport adds, memory per stream, CPU per million chunks.
//! - `llm-bench reliability`: memory back to its baseline after disconnect storms, and SIGTERM
//!   under load.
//! - `llm-bench compare`: one stream at a time against this server and any other
//!   OpenAI-compatible one, alternating, with the spread (min, median, max) of the runs and
//!   the ratio of the pair.
//! - `llm-bench shared-state`: what keeping the rate limits in a real Redis costs a request,
//!   against the same limits in the process.
//!
//! Results print as tables, go to `target/bench/*.json`, and with `--write-docs` into
//! `docs/benchmarks.md`. `cargo xtask bench` runs them all.

mod child;
mod compare;
mod load;
mod reliability;
mod shared;
mod stats;
mod transport;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks and reliability checks for llm-stream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Concurrent streaming clients against an OpenAI-compatible server.
    Load(load::LoadArgs),
    /// One stream at a time against this server and another, side by side.
    Compare(compare::CompareArgs),
    /// Thousands of streams through the transport with a scripted engine.
    Transport(transport::TransportArgs),
    /// Memory after disconnect storms, and SIGTERM under load.
    Reliability(reliability::ReliabilityArgs),
    /// The cost of rate limits kept in Redis, per request.
    SharedState(shared::SharedStateArgs),
    /// The scripted server the other commands start as a child process.
    #[command(hide = true)]
    ServeScripted(child::ServeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::run(args).await,
        Command::Compare(args) => compare::run(args).await,
        Command::Transport(args) => transport::run(args).await,
        Command::Reliability(args) => reliability::run(args).await,
        Command::SharedState(args) => shared::run(args).await,
        Command::ServeScripted(args) => child::serve(args).await,
    }
}
