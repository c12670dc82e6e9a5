//! A scripted server in a child process, so that its memory and CPU time are its own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use llm_transport::{Script, ScriptedEngine, Server, TransportConfig};

/// `llm-bench serve-scripted`: what the child runs.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Tokens per generation, each stamped with its emission time.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Milliseconds between tokens.
    #[arg(long, default_value_t = 50.0)]
    interval_ms: f64,
    /// Seconds streams get to finish after SIGTERM.
    #[arg(long, default_value_t = 5.0)]
    grace_secs: f64,
    /// Generations at once before requests are refused with 429; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    capacity: usize,
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = TransportConfig::default();
    config.max_connections = 1 << 20;
    let server = Server::new(config);
    let script =
        Script::stamped(args.tokens).interval(Duration::from_secs_f64(args.interval_ms / 1e3));
    let engine = ScriptedEngine::new(script);
    server.set_engine(match args.capacity {
        0 => engine,
        capacity => engine.capacity(capacity),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // The parent reads the address from the first line of stdout.
    #[allow(clippy::print_stdout)] // The protocol between parent and child.
    {
        println!("{}", listener.local_addr()?);
    }
    server
        .serve(
            listener,
            llm_transport::shutdown_signal(),
            Duration::from_secs_f64(args.grace_secs),
        )
        .await?;
    Ok(())
}

/// A running child server.
pub(crate) struct ChildServer {
    child: Child,
    pub(crate) address: SocketAddr,
}

impl ChildServer {
    pub(crate) fn start(tokens: usize, interval_ms: f64, grace_secs: f64) -> anyhow::Result<Self> {
        Self::with_capacity(tokens, interval_ms, grace_secs, 0)
    }

    /// A child whose engine refuses requests past `capacity` at once (0: no limit).
    pub(crate) fn with_capacity(
        tokens: usize,
        interval_ms: f64,
        grace_secs: f64,
        capacity: usize,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve-scripted", "--tokens", &tokens.to_string()])
            .args(["--interval-ms", &interval_ms.to_string()])
            .args(["--grace-secs", &grace_secs.to_string()])
            .args(["--capacity", &capacity.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start the scripted server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .parse()
            .with_context(|| format!("the child printed {line:?}, not its address"))?;
        Ok(Self { child, address })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub(crate) fn terminate(mut self, within: Duration) -> anyhow::Result<i32> {
        terminate(self.child.id())?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() > deadline {
                self.child.kill()?;
                bail!("the server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to a process.
pub(crate) fn terminate(pid: u32) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| anyhow::anyhow!("{pid} is not a process id"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .map_err(|error| anyhow::anyhow!("SIGTERM to {pid:?} failed: {error}"))
}
