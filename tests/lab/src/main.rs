//! `meshtune-lab`: run a local mesh of real Envoy sidecars with the meshtune
//! filter and agent (`up`), or benchmark the filter (`bench filter`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtune_lab::mesh::{chain, Mesh, MeshOptions, CHAINS};
use meshtune_lab::{bench, lifecycle, load, prometheus, trace};
use std::path::PathBuf;
use std::time::Duration;

/// Local meshes of real Envoy 1.40 sidecars running the meshtune filter.
#[derive(Parser)]
#[command(name = "meshtune-lab", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the Bookinfo-shaped mesh (productpage → details, reviews →
    /// ratings; productpage → ratings), the agent and, when installed, a
    /// Prometheus server; drive load from a real trace and show the live
    /// per-chain view.
    Up {
        /// How long to run, in seconds (0: until Ctrl-C).
        #[arg(long, default_value_t = 120)]
        duration: u64,
        /// `timestamp,requests` CSV; default: the WorldCup98 trace in ../shared/data/traces.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Trace minute to start from (default: a match day of WorldCup98).
        #[arg(long, default_value_t = 80_000)]
        offset: usize,
        /// Requests per second at the trace's busiest minute in the window.
        #[arg(long, default_value_t = 60.0)]
        peak_rps: f64,
        /// Real seconds per trace minute.
        #[arg(long, default_value_t = 1.0)]
        seconds_per_minute: f64,
        /// A directory of your own DestinationRules and VirtualServices
        /// (YAML, several objects per file separated by `---`), applied to
        /// the sidecars as they change, as `kubectl apply` would; the agent
        /// sees them as it would see a cluster's (a host your object covers
        /// is left to it).
        #[arg(long)]
        istio_config: Option<PathBuf>,
        /// Keep the agent from writing configuration (recommend mode): the
        /// sidecars run Istio's defaults and your objects only.
        #[arg(long)]
        no_tune: bool,
        /// A fault schedule (YAML): replicas erring, slow or down, load
        /// surges, the agent killed; times in seconds from the start.
        /// Shipped scenarios are in tests/lab/scenarios (a bare name such
        /// as `reviews-v2-errors` finds one there).
        #[arg(long)]
        faults: Option<PathBuf>,
    },
    /// Does the tuning help? Runs the same trace and fault schedule once per
    /// arm, each from a clean start, and judges each the way users do, from
    /// the load generator's own records: per trace minute and chain, a
    /// window violates when the chain's p99 exceeds its objective or more
    /// than 1 % of its requests failed (windows under 100 requests are
    /// merged with the next). Prints a table per run and a last line
    /// starting `outcome`; writes windows.csv and eval.svg to --out.
    ///
    /// Arms: static (Istio's defaults, no meshtune filter), native (plus
    /// Envoy's adaptive concurrency filter on every inbound sidecar),
    /// meshtune (the filter's control and the agent writing
    /// DestinationRules and VirtualServices), meshtune-dataplane (the
    /// filter's control, the agent only recommending), meshtune-model (as
    /// meshtune, the agent choosing pools, outlier detection and route
    /// timeouts with models/config-model.json). Resource arms (run
    /// after an unlimited calibration run; each replica under a CPU quota,
    /// everything else as meshtune; a last line starting `resources`):
    /// static-resources (--static-headroom × the calibration's peak per
    /// replica, 2 by default),
    /// vpa-like (p90 of usage + 15 %, recomputed every trace minute),
    /// meshtune-resources (the agent sizing each service's Deployment).
    Eval {
        /// A shipped scenario (name in tests/lab/scenarios) or a scenario
        /// file: trace, offset, minutes, peak_rps, seconds_per_minute,
        /// faults, chains (slo_ms, priority) and capacity (a service's
        /// workers, queue, work_ms); options given here override the file's.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// `timestamp,requests` CSV [default: WorldCup98 in ../shared/data/traces].
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Trace minute to start from [default: 80000, a match day].
        #[arg(long)]
        offset: Option<usize>,
        /// Trace minutes to run [default: 10].
        #[arg(long)]
        minutes: Option<usize>,
        /// A fault schedule (file or shipped name); replaces the scenario's faults.
        #[arg(long)]
        faults: Option<PathBuf>,
        /// Arms to run, comma-separated [default: static, native, meshtune,
        /// meshtune-dataplane].
        #[arg(long, value_delimiter = ',')]
        arms: Vec<String>,
        /// Run every arm this many times (the outcome gives min–max).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Real seconds per trace minute [default: 6].
        #[arg(long)]
        seconds_per_minute: Option<f64>,
        /// Requests per second at the busiest trace minute run [default: 60].
        #[arg(long)]
        peak_rps: Option<f64>,
        /// Where windows.csv and eval.svg go.
        #[arg(long, default_value = "eval-out")]
        out: PathBuf,
        /// Also poll each sidecar's inbound concurrency limit once a second
        /// into limits-ARM-RUN.csv (arms with meshtune's filter). Off by
        /// default: the polls cost the sidecars CPU the eval measures.
        #[arg(long)]
        record_limits: bool,
        /// static-resources gives each replica this many times the most CPU
        /// it used in any second of the calibration run: 2, the usual
        /// headroom of a Deployment's declared resources; lower to see what
        /// a tighter fixed sizing does to the chains.
        #[arg(long, default_value_t = meshtune_lab::eval::resources::STATIC_HEADROOM)]
        static_headroom: f64,
        /// Send each trace minute's requests as a Poisson process (seeded
        /// per run, the same in every arm of a run: many independent users,
        /// bursts included) instead of evenly spaced.
        #[arg(long)]
        poisson_arrivals: bool,
    },
    /// Data for the configuration model: a seeded Latin hypercube over the
    /// load (level, trace segment), a fault on reviews-2 (none, errors,
    /// slow, down) and reviews' DestinationRule and VirtualService knobs
    /// (pool, retries budget, outlier detection, timeout, retries, per-try
    /// timeout). Each point runs the lab (no meshtune filter) for
    /// --minutes trace minutes; each minute is one CSV row of what the
    /// agent observes, the knobs and the outcome (the header documents every
    /// column). Rows are appended per point: run it again to resume.
    Sweep {
        /// Design points.
        #[arg(long, default_value_t = 48)]
        points: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Trace minutes per point (rows per point).
        #[arg(long, default_value_t = 4)]
        minutes: usize,
        /// Real seconds per trace minute.
        #[arg(long, default_value_t = 4.0)]
        seconds_per_minute: f64,
        /// Trace segments to draw from (start minutes of WorldCup98).
        #[arg(long, value_delimiter = ',', default_values_t = [80_000, 80_300, 80_600, 80_900])]
        segments: Vec<usize>,
        /// The CSV to write or resume.
        #[arg(long, default_value = "sweep.csv")]
        out: PathBuf,
    },
    /// One replica of a lab service (started by the lab itself).
    #[command(hide = true)]
    Replica {
        /// The service, as JSON.
        #[arg(long)]
        spec: String,
        #[arg(long)]
        app_port: u16,
        #[arg(long)]
        outbound_port: Option<u16>,
    },
    /// The lab's agent as its own process (started by the lab itself).
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        sink_dir: Option<PathBuf>,
        #[arg(long)]
        also_read: Option<PathBuf>,
        /// Run the agent's clock on trace time: one trace minute per this
        /// many wall seconds, from `--trace-origin-ms`.
        #[arg(long, requires = "trace_origin_ms")]
        seconds_per_minute: Option<f64>,
        #[arg(long)]
        trace_origin_ms: Option<u64>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Envoy without wasm vs a no-op wasm filter vs meshtune, alternating on
    /// the same upstream: requests/s and proxy CPU µs per request.
    Filter {
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Comma-separated variants to run (default: all): none, noop,
        /// meshtune, mt-1plugin, mt-control, native-ac, noop+8, noop+read.
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        /// Also count the instructions each proxy executes per request, by
        /// running Envoy under valgrind's callgrind (Debian package
        /// `valgrind`): exact and repeatable where CPU time on a shared
        /// machine is not. Slow: use e.g. `--rounds 1 --requests 3000`.
        #[arg(long)]
        instructions: bool,
    },
    /// How well the CPU allocation's latency model predicts a real
    /// service under a real CPU limit: one CPU-bound replica under a cgroup
    /// quota, swept over cores × utilisation with open-loop load; the model
    /// is fitted from CPU per request and median latency, judged on p99.
    /// Needs root and a writable cpu controller.
    CpuModel {
        /// CPU per request of the swept service, µs.
        #[arg(long, default_value_t = 2000)]
        cpu_us: u64,
        /// CPU limits to try, cores (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5, 1.0])]
        quotas: Vec<f64>,
        /// Offered load as shares of what each limit serves (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [0.2, 0.45, 0.7])]
        utilisations: Vec<f64>,
        /// Measured seconds per point (after one second of warm-up).
        #[arg(long, default_value_t = 6.0)]
        seconds: f64,
    },
    /// The overload scenario (a shared service with a fixed worker pool,
    /// open-loop load above its capacity on a high- and a low-priority
    /// chain) without control, with Envoy's native adaptive concurrency and
    /// with meshtune: goodput and per-chain p99.
    Overload {
        /// Measured seconds per run (after a warm-up).
        #[arg(long, default_value_t = 12.0)]
        seconds: f64,
        /// Run only this variant (none, native or meshtune); the ratios need all three.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHTUNE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    // Whatever ends the lab ends its Envoys and Prometheus too.
    lifecycle::end_children_on_panic();
    rt.spawn(lifecycle::follow_signals());
    let result = run(&rt, cli.command);
    lifecycle::end_children();
    result
}

