//! `legate demo`: the seed's resilience scenario on loopback, in one command. Two flaky
//! httpbin-like endpoints (injected 503s, connection resets and latency spikes; one of them is
//! killed halfway through), legate in front of them, and the naive client calling localhost.
//! With `--no-resilience` the same run goes through a plain proxy, for contrast.

pub mod upstream;

use crate::config::{self, AccessLogMode, AdminListen, Config};
use crate::server::{self, Options};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long the client runs.
    #[arg(long, default_value = "20s", value_parser = parse_dur)]
    pub duration: Duration,
    /// Fraction of upstream requests that fail (half 503, half connection reset).
    #[arg(long, default_value_t = 0.3)]
    pub failure_rate: f64,
    /// Fraction of upstream requests delayed by a latency spike.
    #[arg(long, default_value_t = 0.05)]
    pub spike_rate: f64,
    /// Time between the client's requests.
    #[arg(long, default_value = "100ms", value_parser = parse_dur)]
    pub interval: Duration,
    /// Run without retries, outlier detection or the breaker: legate passes failures through.
    #[arg(long)]
    pub no_resilience: bool,
    /// Keep both endpoints alive for the whole run.
    #[arg(long)]
    pub no_kill: bool,
    /// Print only the summary, not every client line.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    config::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// The policies the demo shows; the same YAML a user would write.
fn demo_config(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    resilient: bool,
) -> anyhow::Result<Config> {
    let policies = if resilient {
        r#"
        retry:
          attempts: 10
          on: [connect-failure, reset, gateway-error, timeout]
          per_try_timeout: 150ms
          backoff: { base: 5ms, max: 50ms }
          budget: { ratio: 0.5, min_per_second: 10 }"#
    } else {
        ""
    };
    let upstream_policies = if resilient {
        r#"
    balance: p2c-ewma
    outlier_detection: { consecutive_failures: 8, base_ejection: 10s, max_ejection: 1m, max_ejected_percent: 50 }
    circuit_breaker: { failure_ratio: 0.9, min_requests: 20, window: 10s, open_for: 2s, probes: 3 }"#
    } else {
        r#"
    balance: round-robin
    outlier_detection: { enabled: false }"#
    };
    let yaml = format!(
        r#"
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: default
        upstream: httpbin
        timeout: 5s
        request_headers: {{ set: {{ X-Client-ID: naive-client }} }}{policies}
upstreams:
  - name: httpbin
    endpoints: ["{a}", "{b}"]{upstream_policies}
"#
    );
    let mut cfg = config::load_str("demo", &yaml, |_| None)?;
    cfg.admin.listen = AdminListen::Off;
    cfg.access_log = if std::env::var_os("LEGATE_DEMO_ACCESS_LOG").is_some() {
        AccessLogMode::Json
    } else {
        AccessLogMode::Off
    };
    Ok(cfg)
}

/// Sums every sample of `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    for (name, v) in [
        ("--failure-rate", args.failure_rate),
        ("--spike-rate", args.spike_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            anyhow::bail!("{name} must be between 0 and 1");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let faults = upstream::Faults {
            failure_rate: args.failure_rate,
            spike_rate: args.spike_rate,
            spike: Duration::from_millis(400),
        };
        let one = upstream::spawn(faults).await?;
        let two = upstream::spawn(faults).await?;
        let running = server::start(demo_config(one.addr, two.addr, !args.no_resilience)?, Options::default())?;
        let addr = running.listener_addr("app").ok_or_else(|| anyhow::anyhow!("demo listener missing"))?;
        let target = format!("http://{addr}/get");
        println!(
            "legate demo: two httpbin-like endpoints ({}, {}) fail {:.0}% of requests (503 or reset) and stall {:.0}% for 400ms",
            one.addr,
            two.addr,
            args.failure_rate * 100.0,
            args.spike_rate * 100.0
        );
        if !args.no_kill {
            println!("legate demo: endpoint {} is killed halfway through", two.addr);
        }
        println!(
            "legate demo: {} ; the naive client calls {target} every {:?} for {:?}\n",
            if args.no_resilience {
                "legate WITHOUT resilience policies (plain proxy)"
            } else {
                "legate with retries (budgeted), p2c-ewma, outlier detection and a circuit breaker"
            },
            args.interval,
            args.duration
        );

        let mut client = naive_client::Client::new(&target)?;
        let mut latencies = Vec::new();
        let (mut ok, mut total) = (0u64, 0u64);
        let started = Instant::now();
        let end = started + args.duration;
        let mut killed = args.no_kill;
        let mut tick = tokio::time::interval(args.interval);
        while Instant::now() < end {
            tick.tick().await;
            if !killed && started.elapsed() >= args.duration / 2 {
                two.kill();
                killed = true;
                if !args.quiet {
                    println!("--- endpoint {} killed ---", two.addr);
                }
            }
            let t = Instant::now();
            let line = client.call_once().await;
            latencies.push(t.elapsed());
            total += 1;
            if line.is_success() {
                ok += 1;
            }
            if !args.quiet {
                println!("{line}");
            }
        }
        let metrics = running.metrics.encode();
        running.shutdown();
        tokio::task::spawn_blocking(move || running.wait()).await?;
        let (s1, s2) = (one.stats(), two.stats());
        let (up_total, up_failed) = (s1.total + s2.total, s1.failed + s2.failed);
        latencies.sort();
        let pct = |p: f64| {
            latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
        };
        println!("\n  requests sent by the client   {total}");
        println!("  client-seen success rate      {:.1}%", 100.0 * ok as f64 / total.max(1) as f64);
        println!(
            "  upstream-injected failures    {:.1}% ({up_failed} of {up_total} upstream requests)",
            100.0 * up_failed as f64 / up_total.max(1) as f64
        );
        println!("  retries sent by legate        {}", metric_sum(&metrics, "legate_http_retries_total"));
        println!("  outlier ejections             {}", metric_sum(&metrics, "legate_outlier_ejections_total"));
        println!("  circuit breaker trips         {}", metric_sum(&metrics, "legate_circuit_trips_total"));
        println!(
            "  latency p50 / p99            {:.1} ms / {:.1} ms",
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
        if args.no_resilience {
            println!("\n  without policies the app sees every upstream failure; run without --no-resilience to see them masked.");
        }
        Ok(())
    })
}
