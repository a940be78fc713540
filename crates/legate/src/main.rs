//! The `legate` command line. Everything else lives in the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use legate::config::quick::{self, QuickHttp};
use legate::config::{self, AccessLogMode, AdminListen, ConfigDuration, ListenAddr};
use legate::server::{self, Options};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "legate",
    version,
    about = "A small, fast ambassador sidecar proxy"
)]
struct Cli {
    /// Log level or filter (e.g. `debug`, `legate=debug,info`); defaults to RUST_LOG, then info.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with a config file.
    Run {
        #[arg(short, long, env = "LEGATE_CONFIG")]
        config: PathBuf,
        /// Worker threads (overrides `runtime.workers`).
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        exit: ExitFlags,
    },
    /// Wait until a legate is ready (or a TCP port accepts), for an app's entrypoint:
    /// `legate wait && exec app`. Exits 0 when ready, 1 on timeout.
    Wait {
        /// The legate admin address whose /ready to poll.
        #[arg(long, default_value = "127.0.0.1:9901", conflicts_with = "tcp")]
        admin: String,
        /// Wait for this TCP address to accept a connection instead.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Ask a running legate to drain and exit (POST /quitquitquit): a preStop hook, the end of
    /// a batch script.
    Shutdown {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
    /// Ask a running legate to reload its config file now (POST /reload) and print the
    /// result: exit 0 when it runs the file, 1 with every error when the file was refused.
    Reload {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
    /// Validate a config file: every problem as FILE:LINE:COL: path: message.
    Check {
        #[arg(short, long, env = "LEGATE_CONFIG")]
        config: PathBuf,
        /// Do not read the certificate, key and credential files the config names (for a
        /// manifest whose Secrets are mounted only in the cluster).
        #[arg(long)]
        skip_files: bool,
    },
    /// Quick mode: proxy one local port to one upstream, no file needed.
    Http(Box<HttpArgs>),
    /// Quick mode for TCP: carry one local port or Unix socket to one upstream (a database
    /// tunnel), no file needed.
    Tcp(Box<TcpArgs>),
    /// Print the config file's JSON Schema (for editors: yaml-language-server).
    Schema,
    /// A live view of a running legate from its /metrics: per upstream req/s, error %, p50/p99,
    /// retries, breaker, ejected endpoints, connections. `--once` prints one plain frame and exits.
    Top {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Take two scrapes --interval apart, print one plain-text frame, exit.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value = "1s")]
        interval: String,
    },
    /// The embedded demo: a flaky upstream, legate in front, and the naive client.
    Demo(legate::demo::DemoArgs),
}

/// Ending with the main work (Jobs without native sidecars); override the config's `shutdown:`.
#[derive(Args)]
struct ExitFlags {
    /// Drain and exit when this file appears.
    #[arg(long, value_name = "PATH")]
    exit_when_file: Option<PathBuf>,
    /// Drain and exit when this process (a name or a PID) ends.
    #[arg(long, value_name = "NAME|PID")]
    exit_with_process: Option<String>,
}

impl ExitFlags {
    fn apply(&self, cfg: &mut config::Config) {
        if self.exit_when_file.is_some() {
            cfg.shutdown.exit_when_file = self.exit_when_file.clone();
        }
        if self.exit_with_process.is_some() {
            cfg.shutdown.exit_with_process = self.exit_with_process.clone();
        }
    }
}

#[derive(Args)]
struct HttpArgs {
    /// Local address to listen on (loopback unless an IP is given).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Upstream URL (http:// or https://); repeat for more endpoints of the same service.
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    /// Set a request header for the upstream: NAME=VALUE; repeatable.
    #[arg(long = "set-header", value_name = "NAME=VALUE")]
    set_headers: Vec<String>,
    /// Admin address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Access log: `json` or `off`.
    #[arg(long, default_value = "json")]
    access_log: String,
    /// Worker threads (default: the CPUs this container may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Whole-request timeout for the route (default 15s).
    #[arg(long)]
    timeout: Option<String>,
    #[command(flatten)]
    tls: TlsFlags,
    #[command(flatten)]
    exit: ExitFlags,
    /// Print the equivalent YAML config and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct TcpArgs {
    /// Local address (loopback unless an IP is given) or `unix:/path/to/socket`.
    #[arg(long, default_value = "127.0.0.1:5432")]
    listen: String,
    /// Upstream HOST:PORT; repeat for more endpoints of the same service.
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    /// Speak TLS to the upstream from the first byte.
    #[arg(long)]
    tls: bool,
    /// `postgres`: PostgreSQL's SSLRequest, then TLS (implies --tls); `direct`: plain TLS.
    #[arg(long, value_name = "MODE")]
    tls_mode: Option<String>,
    #[command(flatten)]
    tls_flags: TlsFlags,
    /// Admin address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Connection log: `json` or `off`.
    #[arg(long, default_value = "json")]
    access_log: String,
    /// Worker threads (default: the CPUs this container may use).
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    exit: ExitFlags,
    /// Print the equivalent YAML config and exit.
    #[arg(long)]
    print_config: bool,
}

/// The upstream TLS flags of both quick modes.
#[derive(Args)]
struct TlsFlags {
    /// CA bundle (PEM file or directory) to verify the upstream; default: system roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS to the upstream; needs --key.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for --cert.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Client certificate and key in one PKCS#12 file.
    #[arg(long, value_name = "FILE")]
    pkcs12: Option<PathBuf>,
    /// File holding the --pkcs12 password.
    #[arg(long, value_name = "FILE", requires = "pkcs12")]
    pkcs12_password_file: Option<PathBuf>,
    /// Name to send as SNI and verify the upstream certificate against.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
}

impl TlsFlags {
    fn settings(&self) -> config::UpstreamTls {
        config::UpstreamTls {
            server_name: self.server_name.clone(),
            ca: self.ca.clone(),
            client_cert: self.cert.clone(),
            client_key: self.key.clone(),
            pkcs12: self.pkcs12.clone().map(|file| config::Pkcs12 {
                file,
                password_file: self.pkcs12_password_file.clone(),
            }),
            ..Default::default()
        }
    }
}

fn admin_flag(admin: &str) -> anyhow::Result<AdminListen> {
    Ok(if admin == "off" {
        AdminListen::Off
    } else {
        AdminListen::Addr(ListenAddr::parse(admin).map_err(|e| anyhow::anyhow!("--admin: {e}"))?)
    })
}

fn access_log_flag(v: &str) -> anyhow::Result<AccessLogMode> {
    match v {
        "json" => Ok(AccessLogMode::Json),
        "off" => Ok(AccessLogMode::Off),
        other => anyhow::bail!("--access-log: `{other}` is not `json` or `off`"),
    }
}

/// Validates a quick-mode config the way `legate check` would, files included.
fn checked(cfg: config::Config) -> anyhow::Result<config::Config> {
    let mut issues = config::validate::validate(&cfg);
    if issues.is_empty() {
        issues = config::validate_tls::files(&cfg);
    }
    if let Some(first) = issues.first() {
        anyhow::bail!("{}: {}", first.path, first.message);
    }
    Ok(cfg)
}

fn quick_tcp_config(a: &TcpArgs) -> anyhow::Result<config::Config> {
    let listen =
        config::ListenOn::parse(&a.listen).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    let mode = match a.tls_mode.as_deref() {
        None | Some("direct") => config::TlsMode::Direct,
        Some("postgres") => config::TlsMode::Postgres,
        Some(other) => anyhow::bail!("--tls-mode: `{other}` is not `direct` or `postgres`"),
    };
    let settings = config::UpstreamTls {
        mode,
        ..a.tls_flags.settings()
    };
    let tls = if a.tls || a.tls_mode.is_some() {
        Some(settings)
    } else if settings != config::UpstreamTls::default() {
        anyhow::bail!("--ca, --cert, --key, --pkcs12 and --server-name need --tls or --tls-mode");
    } else {
        None
    };
    let cfg = quick::build_tcp(&quick::QuickTcp {
        listen,
        upstreams: a.upstreams.clone(),
        tls,
        admin: admin_flag(&a.admin)?,
        access_log: access_log_flag(&a.access_log)?,
        workers: a.workers,
    })?;
    checked(cfg)
}

fn quick_config(a: &HttpArgs) -> anyhow::Result<config::Config> {
    let listen = ListenAddr::parse(&a.listen).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    let admin = admin_flag(&a.admin)?;
    let access_log = access_log_flag(&a.access_log)?;
    let set_headers = a
        .set_headers
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--set-header `{kv}`: write NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = a
        .timeout
        .as_deref()
        .map(|t| {
            config::duration::parse_duration(t)
                .map(ConfigDuration)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))
        })
        .transpose()?;
    let cfg = quick::build(&QuickHttp {
        listen,
        upstreams: a.upstreams.clone(),
        set_headers,
        admin,
        access_log,
        workers: a.workers,
        timeout,
        tls: a.tls.settings(),
    })?;
    checked(cfg)
}