fn run(rt: &tokio::runtime::Runtime, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Replica {
            spec,
            app_port,
            outbound_port,
        } => rt.block_on(meshtune_lab::replicas::run(spec, app_port, outbound_port)),
        Command::Eval {
            scenario,
            trace,
            offset,
            minutes,
            faults,
            arms,
            repeat,
            seconds_per_minute,
            peak_rps,
            out,
            record_limits,
            static_headroom,
            poisson_arrivals,
        } => {
            let o = eval_options(EvalArgs {
                scenario,
                trace,
                offset,
                minutes,
                faults,
                arms,
                repeat,
                seconds_per_minute,
                peak_rps,
                out,
                record_limits,
                static_headroom,
                poisson_arrivals,
            })?;
            println!("{}", meshtune_lab::eval::settings_line(&o));
            let runs = rt.block_on(meshtune_lab::eval::eval(&o))?;
            println!("{}", meshtune_lab::eval::outcome_line(&runs, &o.arms));
            if let Some(line) = meshtune_lab::eval::resources_line(&runs, &o.arms) {
                println!("{line}");
            }
            Ok(())
        }
        Command::Sweep {
            points,
            seed,
            minutes,
            seconds_per_minute,
            segments,
            out,
        } => {
            anyhow::ensure!(points >= 2, "--points: at least 2");
            anyhow::ensure!(!segments.is_empty(), "--segments: at least one");
            let o = meshtune_lab::sweep::SweepOptions {
                points,
                seed,
                minutes: minutes.max(1),
                seconds_per_minute,
                trace: trace::traces_dir().join("worldcup98_1min.csv"),
                segments,
                out,
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} points · {elapsed} · eta {eta} · {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let n = rt.block_on(meshtune_lab::sweep::sweep(&o, |i, total, p| {
                bar.set_length(total as u64);
                bar.set_position(i as u64);
                bar.set_message(format!(
                    "point {} · {:.0} req/s · fault {}",
                    p.id,
                    p.peak_rps,
                    p.fault.name()
                ));
            }))?;
            bar.finish_and_clear();
            println!(
                "sweep points_run={n} points={points} rows_per_point={} out={}",
                o.minutes,
                o.out.display()
            );
            Ok(())
        }
        Command::Agent {
            config,
            sink_dir,
            also_read,
            seconds_per_minute,
            trace_origin_ms,
        } => {
            let trace_time = seconds_per_minute.zip(trace_origin_ms).map(|(s, o)| {
                meshtune_lab::replicas::TraceTime {
                    origin_ms: o,
                    seconds_per_minute: s,
                }
            });
            rt.block_on(meshtune_lab::replicas::run_agent(
                config, sink_dir, also_read, trace_time,
            ))
        }
        Command::Bench {
            which:
                BenchCommand::Filter {
                    rounds,
                    requests,
                    concurrency,
                    variants,
                    instructions,
                },
        } => rt
            .block_on(bench::filter(bench::BenchOptions {
                rounds,
                requests,
                concurrency,
                variants,
                instructions,
            }))
            .map(|_| ()),
        Command::Bench {
            which: BenchCommand::Overload { seconds, only },
        } => rt.block_on(bench_overload(seconds, only)),
        Command::Bench {
            which:
                BenchCommand::CpuModel {
                    cpu_us,
                    quotas,
                    utilisations,
                    seconds,
                },
        } => {
            use meshtune_lab::cpu_model;
            let o = cpu_model::SweepOptions {
                cpu_us,
                quotas,
                utilisations,
                seconds,
            };
            let points = rt.block_on(cpu_model::sweep(&o, |p| eprintln!("{p}")))?;
            print!("{}", cpu_model::report(&points, &cpu_model::fit(&points)));
            Ok(())
        }
        Command::Up {
            duration,
            trace,
            offset,
            peak_rps,
            seconds_per_minute,
            istio_config,
            no_tune,
            faults,
        } => rt.block_on(up(UpOptions {
            duration,
            trace_path: trace,
            offset,
            peak: peak_rps,
            spm: seconds_per_minute,
            istio_config,
            tune: !no_tune,
            faults,
        })),
    }
}

