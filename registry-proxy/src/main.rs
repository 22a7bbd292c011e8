//! The `registry-proxy` process: command line, logging, signals.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use driver_core::StorageDriver;
use registry_proxy::config::{Backend, Config, ConfigError, Listen, Plan};
use registry_proxy::listener::{ADMIN_CONNECTIONS, Bound, DEBUG_CONNECTIONS, Limits, serve_side};
use registry_proxy::metadata::MetadataError;
use registry_proxy::scheduler::{Clock, LoadError, Scheduler};
use registry_proxy::tls::ServerTls;
use registry_proxy::{AppState, app, debug_app};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(version, about = "A pull-through cache for OCI and Docker registries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the cache. Without CONFIG: filesystem storage in ./data,
    /// 127.0.0.1:5000, upstream https://registry-1.docker.io.
    Serve {
        /// A distribution-style config.yml.
        config: Option<PathBuf>,
    },
    /// Reads every stored blob and checks it against its digest, deleting
    /// the corrupt ones (the next request fetches them again). Safe while
    /// caches on the same storage serve. Prints what it found.
    Scrub {
        /// Bytes read per second at most, with a unit (`100MiB`, the
        /// default); `0` for no limit.
        #[arg(long, default_value = "100MiB")]
        rate: String,
        /// Only report corrupt blobs.
        #[arg(long)]
        dry_run: bool,
        /// The config.yml of the cache.
        config: PathBuf,
    },
    /// Collects garbage once, while caches on the same storage keep
    /// serving: blob data, links and tags no entry or lease keeps, and
    /// abandoned writers. Prints what it removed.
    Gc {
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// The config.yml of the cache.
        config: PathBuf,
    },
    /// Prints what the cache's storage holds: every stored blob's bytes
    /// once, against the byte budget if there is one, and per namespace and
    /// repository the blobs and manifests it links (a blob shared by
    /// repositories counts in each). Safe while caches serve.
    Du {
        /// The config.yml of the cache.
        config: PathBuf,
    },
    /// Drops a tag, a repository or a digest from a running cache, through
    /// its admin surface (`admin.addr`, with the token of
    /// `admin.tokenfile`): links and tags first, the bytes once nothing
    /// else uses them. Prints what went, as JSON.
    Purge {
        /// The config.yml of the cache.
        config: PathBuf,
        /// The namespace (default: the default namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// The repository (alone: all of it).
        #[arg(long)]
        repository: Option<String>,
        /// A tag of the repository.
        #[arg(long)]
        tag: Option<String>,
        /// A digest: in the repository; without one, in every repository
        /// of `--namespace`, or of every namespace when none is named.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Pulls images into a running cache through its admin surface (every
    /// platform of an index), or with `--dry-run` says which blobs that
    /// would fetch and their bytes. Prints one JSON line per image.
    Warm {
        /// The config.yml of the cache.
        config: PathBuf,
        /// Images: `REPO:TAG` or `REPO@DIGEST`.
        #[arg(required = true)]
        images: Vec<String>,
        /// The namespace (default: the default namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// Only say what would be fetched.
        #[arg(long)]
        dry_run: bool,
        /// Only these platforms of an index (`linux/arm64`, repeatable;
        /// default every one).
        #[arg(long = "platform")]
        platforms: Vec<String>,
    },
    /// Checks a configuration without starting anything: prints the
    /// effective configuration (every default applied, secrets masked) and
    /// every key accepted but not applied, or what would stop the start
    /// (exit status 2).
    CheckConfig {
        /// The config.yml to check (`REGISTRY_*` variables apply).
        config: PathBuf,
    },
    /// Prints the completion script of `shell` (for example to
    /// `/usr/share/bash-completion/completions/registry-proxy`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff, for `man -l -` or `/usr/share/man/man1`).
    Man,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The S3 storage configuration is invalid.
    #[error(transparent)]
    S3Config(#[from] driver_s3::ConfigError),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] driver_core::Error),
    /// The scheduler's state could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The application state could not be opened.
    #[error(transparent)]
    Open(#[from] registry_proxy::OpenError),
    /// A namespace cannot be stored.
    #[error(transparent)]
    Namespace(#[from] registry_proxy::namespace::InvalidNamespace),
    /// The metadata store failed.
    #[error("metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// The admin surface refused or could not be reached.
    #[error("admin: {0}")]
    Admin(String),
    /// TLS cannot be served as configured.
    #[error(transparent)]
    Tls(#[from] registry_proxy::tls::TlsError),
    /// A file or socket could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was tried.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `scrub --rate` is not a size.
    #[error("--rate {0:?}: not a size (100MiB, 1GiB, 0)")]
    Rate(String),
    /// `scrub` found blobs it could not vouch for.
    #[error("{corrupt} corrupt and {unreadable} unreadable blobs")]
    Unsound {
        /// Blobs that did not match their digest.
        corrupt: u64,
        /// Blobs that could not be read.
        unreadable: u64,
    },
}

/// `what` failed with `source`.
fn io(what: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |source| Failure::Io { what, source }
}

/// Threads for blocking storage calls (file reads and writes). Few are
/// enough for two cores; more only multiply per-thread memory.
const BLOCKING_THREADS: usize = 16;

fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    match &command {
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cli, "registry-proxy", &mut std::io::stdout());
            return std::process::ExitCode::SUCCESS;
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("registry-proxy: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let path = match &command {
        Command::Serve { config } => config.clone(),
        Command::Gc { config, .. }
        | Command::Scrub { config, .. }
        | Command::Du { config }
        | Command::Purge { config, .. }
        | Command::Warm { config, .. }
        | Command::CheckConfig { config } => Some(config.clone()),
        Command::Completions { .. } | Command::Man => None,
    };
    let config = match Config::load(path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::CheckConfig { .. } = command {
        return check_config(&config);
    }
    let _telemetry = init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let plan = match config.plan() {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for key in &plan.ignored {
        tracing::warn!(
            key,
            "accepted from distribution's configuration, not applied here"
        );
    }
    let done = match command {
        Command::Serve { .. } => runtime.block_on(serve(plan)),
        Command::Gc { dry_run, .. } => runtime.block_on(gc(plan, dry_run)),
        Command::Scrub { rate, dry_run, .. } => runtime.block_on(scrub(plan, &rate, dry_run)),
        Command::Du { .. } => runtime.block_on(du(plan)),
        Command::Warm {
            images,
            namespace,
            dry_run,
            platforms,
            ..
        } => runtime.block_on(warm(plan, namespace, images, dry_run, &platforms.join(","))),
        Command::Purge {
            namespace,
            repository,
            tag,
            digest,
            ..
        } => runtime.block_on(purge(
            plan,
            registry_proxy::admin::PurgeQuery {
                namespace,
                repository,
                tag,
                digest,
            },
        )),
        Command::CheckConfig { .. } | Command::Completions { .. } | Command::Man => Ok(()),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `registry-proxy check-config`: the plan of `config`, or why there is none.
fn check_config(config: &Config) -> std::process::ExitCode {
    match config.plan() {
        Ok(plan) => {
            println!("effective configuration (secrets masked):\n{plan:#?}");
            for key in &plan.ignored {
                println!(
                    "ignored: {key} (accepted from distribution's configuration, not applied)"
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs to stdout as `log` says, and exports traces when
/// `tracing.otlp` asks (the exporter runs until the value returned is
/// dropped).
fn init_logging(config: &Config) -> Option<registry_proxy::telemetry::Telemetry> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a terminal: log files and collectors get plain text.
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let logs = if config.log.formatter == "json" {
        text.json().boxed()
    } else {
        text.boxed()
    };
    let (traces, telemetry) = match config.otlp() {
        Ok(Some(otlp)) => match registry_proxy::telemetry::layer(&otlp) {
            Ok((layer, telemetry)) => (Some(layer), Some(telemetry)),
            Err(e) => {
                eprintln!("registry-proxy: traces off: {e}");
                (None, None)
            }
        },
        _ => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    telemetry
}

/// The storage a plan selects, and its description for logs.
async fn open_driver(storage: &Backend) -> Result<(Arc<dyn StorageDriver>, String), Failure> {
    Ok(match storage.clone() {
        Backend::Filesystem(fs) => {
            let where_ = format!("filesystem {}", fs.root_directory.display());
            (Arc::new(driver_fs::FsDriver::open(&fs)?), where_)
        }
        Backend::S3(s3) => {
            let where_ = format!("s3 bucket {} root {:?}", s3.bucket, s3.root_directory);
            (Arc::new(driver_s3::S3Driver::new(*s3).await?), where_)
        }
        Backend::InMemory => (
            Arc::new(driver_memory::MemoryDriver::new()),
            "inmemory".to_owned(),
        ),
    })
}

/// `registry-proxy gc`: one collection over the config's storage and
/// metadata store.
async fn gc(plan: Plan, dry_run: bool) -> Result<(), Failure> {
    let (driver, storage) = open_driver(&plan.storage).await?;
    let specs = plan.namespaces;
    let metrics = Arc::new(registry_proxy::metrics::Metrics::default());
    let namespaces = registry_proxy::namespace::Namespaces::new(
        &specs,
        &metrics,
        plan.settings.request_timeout,
    )?;
    let mut options = plan.settings.scheduler;
    options.namespace_ttls = registry_proxy::namespace::Namespaces::ttls(&specs);
    let coordination = plan.settings.coordination;
    let store =
        registry_proxy::open_store(&driver, &namespaces, &options, coordination, false).await?;
    tracing::info!(storage, store = %store.describe(), dry_run, "collecting garbage");
    let scheduler = Scheduler::open_with_store(
        driver,
        Arc::clone(&store),
        options,
        Clock::system(),
        metrics,
    )
    .await?;
    let collected = scheduler.gc(dry_run).await;
    store.close().await;
    let c = collected?;
    println!(
        "{}marked {} digests in use; removed {} blobs ({} bytes), {} links, {} tags, {} abandoned writers; mark {:?}, sweep {:?}",
        if dry_run { "dry run: " } else { "" },
        c.marked,
        c.blobs,
        c.bytes_freed,
        c.links,
        c.tags,
        c.writers,
        c.mark,
        c.sweep
    );
    Ok(())
}

/// `registry-proxy du`: what storage holds, largest repositories first.
async fn du(plan: Plan) -> Result<(), Failure> {
    let (driver, storage) = open_driver(&plan.storage).await?;
    tracing::info!(storage, "reading what storage holds");
    let usage = registry_proxy::scheduler::usage::usage(&*driver).await?;
    let size = |bytes: u64| bytesize::ByteSize::b(bytes).display().iec().to_string();
    let budget = plan.settings.scheduler.bounds.max_size.map_or_else(
        || "no byte budget".to_owned(),
        |max| {
            format!(
                "{:.1}% of the {} budget",
                usage.bytes as f64 * 100.0 / max as f64,
                size(max)
            )
        },
    );
    println!(
        "stored: {} blobs, {} bytes ({}; {budget})",
        usage.blobs,
        usage.bytes,
        size(usage.bytes)
    );
    if usage.dangling > 0 {
        println!(
            "links to content not stored (filled again when asked for): {}",
            usage.dangling
        );
    }
    let mut rows: Vec<_> = usage.repositories.iter().collect();
    rows.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
    println!(
        "{:<12} {:>6} {:>9}  namespace  repository",
        "bytes", "blobs", "manifests"
    );
    for (key, share) in rows {
        let (namespace, name) = match key.strip_prefix("_namespaces/") {
            Some(rest) => rest.split_once('/').unwrap_or((rest, "")),
            None => ("-", key.as_str()),
        };
        println!(
            "{:<12} {:>6} {:>9}  {namespace}  {name}",
            size(share.bytes),
            share.blobs,
            share.manifests
        );
    }
    match plan.debug {
        Some(addr) => next_out(addr, size).await,
        None => println!("next to evict: only the running cache knows (set http.debug.addr)"),
    }
    Ok(())
}

/// `registry-proxy purge`: asks the running cache's admin surface.
async fn purge(plan: Plan, query: registry_proxy::admin::PurgeQuery) -> Result<(), Failure> {
    let pairs = [
        ("namespace", query.namespace.as_deref()),
        ("repository", query.repository.as_deref()),
        ("tag", query.tag.as_deref()),
        ("digest", query.digest.as_deref()),
    ];
    let report: registry_proxy::admin::PurgeReport = admin_call(&plan, "purge", &pairs).await?;
    println!("{}", serde_json::json!(report));
    Ok(())
}

/// `registry-proxy warm`: asks the running cache's admin surface to pull
/// each image (or, with `dry_run`, what that would fetch).
async fn warm(
    plan: Plan,
    namespace: Option<String>,
    images: Vec<String>,
    dry_run: bool,
    platforms: &str,
) -> Result<(), Failure> {
    for image in images {
        let pairs = [
            ("namespace", namespace.as_deref()),
            ("image", Some(image.as_str())),
            ("dry_run", dry_run.then_some("true")),
            ("platform", (!platforms.is_empty()).then_some(platforms)),
        ];
        let report: registry_proxy::admin::WarmReport = admin_call(&plan, "warm", &pairs).await?;
        println!(
            "{}",
            serde_json::json!({ "image": image, "report": report })
        );
    }
    Ok(())
}

/// `POST /admin/<what>` on the admin surface of `plan`'s running cache,
/// with the token of its `admin.tokenfile`.
async fn admin_call<T: serde::de::DeserializeOwned>(
    plan: &Plan,
    what: &str,
    query: &[(&str, Option<&str>)],
) -> Result<T, Failure> {
    let Some(admin) = &plan.admin else {
        return Err(Failure::Admin(
            "the configuration has no admin surface (admin.addr)".into(),
        ));
    };
    let Some(tokenfile) = &admin.tokenfile else {
        return Err(Failure::Admin(format!(
            "registry-proxy {what} needs admin.tokenfile"
        )));
    };
    let token = std::fs::read_to_string(tokenfile)
        .map_err(io(format!("cannot read {}", tokenfile.display())))?;
    let mut addr = admin.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    registry_proxy::admin::request(addr, token.trim(), what, query)
        .await
        .map_err(Failure::Admin)
}

/// What the running cache at debug address `addr` would evict next, read
/// from its `/debug/budget`: its queues live in its memory.
async fn next_out(mut addr: std::net::SocketAddr, size: impl Fn(u64) -> String) {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/debug/budget");
    let view = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json::<registry_proxy::scheduler::BudgetView>()
            .await
    };
    match view.await {
        Ok(view) => {
            println!(
                "next to evict (the running cache at {addr}: {} accounted, {} reserved by fills):",
                size(view.stored),
                size(view.reserved)
            );
            for out in view.next {
                println!("{:<12} {}", size(out.size), out.digest);
            }
        }
        Err(e) => println!("next to evict: no answer from a running cache at {url} ({e})"),
    }
}

async fn scrub(plan: Plan, rate: &str, dry_run: bool) -> Result<(), Failure> {
    let rate =
        registry_proxy::config::bytes_of(rate).ok_or_else(|| Failure::Rate(rate.to_owned()))?;
    let (driver, storage) = open_driver(&plan.storage).await?;
    tracing::info!(storage, rate, dry_run, "scrubbing");
    let metrics = registry_proxy::metrics::Metrics::default();
    let found =
        registry_proxy::cache::verify::scrub(&*driver, Some(rate), dry_run, &metrics).await?;
    println!(
        "{}checked {} blobs ({} bytes): {} corrupt{}, {} unreadable",
        if dry_run { "dry run: " } else { "" },
        found.blobs,
        found.bytes,
        found.corrupt,
        if dry_run { "" } else { " (deleted)" },
        found.unreadable
    );
    if found.corrupt > 0 || found.unreadable > 0 {
        return Err(Failure::Unsound {
            corrupt: found.corrupt,
            unreadable: found.unreadable,
        });
    }
    Ok(())
}

async fn serve(plan: Plan) -> Result<(), Failure> {
    let drain = plan.drain;
    match registry_proxy::listener::raise_open_files_limit() {
        Ok(open_files) => tracing::info!(open_files, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let (driver, storage) = open_driver(&plan.storage).await?;
    let spool_dir = &plan.settings.spool_dir;
    // Spool files are unnamed, so a crash leaves none behind; check now
    // that the directory takes them.
    if plan.default_spool {
        std::fs::create_dir_all(spool_dir).map_err(io(format!(
            "cannot create the spool directory {}",
            spool_dir.display()
        )))?;
    }
    tempfile::tempfile_in(spool_dir).map_err(io(format!(
        "proxy.spooldirectory: cannot create spool files in {}",
        spool_dir.display()
    )))?;
    let state = AppState::open(driver, &plan.namespaces, plan.settings).await?;
    let loaded = state.scheduler.loaded();
    tracing::info!(
        entries = loaded.entries,
        segments = loaded.segments,
        damaged = loaded.damaged,
        imported = loaded.imported,
        store = %state.scheduler.store().describe(),
        "scheduler state loaded"
    );
    for ns in state.namespaces.iter() {
        tracing::info!(
            namespace = %ns.name,
            upstream = %ns.upstream.base(),
            sharing = ?ns.sharing,
            "namespace"
        );
    }
    let scheduler = Arc::clone(&state.scheduler);
    let listener = bind(&plan.listen).await?;
    let tls = match &plan.tls {
        None => None,
        Some(spec) => {
            for warning in &spec.warnings {
                tracing::warn!("{warning}");
            }
            Some(Arc::new(ServerTls::start(spec)?))
        }
    };
    if let Some(debug_addr) = plan.debug {
        let debug_listener = TcpListener::bind(debug_addr)
            .await
            .map_err(io(format!("cannot listen on {debug_addr}")))?;
        let router = debug_app(state.clone(), &plan.debug_surface);
        let limits = Limits {
            max_connections: DEBUG_CONNECTIONS,
            ..plan.listener
        };
        tokio::spawn(serve_side(debug_listener, router, limits));
        tracing::info!(%debug_addr, "debug listener");
    }
    if let Some(admin) = &plan.admin {
        let admin_listener = TcpListener::bind(admin.addr)
            .await
            .map_err(io(format!("cannot listen on {}", admin.addr)))?;
        let router = registry_proxy::admin::admin_app(state.clone(), admin.access.clone());
        let limits = Limits {
            max_connections: ADMIN_CONNECTIONS,
            ..plan.listener
        };
        tokio::spawn(serve_side(admin_listener, router, limits));
        tracing::info!(admin_addr = %admin.addr, "admin listener");
    }
    // Stopped with the process.
    let _prefetch = registry_proxy::prefetch::spawn_prefetch(&state);
    let headers: axum::http::HeaderMap = plan.headers.into_iter().collect();
    let blobs = Arc::clone(&state.blobs);
    let metrics = Arc::clone(&state.metrics);
    let prefix = state.urls.prefix.clone();
    let mut router = app(state).layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let headers = headers.clone();
            async move {
                response.headers_mut().extend(headers);
                response
            }
        },
    ));
    if !prefix.is_empty() {
        router = axum::Router::new().nest(&prefix, router);
    }
    tracing::info!(listen = ?plan.listen, tls = plan.tls.is_some(), prefix, storage, "registry-proxy listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = registry_proxy::listener::serve(
        listener,
        tls,
        router,
        plan.listener,
        metrics,
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(());
        },
    );
    let server = tokio::spawn(server);
    // After the signal, in-flight responses and fills get `drain` to finish;
    // a fill cut short commits nothing.
    let _ = stop_rx.await;
    tracing::info!("shutting down: no new connections, draining");
    let deadline = tokio::time::Instant::now() + drain;
    let drained = tokio::time::timeout_at(deadline, server).await.is_ok()
        && tokio::time::timeout_at(deadline, blobs.fills_done())
            .await
            .is_ok();
    if drained {
        tracing::info!("stopped");
    } else {
        tracing::warn!("stopped with responses or fills still running after {drain:?}");
    }
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "could not write the scheduler state");
    }
    Ok(())
}

/// The public listener's socket. A Unix socket left by an earlier run is
/// replaced (any other file at its path is not).
async fn bind(listen: &Listen) -> Result<Bound, Failure> {
    match listen {
        Listen::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map(Bound::Tcp)
            .map_err(io(format!("cannot listen on {addr}"))),
        Listen::Unix(path) => {
            use std::os::unix::fs::FileTypeExt as _;
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)
                    .map_err(io(format!("cannot replace the socket {}", path.display())))?;
            }
            tokio::net::UnixListener::bind(path)
                .map(Bound::Unix)
                .map_err(io(format!("cannot listen on {}", path.display())))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