fn run(cfg: config::Config, config_file: Option<server::ConfigSource>) -> anyhow::Result<ExitCode> {
    legate::lifecycle::raise_open_files_limit();
    let running = server::start(
        cfg,
        Options {
            handle_signals: true,
            config_file,
            ..Default::default()
        },
    )
    .context("cannot start legate")?;
    let code = running.wait();
    tracing::info!(exit_code = code, "stopped");
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Runs a quick-mode config, or prints it with `--print-config`.
fn quick(
    mut cfg: config::Config,
    exit: &ExitFlags,
    print_config: bool,
    log_level: Option<&str>,
) -> anyhow::Result<ExitCode> {
    exit.apply(&mut cfg);
    if print_config {
        print!("{}", config::to_yaml(&cfg));
        return Ok(ExitCode::SUCCESS);
    }
    legate::telemetry::logging::init(log_level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    run(cfg, None)
}

fn addr_flag(flag: &str, v: &str) -> anyhow::Result<std::net::SocketAddr> {
    ListenAddr::parse(v)
        .map(|a| a.0)
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn wait(admin: &str, tcp: Option<&str>, timeout: &str) -> anyhow::Result<ExitCode> {
    use legate::lifecycle::probe::{self, Target};
    let timeout =
        config::duration::parse_duration(timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let target = match tcp {
        Some(t) => Target::Tcp(addr_flag("--tcp", t)?),
        None => Target::Admin(addr_flag("--admin", admin)?),
    };
    let took = probe::wait(target, timeout)?;
    eprintln!("legate wait: ready after {took:?}");
    Ok(ExitCode::SUCCESS)
}

fn top(admin: &str, once: bool, interval: &str) -> anyhow::Result<ExitCode> {
    let interval = config::duration::parse_duration(interval)
        .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    legate::telemetry::top::run(&legate::telemetry::top::Args {
        admin: addr_flag("--admin", admin)?,
        once,
        interval,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn shutdown(admin: &str) -> anyhow::Result<ExitCode> {
    let body = legate::lifecycle::probe::quit(addr_flag("--admin", admin)?)?;
    eprintln!("legate shutdown: {body}");
    Ok(ExitCode::SUCCESS)
}

fn reload(admin: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = legate::lifecycle::probe::http(
        addr_flag("--admin", admin)?,
        "POST",
        "/reload",
        std::time::Duration::from_secs(30),
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!("legate reload: {body}");
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, skip_files } => {
            let files = if skip_files {
                config::Files::Skip
            } else {
                config::Files::Check
            };
            return match config::load_file_with(&config, files) {
                Ok(cfg) => {
                    let routes: usize = cfg.listeners.iter().map(|l| l.routes.len()).sum();
                    println!(
                        "{}: ok ({} listener(s), {} route(s), {} upstream(s))",
                        config.display(),
                        cfg.listeners.len(),
                        routes,
                        cfg.upstreams.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for line in e.lines() {
                        eprintln!("{line}");
                    }
                    ExitCode::from(1)
                }
            };
        }
        Command::Http(args) => quick_config(&args)
            .and_then(|cfg| quick(cfg, &args.exit, args.print_config, cli.log_level.as_deref())),
        Command::Tcp(args) => quick_tcp_config(&args)
            .and_then(|cfg| quick(cfg, &args.exit, args.print_config, cli.log_level.as_deref())),
        Command::Run {
            config,
            workers,
            exit,
        } => match legate::telemetry::logging::init(cli.log_level.as_deref()) {
            Err(e) => Err(anyhow::anyhow!("--log-level: {e}")),
            Ok(()) => match config::load_file_hashed(&config, config::Files::Check) {
                Ok((mut cfg, hash)) => {
                    // Flags win over the file, at start and at every reload.
                    let overrides = move |cfg: &mut config::Config| {
                        if workers.is_some() {
                            cfg.runtime.workers = workers;
                        }
                        exit.apply(cfg);
                    };
                    overrides(&mut cfg);
                    let source = server::ConfigSource {
                        path: config,
                        hash,
                        overrides: std::sync::Arc::new(overrides),
                    };
                    run(cfg, Some(source))
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            },
        },
        Command::Wait {
            admin,
            tcp,
            timeout,
        } => wait(&admin, tcp.as_deref(), &timeout),
        Command::Shutdown { admin } => shutdown(&admin),
        Command::Top {
            admin,
            once,
            interval,
        } => top(&admin, once, &interval),
        Command::Reload { admin } => reload(&admin),
        Command::Schema => {
            print!("{}", config::schema::json());
            return ExitCode::SUCCESS;
        }
        Command::Demo(args) => {
            legate::telemetry::logging::init(Some(cli.log_level.as_deref().unwrap_or("error")))
                .map_err(|e| anyhow::anyhow!("--log-level: {e}"))
                .and_then(|()| legate::demo::run(args).map(|()| ExitCode::SUCCESS))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("legate: {e:#}");
            ExitCode::from(1)
        }
    }
}
