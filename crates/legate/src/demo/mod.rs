//! `legate demo`: the seed's resilience scenario on loopback, in one command. A flaky
//! httpbin-like upstream, legate in front of it, and the naive client calling localhost.

pub mod upstream;

use crate::config::{self, quick, AccessLogMode, AdminListen, ListenAddr};
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
    /// Time between the client's requests.
    #[arg(long, default_value = "100ms", value_parser = parse_dur)]
    pub interval: Duration,
    /// Print only the summary, not every client line.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    config::duration::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.failure_rate) {
        anyhow::bail!("--failure-rate must be between 0 and 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let flaky = upstream::spawn(upstream::Faults { failure_rate: args.failure_rate }).await?;
        let cfg = quick::build(&quick::QuickHttp {
            listen: ListenAddr::parse("127.0.0.1:0").map_err(anyhow::Error::msg)?,
            upstreams: vec![format!("http://{}", flaky.addr)],
            set_headers: vec![("X-Client-ID".into(), "naive-client".into())],
            admin: AdminListen::Off,
            access_log: AccessLogMode::Off,
            workers: Some(1),
            timeout: None,
        })?;
        let running = server::start(cfg, Options::default())?;
        let addr = running.listener_addr("app").ok_or_else(|| anyhow::anyhow!("demo listener missing"))?;
        let target = format!("http://{addr}/get");
        println!("legate demo: upstream http://{} fails {:.0}% of requests (503 or reset)", flaky.addr, args.failure_rate * 100.0);
        println!("legate demo: legate listens on http://{addr} ; the naive client calls {target} every {:?} for {:?}\n", args.interval, args.duration);

        let mut client = naive_client::Client::new(&target)?;
        let mut latencies = Vec::new();
        let (mut ok, mut total) = (0u64, 0u64);
        let end = Instant::now() + args.duration;
        let mut tick = tokio::time::interval(args.interval);
        while Instant::now() < end {
            tick.tick().await;
            let started = Instant::now();
            let line = client.call_once().await;
            latencies.push(started.elapsed());
            total += 1;
            if line.is_success() {
                ok += 1;
            }
            if !args.quiet {
                println!("{line}");
            }
        }
        running.shutdown();
        tokio::task::spawn_blocking(move || running.wait()).await?;
        let injected = flaky.stats();
        latencies.sort();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
        println!("\n  requests sent by the client   {total}");
        println!("  client-seen success rate      {:.1}%", 100.0 * ok as f64 / total.max(1) as f64);
        println!(
            "  upstream-injected failures    {:.1}% ({} of {} upstream requests)",
            100.0 * injected.failed as f64 / injected.total.max(1) as f64,
            injected.failed,
            injected.total
        );
        println!("  latency p50 / p99            {:.1} ms / {:.1} ms", pct(0.5).as_secs_f64() * 1e3, pct(0.99).as_secs_f64() * 1e3);
        println!("\n  legate passes failures through here; the resilience policies (retries, breaker, outlier ejection) mask them.");
        Ok(())
    })
}
