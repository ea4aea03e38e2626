//! The serve phase: the real `bindwatch serve` against the population (memory, CPU per
//! poll and per scrape, scrape latency with wrk and with paced scrapers), and
//! node_exporter's tcpstat on the same table.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::{all_proc_cpu, busiest_other, have, proc_cpu, status_kb, Guard};
use crate::http::{http_get, metric_sum, wait_http};
use crate::measure::median;
use crate::rawdiag::{Census, RawDiag};
use crate::tw::TwKeeper;

#[derive(Default)]
pub struct ServeRow {
    /// `--source`.
    pub source: String,
    /// `--poll.cpu-budget`: "0" walks the table every poll.
    pub cpu_budget: String,
    /// False: `--poll.interval 1h`, no poll after the first: the control for what
    /// the polls do to scrape latency.
    pub polling: bool,
    pub census: Census,
    pub first_poll: Duration,
    pub hwm_kb: u64,
    pub rss_kb: u64,
    pub polls: f64,
    pub poll_wall: Duration,
    pub cpu_per_poll: Duration,
    pub cpu_per_scrape: Duration,
    pub body_bytes: usize,
    pub wrk: Option<WrkResult>,
    pub wrk_gzip: Option<WrkResult>,
    /// Scrapes at a Prometheus-like pace: (plain, gzip).
    pub paced: Option<(Paced, Paced)>,
    /// The busiest process outside the benchmark while wrk and the paced scrapes ran:
    /// what else competed for the CPUs.
    pub busiest_other: String,
}