fn fmt_ms(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

/// The tuning the agent currently sends the filters.
fn print_policy(agent_port: u16) {
    let auth = format!("Bearer {}", meshtune_lab::mesh::TOKEN);
    let Some((200, body)) = meshtune_lab::http::request_blocking(
        agent_port,
        "GET",
        "/v1/policy",
        &[("authorization", &auth)],
        b"",
    ) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return;
    };
    let p = &v["policy"];
    let mut line = format!("policy v{}:", p["version"]);
    for (chain, c) in p["chains"].as_object().into_iter().flatten() {
        let caps: Vec<String> = c["hop_budget_ms"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(svc, ms)| format!("{svc} ≤ {ms} ms"))
            .collect();
        line.push_str(&format!(
            " {chain}: budget {} ms, {} priority, timeouts {};",
            c["budget_ms"],
            c["priority"].as_str().unwrap_or("normal"),
            if caps.is_empty() {
                "-".into()
            } else {
                caps.join(", ")
            }
        ));
    }
    println!("{line}");
}

/// What the sidecars run for each service they call, and since when.
fn print_in_force(mesh: &Mesh) {
    println!(
        "in force (Istio's defaults until a DestinationRule or VirtualService says otherwise):"
    );
    for (svc, (line, since)) in mesh.control_plane.in_force() {
        println!("  {svc:<12} {line} (since {} s)", since.elapsed().as_secs());
    }
}

