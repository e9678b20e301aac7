//! egress-gateway: the binary. Parses the command line, loads the configuration and the policy,
//! binds every listener before reporting ready, and on SIGTERM drains.
//!
//! Components: [`config`] (gateway.yaml), [`policy_store`] (hot-reloaded policy), [`connect`]
//! (the connect listener and the life of a connection), [`http`] (request heads), [`identity`],
//! [`dns`], [`guard`] and [`upstream`] (where bytes may go), [`relay`], [`audit`], [`metrics`],
//! [`admin`].

mod admin;
mod audit;
mod config;
mod connect;
mod dns;
mod guard;
mod http;
mod identity;
mod metrics;
mod policy_store;
mod ports;
mod reason;
mod relay;
mod sys;
mod tls;
mod transparent;
mod upstream;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use egress_pods::PodCache;
use egress_policy::{Identity, IdentitySource, Policy, Verdict};

use crate::config::{GatewayConfig, LogFormat};

/// Exit status for a usage error or an invalid file.
const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "egress-gateway",
    about = "Sidecar-free egress gateway for Kubernetes",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// gateway.yaml; without it: a connect listener on 127.0.0.1:3128, admin on
        /// 127.0.0.1:9901, and ./policy.yaml if present (else deny-all).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate or query a policy file.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Validate a gateway configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Exit 0 when FILE is a valid policy; else print file:line:column errors and exit 2.
    Validate { file: PathBuf },
    /// Decide one connection: exit 0 allow, 1 deny, 2 usage error or invalid policy.
    Check(CheckArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Exit 0 when FILE is a valid gateway.yaml and the policy file and TLS material it names load.
    Validate { file: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA (ca.crt, ca.key), a gateway certificate (gateway.crt, gateway.key)
    /// and, per --workload, a client SVID (<last segment>.crt/.key). Not for production.
    Dev {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// A SPIFFE ID to issue a workload certificate for (repeatable).
        #[arg(long)]
        workload: Vec<String>,
    },
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long)]
    policy: PathBuf,
    /// The caller's SPIFFE ID.
    #[arg(long, conflicts_with_all = ["namespace", "service_account", "label"])]
    spiffe: Option<String>,
    /// The caller's source address.
    #[arg(long, required_unless_present = "spiffe")]
    source: Option<std::net::IpAddr>,
    /// With --source: the caller is a Pod in this namespace.
    #[arg(long, requires = "source")]
    namespace: Option<String>,
    /// With --namespace: the Pod's service account.
    #[arg(long = "service-account", requires = "namespace")]
    service_account: Option<String>,
    /// With --namespace: a Pod label, k=v (repeatable).
    #[arg(long, requires = "namespace", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// How the identity was established: mtls (default for --spiffe), kubernetes, static.
    #[arg(long)]
    via: Option<String>,
    /// Trust domain of Pod identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Destination host:port.
    #[arg(long)]
    to: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not k=v"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("egress-gateway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Policy(PolicyCommand::Validate { file }) => match load_policy(&file) {
            Ok(p) => {
                println!("{}: valid ({} rules)", file.display(), p.rules().len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Policy(PolicyCommand::Check(args)) => check(args),
        Command::Certs(CertsCommand::Dev {
            out,
            trust_domain,
            workload,
        }) => certs_dev(&out, &trust_domain, &workload),
        Command::Config(ConfigCommand::Validate { file }) => {
            match GatewayConfig::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    if let Some(p) = &c.policy_path {
                        load_policy(p)?;
                    }
                    for l in &c.listeners {
                        if let Some(t) = &l.tls {
                            tls::load(t).with_context(|| format!("listener {:?}", l.name))?;
                        }
                    }
                    Ok(c)
                }) {
                Ok(_) => {
                    println!("{}: valid", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::from(EXIT_INVALID)
                }
            }
        }
        Command::Run { config } => {
            let cfg = match config {
                Some(path) => GatewayConfig::load(&path),
                None => GatewayConfig::embedded_default(),
            };
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("egress-gateway: invalid configuration: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            // A policy file that cannot be loaded at start is a usage error, like a bad config:
            // refuse before binding anything.
            if let Some(path) = &cfg.policy_path {
                if let Err(e) = load_policy(path) {
                    eprintln!("egress-gateway: invalid policy: {e:#}");
                    return ExitCode::from(EXIT_INVALID);
                }
            }
            if let Some(path) = cfg.kubernetes.as_ref().and_then(|k| k.kubeconfig.as_ref()) {
                if let Err(e) = egress_pods::check_kubeconfig(path) {
                    eprintln!("egress-gateway: identity.kubernetes.kubeconfig: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            }
            let pod_cache = cfg.kubernetes.as_ref().map(|_| PodCache::new());
            let mut cert_stores = std::collections::HashMap::new();
            let metrics = Arc::new(metrics::Metrics::new(pod_cache.clone()));
            for l in &cfg.listeners {
                if let Some(t) = &l.tls {
                    match tls::CertStore::open(&l.name, t.clone(), Arc::clone(&metrics)) {
                        Ok(a) => {
                            cert_stores.insert(l.name.clone(), a);
                        }
                        Err(e) => {
                            eprintln!(
                                "egress-gateway: listener {:?}: invalid TLS material: {e:#}",
                                l.name
                            );
                            return ExitCode::from(EXIT_INVALID);
                        }
                    }
                }
            }
            init_logging(&cfg);
            match sys::raise_open_files_limit() {
                Ok((before, after)) if before != after => {
                    tracing::info!(from = before, to = after, "open files limit raised");
                }
                Ok((_, limit)) => tracing::info!(limit, "open files limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
            }
            let mut builder = match runtime_builder() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("egress-gateway: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("egress-gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(cfg, metrics, cert_stores, pod_cache)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "egress-gateway failed");
                    eprintln!("egress-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The async runtime: one worker thread per CPU the process may use (its affinity and CPU quota),
/// or `TOKIO_WORKER_THREADS` if set. With one, the single-threaded scheduler, which needs no
/// hand-offs between threads: less work per connection on a one-core deployment.
fn runtime_builder() -> Result<tokio::runtime::Builder, String> {
    let workers = match std::env::var_os("TOKIO_WORKER_THREADS") {
        None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        Some(v) => match v.to_str().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => return Err(format!("TOKIO_WORKER_THREADS={v:?}: not a positive number")),
        },
    };
    let (builder, scheduler) = if workers == 1 {
        (
            tokio::runtime::Builder::new_current_thread(),
            "current_thread",
        )
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        (b, "multi_thread")
    };
    tracing::info!(workers, scheduler, "runtime");
    Ok(builder)
}

fn certs_dev(out: &Path, trust_domain: &str, workloads: &[String]) -> ExitCode {
    use egress_certs::spiffe::SpiffeId;
    if let Err(e) = format!("spiffe://{trust_domain}").parse::<SpiffeId>() {
        eprintln!("egress-gateway certs dev: --trust-domain {trust_domain:?}: {e}");
        return ExitCode::from(EXIT_INVALID);
    }
    let mut ids = Vec::new();
    for w in workloads {
        match w.parse::<SpiffeId>() {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("egress-gateway certs dev: --workload {w:?}: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        }
    }
    match egress_certs::dev::issue(out, trust_domain, &ids) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-gateway certs dev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Policy::from_yaml(&text, &path.display().to_string())?)
}

fn check(args: CheckArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("egress-gateway policy check: {msg}");
        ExitCode::from(EXIT_INVALID)
    };
    let policy = match load_policy(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let dest = match http::parse_authority(&args.to, None) {
        Ok(d) => d,
        Err(r) => return usage(format!("--to {:?}: {}", args.to, r.details)),
    };
    let via = match args.via.as_deref().map(IdentitySource::parse) {
        Some(None) => return usage("--via must be mtls, kubernetes or static".into()),
        Some(Some(v)) => Some(v),
        None => None,
    };
    let identity = if let Some(id) = &args.spiffe {
        // The caller's ID, not a rule's pattern: `*` is a path character no ID contains.
        if let Err(e) = id.parse::<egress_certs::spiffe::SpiffeId>() {
            return usage(format!("--spiffe {id:?} is not a SPIFFE ID: {e}"));
        }
        Identity::from_spiffe(via.unwrap_or(IdentitySource::Mtls), id, args.source)
    } else if let Some(ns) = &args.namespace {
        let sa = args.service_account.as_deref().unwrap_or("default");
        let spiffe = format!("spiffe://{}/ns/{ns}/sa/{sa}", args.trust_domain);
        let mut id = Identity::from_spiffe(
            via.unwrap_or(IdentitySource::Kubernetes),
            &spiffe,
            args.source,
        );
        id.labels = args.label.iter().cloned().collect();
        id
    } else {
        Identity::anonymous(args.source)
    };
    let d = policy.decide(&identity, &dest);
    let reason = reason::Reason::from(d.reason).as_str();
    if args.json {
        let out = serde_json::json!({
            "decision": d.verdict.as_str(),
            "reason": reason,
            "rule": d.rule.as_deref(),
            "identity": identity.spiffe,
            "identity_source": identity.source.as_str(),
            "destination": dest.to_string(),
            "allow_private_addresses": d.allow_private_addresses,
            "shadow": d.shadow.iter().map(|s| serde_json::json!({"rule": &*s.rule, "action": s.action.as_str()})).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        let why = match &d.rule {
            Some(rule) => format!("rule {rule:?}"),
            None => "no rule matched; the policy default applies".to_owned(),
        };
        println!("{}: {} ({reason})", d.verdict.as_str(), why);
        for s in &d.shadow {
            println!("shadow: rule {:?} would {}", &*s.rule, s.action.as_str());
        }
    }
    if d.verdict == Verdict::Deny {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging(cfg: &GatewayConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.log_level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

async fn run(
    cfg: GatewayConfig,
    metrics: Arc<metrics::Metrics>,
    mut cert_stores: std::collections::HashMap<String, Arc<tls::CertStore>>,
    pod_cache: Option<Arc<PodCache>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal handlers first: from here on no signal can take its default action (exit).
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let policy = policy_store::PolicyStore::open(cfg.policy_path.clone(), Arc::clone(&metrics))?;
    let dns = dns::Dns::new(
        &cfg.nameservers,
        cfg.hosts.clone(),
        cfg.upstream.connect_timeout,
    )
    .context("setting up DNS")?;

    // The Pod watch starts before the listeners; readiness waits for its first full list.
    if let (Some(k), Some(cache)) = (&cfg.kubernetes, &pod_cache) {
        let client = egress_pods::client(k.kubeconfig.as_deref())
            .await
            .context("identity.kubernetes")?;
        let scope = egress_pods::Scope {
            namespace: k.namespace.clone(),
            label_selector: k.label_selector.clone(),
        };
        tracing::info!(namespace = ?scope.namespace, label_selector = ?scope.label_selector, "pod watch starting");
        tokio::spawn(egress_pods::run(
            client,
            scope,
            egress_pods::CacheWriter::new(Arc::clone(cache)),
        ));
    }

    // Bind everything before reporting ready: a port conflict is a start-up error.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let listener = connect::bind(l)
            .with_context(|| format!("listener {:?}: cannot bind {}", l.name, l.address))?;
        bound.push((l.clone(), listener));
    }
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("admin: cannot bind {}", cfg.admin))?;
    let mut own = vec![admin_listener.local_addr()?];
    for (_, l) in &bound {
        own.push(l.local_addr()?);
    }
    let configured: Vec<u16> = cfg
        .listeners
        .iter()
        .map(|l| l.address.port())
        .chain([cfg.admin.port()])
        .collect();
    ports::warn_exposed(&configured);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (force_tx, force_rx) = tokio::sync::watch::channel(false);
    let readiness = Arc::new(admin::Readiness::new(pod_cache.clone()));
    let drain_timeout = cfg.drain_timeout;
    let gateway = Arc::new(connect::Gateway {
        policy: Arc::clone(&policy),
        dns,
        metrics: Arc::clone(&metrics),
        audit: audit::AuditSink::stdout(),
        identities: identity::Identities::new(
            cfg.statics.clone(),
            pod_cache.clone(),
            cfg.kubernetes.as_ref().and_then(|k| k.max_staleness),
            cfg.trust_domain.clone(),
        ),
        own_sockets: upstream::OwnSockets::new(own),
        conns: connect::ConnTracker::new(cfg.limits.max_connections),
        force_close: force_rx,
        config: cfg,
    });

    let admin_addr = admin_listener.local_addr()?;
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin::Admin {
            metrics: Arc::clone(&metrics),
            policy: Arc::clone(&policy),
            readiness: Arc::clone(&readiness),
        }),
    ));
    tokio::spawn(Arc::clone(&policy).watch(Duration::from_secs(10), hup));
    let status = policy.status();
    for (l, listener) in bound {
        let address = listener.local_addr()?;
        tracing::info!(listener = %l.name, kind = l.kind.as_str(), tls = l.tls.is_some(), address = %address, "listening");
        if l.kind != config::ListenerKind::Connect {
            let ctx = Arc::new(transparent::PeekListener::new(
                &l,
                Arc::clone(&gateway),
                metrics.listener(&l.name),
            ));
            tokio::spawn(transparent::serve(listener, ctx, stop_rx.clone()));
            continue;
        }
        let tls = cert_stores.remove(&l.name);
        if let Some(store) = &tls {
            tokio::spawn(Arc::clone(store).watch(Duration::from_secs(10)));
        }
        let ctx = Arc::new(connect::ConnectListener {
            tls,
            metrics: metrics.listener(&l.name),
            name: l.name,
            gateway: Arc::clone(&gateway),
        });
        tokio::spawn(connect::serve(listener, ctx, stop_rx.clone()));
    }
    tracing::info!(address = %admin_addr, "admin listening");
    tracing::info!(
        path = status.path.as_deref().unwrap_or("<none: deny-all>"),
        sha256 = %status.sha256,
        rules = status.rules,
        trust_domain = %gateway.config.trust_domain,
        "policy loaded"
    );
    readiness.set(true);

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    readiness.set(false);
    let _ = stop_tx.send(true);
    let active = gateway.conns.active();
    tracing::info!(active, drain_timeout = ?drain_timeout, "shutting down: not ready, not accepting, draining");
    if tokio::time::timeout(drain_timeout, gateway.conns.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            active = gateway.conns.active(),
            "drain period over: closing live connections"
        );
        let _ = force_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), gateway.conns.wait_idle()).await;
    }
    gateway.audit.flush();
    tracing::info!("stopped");
    Ok(())
}
