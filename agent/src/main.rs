//! `meshtune-agent`: the node agent of meshtune.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtune_agent::{Agent, AgentConfig};
use std::path::PathBuf;

/// The meshtune node agent. Runs on every node (a DaemonSet), receives the
/// latency reports of the meshtune filters in the node's Envoy sidecars,
/// keeps per-chain history, and serves it as JSON (`/v1/chains`) and as
/// Prometheus metrics (`/metrics`).
#[derive(Parser)]
#[command(name = "meshtune-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or Ctrl-C.
    ///
    /// Endpoints: POST /v1/reports (filter reports, bearer token),
    /// GET /v1/chains (per-chain window view), GET /v1/chains/{chain}/history,
    /// GET /metrics (Prometheus), GET /healthz, GET /readyz.
    Run {
        /// YAML configuration: listen address, auth token, data_dir,
        /// retention_days, window_seconds, persist_interval_seconds, chains
        /// with their objectives (`chains:` or DTA-SLO's `slos:`/`services:`).
        #[arg(long, short, env = "MESHTUNE_CONFIG")]
        config: PathBuf,
        /// Override the listen address of the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override the data directory of the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and print what it defines.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the ChainSLO CustomResourceDefinition (committed as
    /// manifests/crd-chainslo.yaml).
    Crd,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHTUNE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let cfg = AgentConfig::load(&config)?;
            println!("{}: ok", config.display());
            for (name, c) in &cfg.chains {
                println!("  chain {name}: p{} ≤ {} ms", c.percentile, c.slo_ms);
            }
            for (name, s) in &cfg.services {
                println!("  service {name}: chains {}", s.chains.join(", "));
            }
            Ok(())
        }
        Command::Crd => {
            print!("{}", meshtune_agent::k8s::chainslo::crd_yaml());
            Ok(())
        }
        Command::Run {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = AgentConfig::load(&config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if cfg.token.is_none() {
                tracing::warn!("no auth token configured: any client can post reports");
            }
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(run(cfg))
        }
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let listen = cfg.listen;
    let data_dir = cfg.data_dir.clone();
    let agent = Agent::open(cfg, meshtune_agent::now_secs())
        .with_context(|| format!("opening the history store in {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(
        "meshtune-agent listening on http://{}",
        listener.local_addr()?
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    agent.serve(listener, rx).await?;
    Ok(())
}