/// Outlier ejections so far, per calling sidecar and upstream cluster
/// (Envoy's `outlier_detection.ejections_enforced_total`), when any.
fn print_ejections(mesh: &Mesh) {
    let mut parts = Vec::new();
    for (name, e) in &mesh.envoys {
        for (cluster, n) in meshtune_lab::envoy::ejections(e.admin_port) {
            if n > 0 {
                parts.push(format!("{name} → {cluster}: {n}"));
            }
        }
    }
    if !parts.is_empty() {
        println!("ejections: {}", parts.join(", "));
    }
}

fn print_view(chains: &serde_json::Value, elapsed: u64, rate: f64) {
    println!("\n[{elapsed:>4} s] offered load {rate:.0} req/s");
    println!(
        "{:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "chain", "rps", "p50 ms", "p95 ms", "p99 ms", "slo ms", "in slo", "requests"
    );
    for (name, _, _) in CHAINS {
        let Some(c) = chain(chains, name) else {
            continue;
        };
        println!(
            "{:<14} {:>7.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            name,
            c["rps"].as_f64().unwrap_or(0.0),
            fmt_ms(&c["p50_ms"]),
            fmt_ms(&c["p95_ms"]),
            fmt_ms(&c["p99_ms"]),
            fmt_ms(&c["slo_ms"]),
            c["slo_attainment"]
                .as_f64()
                .map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
            c["requests"]
        );
        for h in c["hops"].as_array().into_iter().flatten() {
            println!(
                "  └ {:<10} {:>7.1} {:>8} {:>8} {:>8}",
                h["service"].as_str().unwrap_or("?"),
                h["rps"].as_f64().unwrap_or(0.0),
                fmt_ms(&h["p50_ms"]),
                fmt_ms(&h["p95_ms"]),
                fmt_ms(&h["p99_ms"])
            );
        }
    }
}

