//! `loadgen`: a small load generator used by `bench/compare.sh`.
//!
//! * `loadgen rate` sends HTTP/1.1 requests on a fixed timetable (open loop)
//!   over a pool of keep-alive connections and prints a one-line JSON summary
//!   of the latency distribution.
//! * `loadgen hold` opens N keep-alive connections, sends one request on each,
//!   prints `holding N` and keeps them idle for a while so the caller can
//!   measure the memory the proxy spends per connection.
//!
//! Everything runs on a single-threaded tokio runtime so the generator stays
//! on one core (the caller pins it with `taskset`).

use std::error::Error as StdError;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

type Error = Box<dyn StdError + Send + Sync>;
type Sender = SendRequest<Empty<Bytes>>;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for bench/compare.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open-loop load at a fixed request rate; prints a JSON summary line.
    Rate(RateArgs),
    /// Open N keep-alive connections, send one request on each, hold them idle.
    Hold(HoldArgs),
}

#[derive(Args)]
struct RateArgs {
    /// Target URL (http only), e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    /// Requests per second to schedule.
    #[arg(long, default_value_t = 1000)]
    rps: u64,
    /// How long to send for (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Number of keep-alive connections (= max requests in flight).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Per-request timeout; a timed-out request counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct HoldArgs {
    /// Target URL (http only), e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    /// Number of connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// How long to hold the connections after all are established.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Maximum number of connection attempts in flight while establishing.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Timeout for connecting and for the single request on each connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Parses `10s`, `250ms`, `2m`, `1.5s`, `500us` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 10s, 500ms, 1m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        _ => return Err(format!("unknown duration unit {unit:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where to connect and what to ask for.
struct Target {
    /// `host:port` for `TcpStream::connect`.
    addr: String,
    /// Value of the `Host` header.
    host: HeaderValue,
    /// Origin-form request target (`/path?query`).
    path: Uri,
}

impl Target {
    fn parse(url: &str) -> Result<Target, Error> {
        let uri: Uri = url.parse()?;
        match uri.scheme_str() {
            Some("http") => {}
            _ => return Err(format!("only http:// URLs are supported, got {url:?}").into()),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = format!("{}:{}", authority.host(), port);
        let host = HeaderValue::from_str(authority.as_str())?;
        let path: Uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
        Ok(Target { addr, host, path })
    }

    fn request(&self) -> Result<Request<Empty<Bytes>>, Error> {
        Ok(Request::get(self.path.clone())
            .header(HOST, self.host.clone())
            .body(Empty::new())?)
    }
}

/// Opens a TCP connection and performs the HTTP/1.1 client handshake.
/// The connection driver runs as its own task.
async fn connect(target: &Target) -> Result<Sender, Error> {
    let stream = TcpStream::connect(&target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Errors surface through the sender; nothing to do with them here.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one GET on `sender` and reads the whole response body.
async fn send_one(target: &Target, sender: &mut Sender) -> Result<StatusCode, Error> {
    sender.ready().await?;
    let resp = sender.send_request(target.request()?).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// Sends one request, (re)connecting first if there is no usable connection.
/// On error the connection is dropped so the next call reconnects.
async fn request_on(target: &Target, conn: &mut Option<Sender>) -> Result<StatusCode, Error> {
    let sender = match conn.take() {
        Some(s) if !s.is_closed() => conn.insert(s),
        _ => conn.insert(connect(target).await?),
    };
    send_one(target, sender).await
}

/// Shared timetable: request `i` is due at `start + i / rps`.
struct Plan {
    start: Instant,
    total: u64,
    rps: u64,
    /// Stop taking new tickets after this instant (the backlog cannot drain).
    give_up: Instant,
    timeout: Duration,
    next: AtomicU64,
}

impl Plan {
    fn due(&self, i: u64) -> Instant {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rps);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[derive(Default)]
struct WorkerStats {
    sent: u64,
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

impl WorkerStats {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        self.first_error.get_or_insert(msg);
    }
}

/// One connection's worth of the open-loop generator.
///
/// Each worker repeatedly takes the next ticket from the timetable, waits
/// until it is due and sends it. A worker only takes a ticket when it is
/// idle, so tickets are served first-come-first-served by whichever
/// connection frees up first, like a queue in front of `connections` servers.
///
/// Latency start: if the ticket was taken *after* its due time (every
/// connection was busy, i.e. the server is pushing back) the latency counts
/// from the due time, so the queueing delay is included and coordinated
/// omission is avoided. If the worker was idle and simply waiting for the
/// timetable, latency counts from the actual send, so tokio's 1 ms timer
/// granularity does not leak into the results as fake server latency.
async fn rate_worker(
    target: Arc<Target>,
    plan: Arc<Plan>,
    mut conn: Option<Sender>,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.total {
            break;
        }
        let now = Instant::now();
        if now > plan.give_up {
            break;
        }
        let due = plan.due(i);
        let begin = if now >= due {
            due
        } else {
            sleep_until(due).await;
            Instant::now()
        };
        stats.sent += 1;
        match timeout(plan.timeout, request_on(&target, &mut conn)).await {
            Ok(Ok(status)) if status.is_success() => {
                stats.ok += 1;
                let us = begin.elapsed().as_micros();
                stats
                    .latencies_us
                    .push(u64::try_from(us).unwrap_or(u64::MAX));
            }
            Ok(Ok(status)) => stats.error(format!("HTTP status {status}")),
            Ok(Err(e)) => {
                conn = None;
                stats.error(format!("request failed: {e}"));
            }
            Err(_) => {
                conn = None;
                stats.error(format!("request timed out after {:?}", plan.timeout));
            }
        }
    }
    stats
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run_rate(args: RateArgs) -> Result<(), Error> {
    if args.rps == 0 || args.connections == 0 {
        return Err("--rps and --connections must be greater than zero".into());
    }
    let target = Arc::new(Target::parse(&args.url)?);

    // Establish the connections up front so the timetable starts warm.
    let mut connecting = JoinSet::new();
    for _ in 0..args.connections {
        let target = Arc::clone(&target);
        connecting.spawn(async move { connect(&target).await });
    }
    let mut conns = Vec::with_capacity(args.connections);
    let mut connect_errors = 0usize;
    let mut last_connect_error = None;
    while let Some(joined) = connecting.join_next().await {
        match joined? {
            Ok(sender) => conns.push(Some(sender)),
            Err(e) => {
                connect_errors += 1;
                last_connect_error = Some(e.to_string());
                conns.push(None);
            }
        }
    }
    if connect_errors == args.connections {
        let reason = last_connect_error.unwrap_or_default();
        return Err(format!("could not connect to {}: {reason}", target.addr).into());
    }
    if connect_errors > 0 {
        eprintln!(
            "loadgen: {connect_errors} of {} initial connections failed; workers will retry",
            args.connections
        );
    }

    let total = u64::try_from(
        args.duration
            .as_nanos()
            .saturating_mul(u128::from(args.rps))
            / 1_000_000_000,
    )
    .unwrap_or(u64::MAX)
    .max(1);
    let start = Instant::now() + Duration::from_millis(10);
    let plan = Arc::new(Plan {
        start,
        total,
        rps: args.rps,
        give_up: start + args.duration + args.timeout,
        timeout: args.timeout,
        next: AtomicU64::new(0),
    });

    let mut workers = JoinSet::new();
    for conn in conns {
        workers.spawn(rate_worker(Arc::clone(&target), Arc::clone(&plan), conn));
    }
    let mut sent = 0u64;
    let mut ok = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    let mut latencies = Vec::with_capacity(usize::try_from(total.min(1 << 24)).unwrap_or(0));
    while let Some(joined) = workers.join_next().await {
        let stats = joined?;
        sent += stats.sent;
        ok += stats.ok;
        errors += stats.errors;
        latencies.extend_from_slice(&stats.latencies_us);
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();

    println!(
        "{{\"target_rps\":{},\"scheduled\":{},\"sent\":{},\"ok\":{},\"errors\":{},\
         \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"achieved_rps\":{:.1}}}",
        args.rps,
        total,
        sent,
        ok,
        errors,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
        if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
    );
    if let Some(e) = first_error {
        eprintln!("loadgen: {errors} errors; first: {e}");
    }
    if sent < total {
        eprintln!("loadgen: only {sent} of {total} scheduled requests were sent (target too slow)");
    }
    Ok(())
}

async fn open_and_prime(
    target: &Target,
    limit: &Semaphore,
    wait: Duration,
) -> Result<Sender, Error> {
    let _permit = limit.acquire().await?;
    let work = async {
        let mut sender = connect(target).await?;
        let status = send_one(target, &mut sender).await?;
        if !status.is_success() {
            return Err(format!("HTTP status {status}").into());
        }
        Ok::<Sender, Error>(sender)
    };
    timeout(wait, work)
        .await
        .map_err(|_| format!("timed out after {wait:?}"))?
}

async fn run_hold(args: HoldArgs) -> Result<(), Error> {
    if args.connections == 0 || args.concurrency == 0 {
        return Err("--connections and --concurrency must be greater than zero".into());
    }
    let target = Arc::new(Target::parse(&args.url)?);
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();

    let mut opening = JoinSet::new();
    for _ in 0..args.connections {
        let target = Arc::clone(&target);
        let limit = Arc::clone(&limit);
        let wait = args.timeout;
        opening.spawn(async move { open_and_prime(&target, &limit, wait).await });
    }
    let mut held = Vec::with_capacity(args.connections);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(joined) = opening.join_next().await {
        match joined? {
            Ok(sender) => held.push(sender),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let setup_ms = started.elapsed().as_millis();
    if let Some(e) = &first_error {
        eprintln!("loadgen: {errors} connections failed; first: {e}");
    }

    // The caller waits for this line, then measures the server.
    let mut out = std::io::stdout().lock();
    writeln!(out, "holding {}", held.len())?;
    out.flush()?;
    drop(out);

    sleep(args.duration).await;

    let closed = held.iter().filter(|s| s.is_closed()).count();
    println!(
        "{{\"requested\":{},\"established\":{},\"errors\":{},\"setup_ms\":{},\"closed_during_hold\":{}}}",
        args.connections,
        held.len(),
        errors,
        setup_ms,
        closed,
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            Cmd::Rate(args) => run_rate(args).await,
            Cmd::Hold(args) => run_hold(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn target_parsing() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?c=1").expect("valid url");
        assert_eq!(t.addr, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?c=1");
        let t = Target::parse("http://127.0.0.1").expect("valid url");
        assert_eq!(t.addr, "127.0.0.1:80");
        assert_eq!(t.path, "/");
        assert!(Target::parse("https://127.0.0.1/").is_err());
    }
}