/// Latencies of paced scrapes, ms.
#[derive(Debug, Clone, Default)]
pub struct Paced {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Scrapers per paced run, their pace, and how long a run lasts.
pub const PACED_SCRAPERS: usize = 10;
pub const PACED_PERIOD: Duration = Duration::from_millis(50);
pub const PACED_RUN: Duration = Duration::from_secs(5);

/// Ten scrapers, each on its own keep-alive connection like a Prometheus target's,
/// each sending a request every 50 ms: 200 scrapes/s, far from saturating the agent,
/// so the latency is the scrape's own and not a queue's (wrk's closed loop measures the
/// queue). Open loop: a latency runs from the scheduled send time, so a stall also
/// counts against the requests it delays.
pub fn paced_scrapes(port: u16, gzip: bool) -> Option<Paced> {
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..PACED_SCRAPERS)
        .map(|i| {
            std::thread::spawn(move || -> io::Result<Vec<f64>> {
                let mut conn = TcpStream::connect(("127.0.0.1", port))?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                let req = format!(
                    "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
                    if gzip {
                        "Accept-Encoding: gzip\r\n"
                    } else {
                        ""
                    }
                );
                let mut lat = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                // Staggered like independent scrapers.
                let mut due = start + PACED_PERIOD.mul_f64(i as f64 / PACED_SCRAPERS as f64);
                while due < start + PACED_RUN {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    conn.write_all(req.as_bytes())?;
                    read_response(&mut conn, &mut buf)?;
                    lat.push(due.elapsed().as_secs_f64() * 1e3);
                    due += PACED_PERIOD;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().ok()?.ok()?);
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    Some(Paced {
        n: all.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: *all.last()?,
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive connection.
pub fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut head = Vec::new();
    let body_start = loop {
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed mid-response"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let headers = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let len: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("response without content-length"))?;
    let mut have = head.len() - body_start;
    while have < len {
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed mid-body"));
        }
        have += n;
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub p50: String,
    pub p99: String,
    pub max: String,
    pub rps: String,
    pub requests: u64,
    /// p99 of every repeat, when the run is the median of several.
    pub p99_runs: Vec<String>,
}

/// wrk's "419.00us" / "5.71ms" / "1.20s" in microseconds.
pub fn wrk_us(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|x| x * scale).unwrap_or(f64::NAN)
}

/// wrk `times` times; the run with the median p99, with every run's p99. A tail
/// percentile of one 10 s run on 2 shared CPUs moves by several times between
/// runs (scheduler slices), so one run is not a measurement.
pub fn budget_label(r: &ServeRow) -> String {
    if r.polling {
        format!("{} ({})", r.cpu_budget, r.source)
    } else {
        format!("{}, no polls ({})", r.cpu_budget, r.source)
    }
}

pub fn run_wrk_median(port: u16, secs: u32, gzip: bool, times: usize) -> Option<WrkResult> {
    let mut runs: Vec<WrkResult> = (0..times)
        .filter_map(|_| run_wrk(port, secs, gzip))
        .collect();
    runs.sort_by(|a, b| wrk_us(&a.p99).total_cmp(&wrk_us(&b.p99)));
    let all: Vec<String> = runs.iter().map(|r| r.p99.clone()).collect();
    let mid = runs.len().checked_sub(1)? / 2;
    let mut m = runs.swap_remove(mid);
    m.p99_runs = all;
    Some(m)
}

#[derive(Debug, Clone, Default)]
pub struct NodeExporterRow {
    pub census: Census,
    pub cpu_per_scrape: Duration,
    pub wall_per_scrape: Duration,
    pub hwm_kb: u64,
}

pub const SERVE_PORT: u16 = 10033;
/// First listener port of a population (clear of SERVE_PORT and NE_PORT).
pub const FIRST_PORT: u16 = 11_000;
pub const NE_PORT: u16 = 19100;

/// (polls finished, their summed duration in seconds) from bindwatch's own histogram.
pub fn polls_done(port: u16) -> (f64, f64) {
    http_get(port, "/metrics")
        .map(|b| {
            (
                metric_sum(&b, "bindwatch_poll_duration_seconds_count"),
                metric_sum(&b, "bindwatch_poll_duration_seconds_sum"),
            )
        })
        .unwrap_or((0.0, 0.0))
}

/// Waits until `n` more polls than `from` have finished (bounded).
pub fn wait_polls(port: u16, from: f64, n: f64, limit: Duration) -> (f64, f64) {
    let t0 = Instant::now();
    loop {
        let p = polls_done(port);
        if p.0 >= from + n || t0.elapsed() > limit {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `wrk` with 10 connections on 2 threads for `secs` (bounded by wrk itself).
pub fn run_wrk(port: u16, secs: u32, gzip: bool) -> Option<WrkResult> {
    let mut args = vec![
        "-t2".to_string(),
        "-c10".into(),
        format!("-d{secs}s"),
        "--timeout".into(),
        "10s".into(),
        "--latency".into(),
    ];
    if gzip {
        // What Prometheus sends.
        args.extend(["-H".into(), "Accept-Encoding: gzip".into()]);
    }
    args.push(format!("http://127.0.0.1:{port}/metrics"));
    // Not pinned: with bindwatch confined to one CPU and wrk to the other, the
    // 1M p99 rose to 25-35 ms, node_exporter's too (scripts/bench-pinned.sh); as
    // deployed, bindwatch shares every CPU of the node.
    let out = Command::new("wrk").args(&args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str, n: usize| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(n))
            .unwrap_or("?")
            .to_string()
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(WrkResult {
        p50: field("50%", 1),
        p99: field("99%", 1),
        max: field("Latency ", 3),
        rps: field("Requests/sec", 1),
        requests,
        p99_runs: Vec::new(),
    })
}

/// The real `bindwatch serve` against the population: memory, CPU per poll and per
/// scrape, scrape latency with wrk; then node_exporter's tcpstat on the same table.
pub fn serve_phase(
    tw: &mut TwKeeper,
    source: &str,
    cpu_budget: &str,
    polling: bool,
    plain_wrk: bool,
    wrk_secs: u32,
) -> ServeRow {
    let mut raw = RawDiag::open();
    let mut row = ServeRow {
        source: source.to_string(),
        cpu_budget: cpu_budget.to_string(),
        polling,
        ..Default::default()
    };
    let bin = env!("CARGO_BIN_EXE_bindwatch");
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args([
            "serve",
            "--web.listen-address",
            &format!("127.0.0.1:{SERVE_PORT}"),
            "--poll.interval",
            if polling { "1s" } else { "1h" },
            "--poll.cpu-budget",
            cpu_budget,
            "--source",
            source,
            "--log.level",
            "warn",
            // Never the host's /run/bindwatch/state.json.
            "--state.file",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("bindwatch serve");
    let pid = child.id();
    let serve = Guard(child);
    // The first poll (with the cold owner scan) runs before the server answers.
    assert!(
        wait_http(SERVE_PORT, Duration::from_secs(120)),
        "bindwatch serve did not answer"
    );
    row.first_poll = t0.elapsed();
    // wrk runs 3 times per encoding on the default-budget row (once otherwise).
    let times: u32 = if plain_wrk { 3 } else { 1 };
    let paced = if plain_wrk {
        2 * PACED_RUN
    } else {
        Duration::ZERO
    };
    // Within a TIME_WAIT's 60 s even on the default-budget row (30 s of wrk, 10 s paced).
    let need = Duration::from_secs(2 * u64::from(times * wrk_secs) + 15) + paced;
    tw.ensure(&mut raw, need);
    row.census = raw.census();
    if polling {
        // Several polls of this table, then the high-water mark.
        let p0 = wait_polls(
            SERVE_PORT,
            polls_done(SERVE_PORT).0,
            1.0,
            Duration::from_secs(60),
        );
        let c0 = proc_cpu(pid);
        let p1 = wait_polls(SERVE_PORT, p0.0, 5.0, Duration::from_secs(120));
        let c1 = proc_cpu(pid);
        // The scrapes that count polls cost a little CPU too; negligible beside a poll.
        row.polls = p1.0 - p0.0;
        row.poll_wall = Duration::from_secs_f64((p1.1 - p0.1) / row.polls.max(1.0));
        row.cpu_per_poll = (c1 - c0).div_f64(row.polls.max(1.0));
    }
    // CPU per scrape: back-to-back scrapes, minus the polls that ran meanwhile.
    let n = 200;
    let p2 = polls_done(SERVE_PORT);
    let c2 = proc_cpu(pid);
    for _ in 0..n {
        row.body_bytes = http_get(SERVE_PORT, "/metrics")
            .map(|b| b.len())
            .unwrap_or(0);
    }
    let c3 = proc_cpu(pid);
    if let Some(dir) = std::env::var_os("BENCH_SAVE_BODY") {
        let body = http_get(SERVE_PORT, "/metrics").unwrap_or_default();
        let f = Path::new(&dir).join(format!("metrics-{}-{}.prom", row.census.total, cpu_budget));
        let _ = std::fs::write(f, body);
    }
    let p3 = polls_done(SERVE_PORT);
    let scrape_cpu = (c3 - c2).saturating_sub(row.cpu_per_poll.mul_f64(p3.0 - p2.0));
    row.cpu_per_scrape = scrape_cpu / n;
    let mut ours = tw.pop.pids();
    ours.extend([pid, std::process::id()]);
    let (others0, w0) = (all_proc_cpu(), Instant::now());
    if have("wrk") {
        // The default-budget row is the one the latency targets are read from.
        if plain_wrk {
            row.wrk = run_wrk_median(SERVE_PORT, wrk_secs, false, times as usize);
        }
        row.wrk_gzip = run_wrk_median(SERVE_PORT, wrk_secs, true, times as usize);
    }
    if plain_wrk {
        row.paced = paced_scrapes(SERVE_PORT, false).zip(paced_scrapes(SERVE_PORT, true));
        match &row.paced {
            Some((p, g)) => log!(
                "   paced scrapes: p99 {:.2} ms plain, {:.2} ms gzip",
                p.p99,
                g.p99
            ),
            None => log!("   paced scrapes failed"),
        }
    }
    row.busiest_other = busiest_other(&others0, &all_proc_cpu(), w0.elapsed(), &ours);
    log!("   busiest other process meanwhile: {}", row.busiest_other);
    row.hwm_kb = status_kb(pid, "VmHWM:");
    row.rss_kb = status_kb(pid, "VmRSS:");
    drop(serve);
    row
}

pub fn node_exporter_phase(tw: &mut TwKeeper, raw: &mut RawDiag) -> Option<NodeExporterRow> {
    let child = Command::new("prometheus-node-exporter")
        .args([
            "--collector.disable-defaults",
            "--collector.tcpstat",
            &format!("--web.listen-address=127.0.0.1:{NE_PORT}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let _g = Guard(child);
    if !wait_http(NE_PORT, Duration::from_secs(60)) {
        return None;
    }
    tw.ensure(raw, Duration::from_secs(25));
    let census = raw.census();
    let mut walls = Vec::new();
    let c0 = proc_cpu(pid);
    let scrapes = 5;
    for _ in 0..scrapes {
        let t0 = Instant::now();
        let body = http_get(NE_PORT, "/metrics").unwrap_or_default();
        assert!(
            body.contains("node_tcp_connection_states"),
            "node_exporter answered without tcpstat"
        );
        walls.push(t0.elapsed());
    }
    let c1 = proc_cpu(pid);
    Some(NodeExporterRow {
        census,
        cpu_per_scrape: (c1 - c0) / scrapes,
        wall_per_scrape: median(walls),
        hwm_kb: status_kb(pid, "VmHWM:"),
    })
}