struct UpOptions {
    duration: u64,
    trace_path: Option<PathBuf>,
    offset: usize,
    peak: f64,
    spm: f64,
    istio_config: Option<PathBuf>,
    tune: bool,
    faults: Option<PathBuf>,
}

struct EvalArgs {
    scenario: Option<PathBuf>,
    trace: Option<PathBuf>,
    offset: Option<usize>,
    minutes: Option<usize>,
    faults: Option<PathBuf>,
    arms: Vec<String>,
    repeat: usize,
    seconds_per_minute: Option<f64>,
    peak_rps: Option<f64>,
    out: PathBuf,
    record_limits: bool,
    static_headroom: f64,
    poisson_arrivals: bool,
}

/// The replicas `eval` and `up` run, for checking fault files.
fn replica_names() -> Vec<String> {
    meshtune_lab::replicas::replica_names(&meshtune_lab::services::bookinfo_with_versions())
}

/// A schedule file (path or shipped name) and the name it goes by.
fn named_schedule(
    p: PathBuf,
    names: &[String],
) -> anyhow::Result<(String, meshtune_lab::faults::Schedule)> {
    let path = scenario_path(p);
    let s = meshtune_lab::faults::Schedule::load(&path, names)?;
    let name = path
        .file_stem()
        .map_or("scenario".into(), |n| n.to_string_lossy().into_owned());
    Ok((name, s))
}

