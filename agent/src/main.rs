//! `meshtune-agent`: the node agent of meshtune.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtune_agent::{Agent, AgentConfig};
use std::path::{Path, PathBuf};

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
        /// Where the objects meshtune wants go: `kubernetes` (server-side
        /// apply, as the Lease holder; needs `kubernetes.enabled`) or
        /// `dir:PATH` (one YAML file per object in PATH, for GitOps or the
        /// lab; only files labelled `app.kubernetes.io/managed-by: meshtune`
        /// are replaced or removed). Recommend mode, the change budget and
        /// rollback (`kubernetes.mode`, `max_changes_per_hour`) are the same
        /// for both. Default: `kubernetes` when it is enabled, else none
        /// (the agent only serves its view and the filters' policy).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkArg>,
        /// The configuration model (`models/config-model.json`; overrides
        /// `config_model.path`): services' connection pools, outlier
        /// detection and route timeouts are chosen by looking ahead with it.
        /// A file that cannot be loaded (missing, corrupt, another format
        /// version) is logged and counted (`meshtune_config_model_load_errors`),
        /// and the agent decides by its rules.
        #[arg(long)]
        config_model: Option<PathBuf>,
    },
    /// Check a configuration file and print what it defines.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Time the GRU forecaster (tract) on many series, one core, side by
    /// side with onnxruntime when Python has it (models/bench_onnxruntime.py).
    ForecastBench {
        /// Windows (series) forecast at each batch size.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Batch sizes to time, comma-separated (each must divide --series);
        /// 10000 is how the agent runs 10,000 chains: all in one batch.
        #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000,10000")]
        batch: Vec<usize>,
        /// The ONNX model [default: models/gru.onnx]; a `gru_torch.onnx` beside
        /// it is timed in onnxruntime too.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Print the ChainSLO CustomResourceDefinition (committed as
    /// manifests/crd-chainslo.yaml).
    Crd,
    /// Print the DestinationRules meshtune would write for a namespace,
    /// read from Istio's standard metrics in an existing Prometheus, before
    /// any meshtune filter is installed (with the reason for every value).
    ///
    /// Reads `istio_requests_total` and
    /// `istio_request_duration_milliseconds_bucket` as the destination
    /// sidecars report them, by `destination_service_name`; the services
    /// and chains (percentiles) come from the configuration. Route
    /// timeouts and retries need each chain's per-hop view, which only
    /// meshtune's filter measures: none are recommended here.
    Recommend {
        #[arg(long, short, env = "MESHTUNE_CONFIG")]
        config: PathBuf,
        /// Prometheus base URL, e.g. http://prometheus.istio-system:9090.
        #[arg(long)]
        prometheus: String,
        /// The namespace whose services to read.
        #[arg(long)]
        namespace: String,
        /// Rate window (a PromQL duration).
        #[arg(long, default_value = "5m")]
        window: String,
        /// Evaluate at this time (Unix seconds) instead of now.
        #[arg(long)]
        at: Option<f64>,
    },
    /// Read a sentence into the objective or bound it means and what it
    /// changes in the configuration; write it only with `--yes`.
    ///
    /// Understood: an objective ("keep checkout p99 under 300 ms"), a
    /// priority ("ratings-api is low priority") and a resources bound
    /// ("give reviews at most 2 CPUs", "... at least 512 MiB"). Names are
    /// the configuration's chains and services; an unknown one is refused
    /// with the nearest. With `--yes` the file is rewritten (the previous
    /// one kept as FILE.bak; comments are not kept) and the agent applies
    /// it at its next start.
    ///
    /// With `--chainslo-namespace NS` an objective or a priority goes into
    /// the chain's ChainSLO object in NS instead (server-side apply, field
    /// manager `meshtune-intent`, only the fields the sentence names; the
    /// cluster from the kubeconfig or in-cluster), and the agents take it
    /// at once; chains declared there are known names too.
    Intent {
        #[arg(long, short, env = "MESHTUNE_CONFIG")]
        config: PathBuf,
        /// Write the change (without it, only print the reading).
        #[arg(long)]
        yes: bool,
        /// Write objectives and priorities into the ChainSLO objects of this namespace.
        #[arg(long, value_name = "NAMESPACE")]
        chainslo_namespace: Option<String>,
        /// The sentence (quoted or as separate words).
        #[arg(required = true)]
        sentence: Vec<String>,
    },
    /// Evaluate the load forecasters on a `timestamp,requests` CSV trace:
    /// every method and the selector forecast it minute by minute, learning
    /// from the first part and scored (MAE in requests/s, sMAPE in %) on
    /// the chronological rest.
    ForecastEval {
        #[arg(long)]
        trace: PathBuf,
        /// Horizons in minutes.
        #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
        horizons: Vec<usize>,
        /// Share of the trace used only for learning.
        #[arg(long, default_value_t = 0.7)]
        train_fraction: f64,
        /// The GRU's ONNX model; default: models/gru.onnx of this repository
        /// when present.
        #[arg(long)]
        model: Option<PathBuf>,
        /// `table` or `json` (one object: {"methods": {name: {horizon: {mae, smape}}}}).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// The configuration model (what a service's chains see for given
    /// observations and knobs): train it from a sweep, or check a file.
    Model {
        #[command(subcommand)]
        action: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Train bagged regression trees (smartcore) on a `meshtune-lab sweep`
    /// CSV (`.gz` read as gzip), evaluate them by grouped cross-validation
    /// (each trace segment × fault kind held out whole) and write the model.
    /// The last line: `model cv_r2 log_p99=X error_share=Y mae_p99_ms=Z groups=N`.
    Train {
        /// The sweep [default: models/config-sweep.csv.gz of this repository].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the model goes.
        #[arg(long, default_value = "config-model.json")]
        out: PathBuf,
        /// Trees per outcome.
        #[arg(long, default_value_t = 30)]
        trees: usize,
        #[arg(long, default_value_t = 12)]
        max_depth: u16,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Train on the first N groups only (a quick check).
        #[arg(long)]
        groups: Option<usize>,
    },
    /// Load a model file the way the agent does at start and say what it is.
    Check {
        #[arg(long)]
        model: PathBuf,
    },
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
        Command::ForecastEval {
            trace,
            horizons,
            train_fraction,
            model,
            format,
        } => {
            anyhow::ensure!(
                !horizons.is_empty() && horizons.iter().all(|h| *h >= 1 && *h <= 1440),
                "--horizons: give minutes between 1 and 1440, e.g. 1,5,10"
            );
            anyhow::ensure!(
                (0.1..=0.95).contains(&train_fraction),
                "--train-fraction: between 0.1 and 0.95"
            );
            anyhow::ensure!(
                format == "table" || format == "json",
                "--format: `table` or `json`"
            );
            let (start, values) = meshtune_agent::forecast::eval::read_trace(&trace)?;
            eprintln!(
                "{}: {} minutes; learning from the first {:.0} %, scoring the rest",
                trace.display(),
                values.len(),
                train_fraction * 100.0
            );
            let model_path = model.or_else(|| {
                let p = meshtune_agent::forecast::gru::default_model_path();
                p.is_file().then_some(p)
            });
            let gru = match &model_path {
                Some(p) => Some(std::sync::Arc::new(
                    meshtune_agent::forecast::gru::GruModel::load(p).map_err(|e| {
                        anyhow::anyhow!("loading the GRU model {}: {e}", p.display())
                    })?,
                )),
                None => None,
            };
            let r = meshtune_agent::forecast::eval::evaluate(
                start,
                &values,
                &horizons,
                train_fraction,
                gru,
            );
            if format == "json" {
                let methods: serde_json::Map<String, serde_json::Value> = r
                    .iter()
                    .map(|(name, by_h)| {
                        let hs: serde_json::Map<String, serde_json::Value> = by_h
                            .iter()
                            .map(|(h, s)| {
                                (
                                    h.to_string(),
                                    serde_json::json!({"mae": s.mae, "smape": s.smape}),
                                )
                            })
                            .collect();
                        (name.clone(), serde_json::Value::Object(hs))
                    })
                    .collect();
                println!("{}", serde_json::json!({"methods": methods}));
            } else {
                print!("{:<16}", "method");
                for h in &horizons {
                    print!(" {:>11} {:>9}", format!("mae@{h}m"), format!("smape@{h}m"));
                }
                println!();
                for (name, by_h) in &r {
                    print!("{name:<16}");
                    for h in &horizons {
                        let s = by_h.get(h).copied().unwrap_or_default();
                        print!(" {:>11.3} {:>8.2}%", s.mae, s.smape);
                    }
                    println!();
                }
                // The daily seasonal naive when the trace has its forecasts;
                // on a trace shorter than that, the hourly one, said so.
                let baseline = ["seasonal_naive", "seasonal_naive_1h"]
                    .into_iter()
                    .find(|n| r.get(*n).is_some_and(|h| h.values().any(|s| s.n > 0)));
                if baseline == Some("seasonal_naive_1h") {
                    println!("(no daily seasonal_naive forecast: the trace is too short for a day's season; comparing with seasonal_naive_1h)");
                }
                if let (Some(sel), Some(name)) = (r.get("selector"), baseline) {
                    let sn = &r[name];
                    for h in &horizons {
                        if let (Some(a), Some(b)) = (sel.get(h), sn.get(h)) {
                            println!("selector vs {name} at {h} min: sMAPE {:.2} % vs {:.2} % ({:+.1} %)", a.smape, b.smape, (a.smape / b.smape - 1.0) * 100.0);
                        }
                    }
                }
            }
            Ok(())
        }
        Command::ForecastBench {
            series,
            batch,
            model,
        } => forecast_bench(series, &batch, model),
        Command::Model { action } => model_command(action),
        Command::Intent {
            config,
            yes,
            chainslo_namespace,
            sentence,
        } => intent_command(
            &config,
            yes,
            chainslo_namespace.as_deref(),
            &sentence.join(" "),
        ),
        Command::Recommend {
            config,
            prometheus,
            namespace,
            window,
            at,
        } => {
            let cfg = AgentConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let r = rt
                .block_on(meshtune_agent::app::recommend::recommend(
                    &cfg,
                    &prometheus,
                    &namespace,
                    &window,
                    at,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            for u in &r.unknown {
                eprintln!("service `{u}` has traffic in {namespace} but is not in the configuration's `services`: nothing recommended for it");
            }
            if r.objects.is_empty() {
                eprintln!("no configured service in {namespace} had traffic in the last {window}");
            }
            for o in &r.objects {
                println!("---");
                for (field, why) in &o.reasons {
                    println!("# {field}: {why}");
                }
                print!("{}", serde_yaml_ng::to_string(&o.object)?);
            }
            Ok(())
        }
        Command::Crd => {
            let crd = meshtune_agent::k8s::chainslo::crd_yaml()
                .context("encoding the ChainSLO CustomResourceDefinition")?;
            print!("{crd}");
            Ok(())
        }
        Command::Run {
            config,
            listen,
            data_dir,
            sink,
            config_model,
        } => {
            let mut cfg = AgentConfig::load(&config)?;
            if let Some(m) = config_model {
                cfg.config_model.path = Some(m);
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if cfg.token.is_none() {
                tracing::warn!("no auth token configured: any client can post reports");
            }
            let bounded: Vec<&str> = cfg
                .services
                .iter()
                .filter(|(_, s)| s.max_cpu.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            if !bounded.is_empty() && cfg.resources.cgroup_dir.is_none() && !cfg.kubernetes.enabled
            {
                // Said once at start so nobody believes them enforced.
                tracing::warn!(
                    "services {bounded:?} give max_cpu but neither `resources.cgroup_dir` nor a \
                     cluster (kubernetes.enabled, metrics-server) is there to measure their CPU \
                     use, so no resources are planned for them"
                );
            }
            let unbounded_memory: Vec<&str> = cfg
                .services
                .iter()
                .filter(|(_, s)| {
                    s.max_cpu.is_none() && (s.min_cpu.or(s.min_memory).or(s.max_memory)).is_some()
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if !unbounded_memory.is_empty() {
                tracing::warn!(
                    "services {unbounded_memory:?}: resources are managed only for services that \
                     give max_cpu; their other bounds are not acted on"
                );
            }
            let sink = match sink {
                Some(SinkArg::Kubernetes) if !cfg.kubernetes.enabled => anyhow::bail!(
                    "--sink kubernetes: set `kubernetes.enabled: true` in {}",
                    config.display()
                ),
                Some(s) => Some(s),
                None if cfg.kubernetes.enabled => Some(SinkArg::Kubernetes),
                None => None,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(run(cfg, sink))
        }
    }
}

/// `meshtune-agent intent`: the reading, the change, and the write on `--yes`.
fn intent_command(
    config: &Path,
    yes: bool,
    chainslo_namespace: Option<&str>,
    sentence: &str,
) -> anyhow::Result<()> {
    use meshtune_agent::k8s::intent as cluster;
    use meshtune_agent::plan::intent::{apply_to_config, parse};
    let file = config.display().to_string();
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {file}"))?;
    let cfg = AgentConfig::parse(&text, &file)?;
    let mut chains: Vec<String> = cfg.chains.keys().cloned().collect();
    let services: Vec<String> = cfg.services.keys().cloned().collect();
    let on_cluster = match chainslo_namespace {
        Some(ns) => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let client = rt
                .block_on(kube::Client::try_default())
                .context("connecting to the cluster (kubeconfig, or in-cluster)")?;
            let objects = rt
                .block_on(cluster::chainslos(&client, ns))
                .with_context(|| format!("listing the ChainSLO objects in {ns}"))?;
            chains.extend(cluster::chain_names(&objects));
            chains.sort();
            chains.dedup();
            Some((rt, client, ns, objects))
        }
        None => None,
    };
    let intent = parse(sentence, &chains, &services).map_err(|e| anyhow::anyhow!(e))?;
    println!("reading: {}", serde_json::to_string(&intent)?);
    if let (Some((rt, client, ns, objects)), Some(_)) = (&on_cluster, intent.chain()) {
        let written = rt
            .block_on(cluster::write(client, ns, objects, &intent, yes))
            .map_err(|e| anyhow::anyhow!(e))?;
        for c in &written.changes {
            println!("change: {c}");
        }
        if written.applied {
            println!(
                "applied (server-side apply, field manager {}); the agents take it at once",
                cluster::FIELD_MANAGER
            );
        } else {
            println!("not applied: run again with --yes to apply it to the ChainSLO");
        }
        return Ok(());
    }
    let (new_text, changes) = apply_to_config(&text, &intent).map_err(|e| anyhow::anyhow!(e))?;
    AgentConfig::parse(&new_text, &file)
        .map_err(|e| anyhow::anyhow!("the change would make the configuration invalid: {e}"))?;
    for c in &changes {
        println!("change: {c}");
    }
    if !yes {
        println!("not applied: run again with --yes to write {file}");
        return Ok(());
    }
    let backup = PathBuf::from(format!("{file}.bak"));
    std::fs::copy(config, &backup).with_context(|| format!("keeping {}", backup.display()))?;
    let tmp = PathBuf::from(format!("{file}.tmp"));
    std::fs::write(&tmp, new_text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, config).with_context(|| format!("replacing {file}"))?;
    println!(
        "written to {file} (the previous file is {}; comments are not kept); the agent applies it at its next start",
        backup.display()
    );
    Ok(())
}

/// The `--sink` argument.
#[derive(Clone, Debug)]
enum SinkArg {
    Kubernetes,
    Dir(PathBuf),
}

fn parse_sink(s: &str) -> Result<SinkArg, String> {
    match s {
        "kubernetes" => Ok(SinkArg::Kubernetes),
        _ => match s.strip_prefix("dir:") {
            Some(p) if !p.is_empty() => Ok(SinkArg::Dir(PathBuf::from(p))),
            _ => Err(format!(
                "`{s}`: give `kubernetes` or `dir:PATH` (e.g. dir:/var/lib/meshtune/desired)"
            )),
        },
    }
}

async fn run(cfg: AgentConfig, sink: Option<SinkArg>) -> anyhow::Result<()> {
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
    let dir_sink = match &sink {
        Some(SinkArg::Dir(p)) => Some(
            meshtune_agent::write::dir::DirSink::new(p)
                .with_context(|| format!("--sink dir:{}: cannot create it", p.display()))?
                .resizing_in_place(agent.config.resources.in_place_resize),
        ),
        _ => None,
    };
    if agent.config.kubernetes.enabled {
        let agent = agent.clone();
        let stop = rx.clone();
        tokio::spawn(async move {
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(
                        "kubernetes integration is on but no cluster is reachable: {e}"
                    );
                    return;
                }
            };
            match dir_sink {
                Some(d) => meshtune_agent::k8s::controller::run(agent, client, d, stop).await,
                None => {
                    let sink = meshtune_agent::write::kube::KubeSink::new(client.clone())
                        .resizing_in_place(agent.config.resources.in_place_resize);
                    meshtune_agent::k8s::controller::run(agent, client, sink, stop).await
                }
            }
        });
    } else if let Some(d) = dir_sink {
        tokio::spawn(meshtune_agent::app::tuner::run_local(
            agent.clone(),
            d,
            rx.clone(),
        ));
    }
    meshtune_agent::app::serve(agent, listener, rx).await?;
    Ok(())
}

/// Times onnxruntime (through `models/bench_onnxruntime.py`, one thread)
/// on `model`; `None` (and a line saying why) when it cannot.
fn onnxruntime_seconds(model: &Path, series: usize, batch: usize) -> Option<f64> {
    let script = meshtune_agent::forecast::gru::repo_dir().join("models/bench_onnxruntime.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--model", &model.display().to_string()])
        .args([
            "--series",
            &series.to_string(),
            "--batch",
            &batch.to_string(),
        ])
        .args(["--repeat", "3"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let s = text
                .lines()
                .find_map(|l| l.strip_prefix("seconds=")?.trim().parse::<f64>().ok());
            if s.is_none() {
                println!("onnxruntime: no timing in {text:?}");
            }
            s
        }
        Ok(o) => {
            println!(
                "onnxruntime: not measured ({}); install it with `python3 -m pip install -r models/requirements.txt`",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            println!("onnxruntime: not measured (python3: {e})");
            None
        }
    }
}

/// Forecasting cost per series: tract on `series` windows at each batch
/// size, then onnxruntime on the same file and batches, and on the torch
/// export beside it (ONNX GRU node, onnxruntime's fused kernel), in one run.
fn forecast_bench(series: usize, batches: &[usize], model: Option<PathBuf>) -> anyhow::Result<()> {
    use meshtune_agent::forecast::gru::{default_model_path, GruModel, FEATURES, INPUT_MINUTES};
    anyhow::ensure!(
        series > 0
            && !batches.is_empty()
            && batches.iter().all(|b| *b > 0 && series.is_multiple_of(*b)),
        "--series must be a positive multiple of every --batch size"
    );
    let path = model.unwrap_or_else(default_model_path);
    let m =
        GruModel::load(&path).map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
    let mut models = vec![path.clone()];
    let torch_form = path.with_file_name("gru_torch.onnx");
    if torch_form.is_file() && torch_form != path {
        models.push(torch_form);
    }
    println!("{series} series of {INPUT_MINUTES} minutes; one core; best of three runs each; µs per series");
    println!(
        "{:>6} {:>10} {:>20} {:>26}   tract's plan (faster of two, chosen per batch)",
        "batch", "tract", "onnxruntime (same)", "onnxruntime (torch form)"
    );
    let mut best_tract = (f64::MAX, 0);
    let mut best_ort = (f64::MAX, 0);
    // The largest tract/onnxruntime ratio at one batch size, either file.
    let mut worst_same_batch = (0.0f64, 0);
    for &batch in batches {
        // Deterministic inputs: the cost does not depend on the values.
        let mut seed = 1u64;
        let input: Vec<f32> = (0..batch * INPUT_MINUTES * FEATURES)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        // Warm-up, which also makes the plan for this batch size.
        m.run_batch(batch, &input)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tract_s = f64::MAX;
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            for _ in 0..series / batch {
                m.run_batch(batch, &input)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            tract_s = tract_s.min(t0.elapsed().as_secs_f64());
        }
        let per = |s: f64| s * 1e6 / series as f64;
        if tract_s < best_tract.0 {
            best_tract = (tract_s, batch);
        }
        let ort: Vec<Option<f64>> = models
            .iter()
            .map(|p| onnxruntime_seconds(p, series, batch))
            .collect();
        for s in ort.iter().flatten() {
            if *s < best_ort.0 {
                best_ort = (*s, batch);
            }
            if tract_s / s > worst_same_batch.0 {
                worst_same_batch = (tract_s / s, batch);
            }
        }
        let show = |s: Option<&Option<f64>>| {
            s.and_then(|v| v.map(|v| format!("{:.1}", per(v))))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{batch:>6} {:>10.1} {:>20} {:>26}   {}",
            per(tract_s),
            show(ort.first()),
            show(ort.get(1)),
            m.plan_form(batch).map_or("-", |f| f.as_str())
        );
    }
    if best_ort.1 > 0 {
        println!(
            "ratio per_series tract/onnxruntime_best={:.2} (tract at batch {}, onnxruntime at batch {}) same_batch_max={:.2} (batch {}) tract_10k_series_s={:.3}",
            best_tract.0 / best_ort.0,
            best_tract.1,
            best_ort.1,
            worst_same_batch.0,
            worst_same_batch.1,
            best_tract.0 * 10_000.0 / series as f64
        );
    } else {
        println!(
            "tract_10k_series_s={:.3} (batch {})",
            best_tract.0 * 10_000.0 / series as f64,
            best_tract.1
        );
    }
    Ok(())
}

fn model_command(action: ModelCommand) -> anyhow::Result<()> {
    use meshtune_agent::learn::config_model::{grouped_cv, ConfigModel, Dataset, TrainParams};
    match action {
        ModelCommand::Check { model } => {
            let m = ConfigModel::load(&model)?;
            println!(
                "{}: format {}, {} rows, {} trees per outcome, features {}",
                model.display(),
                m.version,
                m.rows,
                m.params.trees,
                m.features.join(",")
            );
            if let Some(cv) = m.cv {
                println!(
                    "grouped cv: r2 log_p99 {:.3}, error_share {:.3}, goodput {:.3}, mae p99 {:.1} ms over {} groups",
                    cv.r2_log_p99, cv.r2_error_share, cv.r2_goodput, cv.mae_p99_ms, cv.groups
                );
            }
            Ok(())
        }
        ModelCommand::Train {
            data,
            out,
            trees,
            max_depth,
            seed,
            groups,
        } => {
            let data = data.unwrap_or_else(|| {
                meshtune_agent::forecast::gru::repo_dir().join("models/config-sweep.csv.gz")
            });
            let mut ds = Dataset::load(&data)?;
            if let Some(n) = groups {
                let keep: std::collections::BTreeSet<String> = ds
                    .groups
                    .iter()
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .take(n)
                    .collect();
                let rows: Vec<usize> = (0..ds.groups.len())
                    .filter(|&i| keep.contains(&ds.groups[i]))
                    .collect();
                ds = Dataset {
                    features: rows.iter().map(|&i| ds.features[i].clone()).collect(),
                    outcomes: rows.iter().map(|&i| ds.outcomes[i]).collect(),
                    groups: rows.iter().map(|&i| ds.groups[i].clone()).collect(),
                };
            }
            anyhow::ensure!(trees >= 1, "--trees: at least 1");
            let params = TrainParams {
                trees,
                max_depth,
                seed,
                ..TrainParams::default()
            };
            println!("{} rows from {}", ds.features.len(), data.display());
            let cv = grouped_cv(&ds, &params, |i, n, g| {
                eprintln!("cross-validation: holding out group {} of {n} ({g})", i + 1)
            })?;
            let mut model = ConfigModel::train(&ds, &params)?;
            model.cv = Some(cv);
            model.save(&out)?;
            println!(
                "grouped cv over {} groups, {} rows: r2 goodput {:.3}; wrote {}",
                cv.groups,
                cv.rows,
                cv.r2_goodput,
                out.display()
            );
            println!(
                "model cv_r2 log_p99={:.3} error_share={:.3} mae_p99_ms={:.1} groups={}",
                cv.r2_log_p99, cv.r2_error_share, cv.mae_p99_ms, cv.groups
            );
            Ok(())
        }
    }
}