/// The eval's settings: the command line over the scenario file over the defaults.
fn eval_options(a: EvalArgs) -> anyhow::Result<meshtune_lab::eval::EvalOptions> {
    use meshtune_lab::eval::{Arm, EvalOptions, ARMS};
    let names = replica_names();
    let scenario = a
        .scenario
        .clone()
        .map(|p| named_schedule(p, &names))
        .transpose()?;
    let run = scenario
        .as_ref()
        .map(|(_, s)| s.run.clone())
        .unwrap_or_default();
    let faults = match a.faults {
        Some(f) => Some(named_schedule(f, &names)?),
        None => scenario.filter(|(_, s)| !s.faults.is_empty()),
    };
    let trace = a
        .trace
        .or_else(|| {
            run.trace.map(|t| {
                let p = PathBuf::from(&t);
                if p.is_absolute() {
                    p
                } else {
                    trace::traces_dir().join(p)
                }
            })
        })
        .unwrap_or_else(|| trace::traces_dir().join("worldcup98_1min.csv"));
    let arms = if a.arms.is_empty() {
        ARMS.to_vec()
    } else {
        a.arms
            .iter()
            .map(|s| Arm::parse(s).map_err(|e| anyhow::anyhow!("--arms: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    anyhow::ensure!(a.repeat >= 1, "--repeat: at least 1");
    let o = EvalOptions {
        trace,
        offset: a.offset.or(run.offset).unwrap_or(80_000),
        minutes: a.minutes.or(run.minutes).unwrap_or(10),
        peak_rps: a.peak_rps.or(run.peak_rps).unwrap_or(60.0),
        seconds_per_minute: a
            .seconds_per_minute
            .or(run.seconds_per_minute)
            .unwrap_or(6.0),
        faults,
        arms,
        repeat: a.repeat,
        out: a.out,
        capacity: run.capacity,
        chains: run.chains,
        cpu_bound: run.cpu_bound,
        record_limits: a.record_limits,
        static_headroom: a.static_headroom,
        poisson_arrivals: a.poisson_arrivals,
    };
    anyhow::ensure!(o.minutes >= 1, "--minutes: at least 1");
    anyhow::ensure!(o.peak_rps > 0.0, "--peak-rps: above 0");
    anyhow::ensure!(o.seconds_per_minute > 0.0, "--seconds-per-minute: above 0");
    anyhow::ensure!(
        o.static_headroom.is_finite() && o.static_headroom > 0.0,
        "--static-headroom: above 0 (times the busiest second's CPU)"
    );
    Ok(o)
}

/// A fault file's path: as given, or a shipped scenario by name.
fn scenario_path(p: PathBuf) -> PathBuf {
    if p.exists() {
        return p;
    }
    let shipped = meshtune_lab::faults::scenarios_dir().join(&p);
    let with_ext = shipped.with_extension("yaml");
    if shipped.is_file() {
        shipped
    } else if with_ext.is_file() {
        with_ext
    } else {
        p
    }
}

async fn up(o: UpOptions) -> anyhow::Result<()> {
    let UpOptions {
        duration,
        trace_path,
        offset,
        peak,
        spm,
        istio_config,
        tune,
        faults,
    } = o;
    let path = trace_path.unwrap_or_else(|| trace::traces_dir().join("worldcup98_1min.csv"));
    let counts = trace::read_counts(&path)?;
    let steps = if duration == 0 {
        counts.len()
    } else {
        ((duration as f64 / spm).ceil() as usize).max(1)
    };
    let offset = offset.min(counts.len().saturating_sub(steps));
    let services = meshtune_lab::services::bookinfo_with_versions();
    let replica_names: Vec<String> = services
        .iter()
        .flat_map(|s| {
            (0..s.replicas.len()).map(|i| meshtune_lab::replicas::replica_name(s.name, i))
        })
        .collect();
    // The schedule is checked before anything starts.
    let schedule = match faults {
        Some(f) => Some(meshtune_lab::faults::Schedule::load(
            &scenario_path(f),
            &replica_names,
        )?),
        None => None,
    };
    let mut rates = trace::scaled(&counts, offset, steps, peak);
    if let Some(s) = &schedule {
        rates = s.surged(&rates, spm);
    }
    println!(
        "meshtune-lab: starting {} services ({} replicas, each its own process with an Envoy sidecar), the filter and the agent ...",
        services.len(),
        replica_names.len()
    );
    // With data-path control on: deadlines, retry budgets, adaptive
    // concurrency, steered by the agent's policy (printed as it changes).
    if let Some(d) = &istio_config {
        std::fs::create_dir_all(d)
            .with_context(|| format!("--istio-config {}: cannot create it", d.display()))?;
    }
    let mut mesh = Mesh::start(MeshOptions {
        agent_window_secs: 30,
        control: true,
        tune,
        istio_config_dir: istio_config.clone(),
        services,
        ..MeshOptions::default()
    })
    .await?;
    let prom = match prometheus::Prometheus::start(&[(
        "meshtune-agent".into(),
        format!("127.0.0.1:{}", mesh.agent_port),
    )]) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("(no Prometheus server: {e})");
            None
        }
    };
    println!(
        "load: {} from minute {offset}, {steps} minutes at {spm} s each, peak {peak} req/s",
        path.display()
    );
    if let Some(s) = &schedule {
        println!("faults: {}", s.description);
        for (t, a) in s.actions() {
            println!("  at {t:>5.0} s  {a}");
        }
    }
    println!(
        "entry (productpage sidecar):  http://127.0.0.1:{}/productpage",
        mesh.entry_port
    );
    for (name, e) in &mesh.envoys {
        println!(
            "sidecar {name:<12} stats:   http://127.0.0.1:{}/stats/prometheus",
            e.admin_port
        );
    }
    for (name, r) in &mesh.replicas {
        if let Some(e) = mesh.envoys.get(name) {
            println!(
                "  {name:<12} version {}, {}, pid {}, admin http://127.0.0.1:{}/config_dump",
                r.def.version,
                r.def.locality,
                r.pid().unwrap_or(0),
                e.admin_port
            );
        }
    }
    if let Some(p) = &prom {
        println!("prometheus:                   http://127.0.0.1:{}/graph?g0.expr=meshtune_chain_requests_total", p.port);
    }
    println!(
        "agent's DestinationRules:     {} ({})",
        mesh.desired_dir.display(),
        if tune {
            "applied to the sidecars"
        } else {
            "--no-tune: none written"
        }
    );
    if let Some(d) = &istio_config {
        println!(
            "your Istio objects:           {} (applied as they change)",
            d.display()
        );
    }
    println!(
        "agent metrics:                http://127.0.0.1:{}/metrics",
        mesh.agent_port
    );
    println!(
        "agent chains view:            http://127.0.0.1:{}/v1/chains",
        mesh.agent_port
    );
    println!(
        "agent page:                   http://127.0.0.1:{}/ui/",
        mesh.agent_port
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let entry = mesh.entry_port;
    let rates_for_load = rates.clone();
    let loader = tokio::spawn(async move {
        load::open_loop(
            entry,
            &rates_for_load,
            Duration::from_secs_f64(spm),
            &[("/productpage", 7), ("/api/v1/ratings/0", 3)],
            &stop_rx,
        )
        .await
    });
    let started = std::time::Instant::now();
    // A short tick for the fault schedule, the view every five seconds.
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.tick().await;
    let mut last_view = 0;
    let mut runner = schedule.as_ref().map(meshtune_lab::faults::Runner::new);
    let mut stop = lifecycle::stop_requested();
    if std::env::var_os("MESHTUNE_LAB_PANIC_WHEN_UP").is_some() {
        // For the test that a panic leaves no process behind.
        panic!("MESHTUNE_LAB_PANIC_WHEN_UP is set");
    }
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => { let _ = stop_tx.send(true); break; }
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        if let Some(r) = runner.as_mut() {
            for (t, action) in r.due(elapsed_s) {
                let result =
                    tokio::task::block_in_place(|| meshtune_lab::faults::apply(&mut mesh, &action));
                match result {
                    Ok(()) => println!("\n[{t:>4.0} s] FAULT: {action}"),
                    Err(e) => println!("\n[{t:>4.0} s] FAULT: {action}: could not be done: {e:#}"),
                }
            }
        }
        let elapsed = elapsed_s as u64;
        if elapsed >= last_view + 5 {
            last_view = elapsed;
            let idx = ((elapsed as f64 / spm) as usize).min(rates.len().saturating_sub(1));
            if let Some(chains) = mesh.chains_json() {
                print_view(&chains, elapsed, rates.get(idx).copied().unwrap_or(0.0));
                print_policy(mesh.agent_port);
                print_in_force(&mesh);
                print_ejections(&mesh);
            }
        }
        if loader.is_finished() {
            break;
        }
    }
    let outcome = loader.await.context("load task")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(chains) = mesh.chains_json() {
        print_view(&chains, started.elapsed().as_secs(), 0.0);
    }
    println!("\nsent {} requests, {} succeeded", outcome.sent, outcome.ok);
    for (what, n) in &outcome.failed {
        println!("  {n} answered {what}");
    }
    if let Some(p) = &prom {
        if let Ok(r) = p.query("sum by (chain) (meshtune_chain_requests_total)") {
            for s in r {
                println!(
                    "prometheus: meshtune_chain_requests_total{{chain={}}} = {}",
                    s["metric"]["chain"], s["value"][1]
                );
            }
        }
    }
    Ok(())
}

async fn bench_overload(seconds: f64, only: Option<String>) -> anyhow::Result<()> {
    use meshtune_lab::overload::{self, Control, OverloadOptions};
    let o = OverloadOptions {
        seconds,
        ..OverloadOptions::default()
    };
    let mut results = Vec::new();
    for control in [Control::None, Control::Native, Control::Meshtune] {
        if only.as_deref().is_some_and(|o| o != control.as_str()) {
            continue;
        }
        eprintln!(
            "running the overload scenario with control: {} ...",
            control.as_str()
        );
        let r = overload::run(control, &o).await?;
        overload::print(&r, &o);
        results.push(r);
    }
    if results.len() < 3 {
        return Ok(());
    }
    let (none, native, mt) = (&results[0], &results[1], &results[2]);
    // Without control nothing meets its objective: that ratio is unbounded.
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "inf".to_string()
        }
    };
    // Goodput cannot exceed what ratings' workers get through: how busy
    // they were says how close each control came to that.
    println!(
        "ratings workers busy: none {:.1} %, native {:.1} %, meshtune {:.1} %",
        none.ratings_busy * 100.0,
        native.ratings_busy * 100.0,
        mt.ratings_busy * 100.0
    );
    println!(
        "goodput meshtune/none={} meshtune/native={} high_p99_ms={:.1} slo_ms={}",
        ratio(mt.goodput, none.goodput),
        ratio(mt.goodput, native.goodput),
        mt.high.p99_ms,
        o.high_slo_ms
    );
    Ok(())
}
