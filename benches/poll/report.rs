//! The report on stdout: Markdown tables of what the phases measured.

use std::time::Duration;

use crate::measure::{min_median_max, ms, Sample};
use crate::owners::{OwnersResult, Stats};
use crate::serve::{
    budget_label, NodeExporterRow, ServeRow, WrkResult, PACED_PERIOD, PACED_RUN, PACED_SCRAPERS,
};
use crate::table::{TableRow, METHODS};

/// One size's table-read phase: (size, row, build time, TIME_WAIT time, TIME_WAIT batches).
pub type TableReport = (String, TableRow, Duration, Duration, u32);

pub fn tables(table_rows: &[TableReport]) {
    if !table_rows.is_empty() {
        println!("\n## Table read: median wall / CPU per read, ms\n");
        print!("| sockets |");
        for m in METHODS {
            print!(" {m} |");
        }
        println!(" poll CPU / raw 1-walk CPU | poll CPU / nl decode CPU | ss CPU / poll CPU |");
        print!("|---|");
        for _ in 0..METHODS.len() + 3 {
            print!("---|");
        }
        println!();
        for (name, row, _, _, _) in table_rows {
            print!("| {name} |");
            for m in METHODS {
                let (w, c, _) = row.methods.get(m).copied().unwrap_or_default();
                print!(" {:.1} / {:.1} |", ms(w), ms(c));
            }
            let cpu = |m: &str| row.cpu_secs(m);
            println!(
                " {:.2} | {:.2} | {:.2} |",
                cpu("poll") / cpu("raw 1-walk"),
                cpu("poll") / cpu("nl decode 1-walk"),
                cpu("ss -tan") / cpu("poll")
            );
        }
        println!("\nThe same ratios round by round (min / median / max):\n");
        for (name, row, _, _, _) in table_rows {
            let spread =
                |f: &dyn Fn(&(f64, f64)) -> f64| min_median_max(row.round_ratios.iter().map(f), 2);
            println!(
                "- {name}: `ss` CPU / poll CPU {}; poll CPU / raw 1-walk CPU {} ({} rounds)",
                spread(&|r| r.0),
                spread(&|r| r.1),
                row.round_ratios.len()
            );
        }
        println!(
        "\nThe bpf source, round by round (min / median / max): a full poll with `--source bpf` \
         against the raw one-walk sock_diag dump, and against the netlink poll:\n"
    );
        for (name, row, _, _, _) in table_rows {
            let spread =
                |f: &dyn Fn(&(f64, f64)) -> f64| min_median_max(row.bpf_ratios.iter().map(f), 2);
            let cpu = |m: &str| row.cpu_secs(m);
            println!(
            "- {name}: poll (bpf) CPU / raw 1-walk CPU {} (medians {:.2}); poll (bpf) CPU / poll CPU {}; \
             bpf 1-walk CPU / raw 1-walk CPU {:.2}, narrowed {:.2}; raw bound-only CPU / raw 1-walk CPU {:.2} \
             ({} rounds)",
            spread(&|r| r.0),
            cpu("poll (bpf)") / cpu("raw 1-walk"),
            spread(&|r| r.1),
            cpu("bpf 1-walk") / cpu("raw 1-walk"),
            cpu("bpf 1-walk, narrowed") / cpu("raw 1-walk"),
            cpu("raw bound-only") / cpu("raw 1-walk"),
            row.bpf_ratios.len()
        );
        }
        println!("\nPopulations (census at the start of each round) and first polls:\n");
        for (name, row, build, tw, batches) in table_rows {
            let fp = row.first_poll.unwrap();
            println!(
            "- {name}: {} .. {}; {} runs; built in {:.1}s + {:.1}s for TIME_WAITs (made {} times); \
             first poll (cold owner scan) {:.0} ms wall / {:.0} ms CPU; sockets counted per method: {}",
            row.census_min,
            row.census_max,
            row.runs,
            build.as_secs_f64(),
            tw.as_secs_f64(),
            batches,
            ms(fp.wall),
            ms(fp.cpu),
            row.methods
                .iter()
                .filter(|(_, v)| v.2 > 0)
                .map(|(k, v)| format!("{k}={}", v.2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        }
    }
}

pub fn serve(serve_rows: &[(String, ServeRow)]) {
    if !serve_rows.is_empty() {
        println!("\n## bindwatch serve (poll interval 1s)\n");
        println!(
            "budget 0.01 is the default `--poll.cpu-budget` (the table is walked when the saved-up CPU pays \
             for it, listeners every poll); budget 0 walks the whole table every poll; \"no polls\" is the \
             control: `--poll.interval 1h`, so nothing runs after the first poll but the scrapes.\n"
        );
        println!(
            "| table | --poll.cpu-budget | first poll s | VmHWM MiB | VmRSS MiB | poll wall ms | CPU/poll ms | \
             CPU/scrape ms | body KiB | wrk p50 / p99 / max | wrk gzip p50 / p99 / max |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (name, r) in serve_rows {
            let w = |x: &Option<WrkResult>| {
                x.as_ref()
                    .map(|w| {
                        let runs = if w.p99_runs.len() > 1 {
                            format!(
                                " (p99 of {} runs: {})",
                                w.p99_runs.len(),
                                w.p99_runs.join(", ")
                            )
                        } else {
                            String::new()
                        };
                        format!("{} / {} / {}{runs}", w.p50, w.p99, w.max)
                    })
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "| {name}: {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.3} | {:.1} | {} | {} |",
                r.census.total,
                budget_label(r),
                r.first_poll.as_secs_f64(),
                r.hwm_kb as f64 / 1024.0,
                r.rss_kb as f64 / 1024.0,
                ms(r.poll_wall),
                ms(r.cpu_per_poll),
                ms(r.cpu_per_scrape),
                r.body_bytes as f64 / 1024.0,
                w(&r.wrk),
                w(&r.wrk_gzip),
            );
        }
        println!();
        for (n, r) in serve_rows {
            println!(
                "- {n}, budget {}: {} polls timed; wrk {} + {} (gzip) requests at {} + {} req/s; \
                 busiest other process meanwhile: {}",
                budget_label(r),
                r.polls,
                r.wrk.as_ref().map(|w| w.requests).unwrap_or(0),
                r.wrk_gzip.as_ref().map(|w| w.requests).unwrap_or(0),
                r.wrk.as_ref().map(|w| w.rps.as_str()).unwrap_or("-"),
                r.wrk_gzip.as_ref().map(|w| w.rps.as_str()).unwrap_or("-"),
                r.busiest_other,
            );
        }
        println!(
            "\n### Paced scrapes: {PACED_SCRAPERS} keep-alive scrapers, one request each every {} ms, {} s, open loop\n",
            PACED_PERIOD.as_millis(),
            PACED_RUN.as_secs()
        );
        println!("| table | --poll.cpu-budget | scrapes | plain p50 / p99 / max ms | gzip p50 / p99 / max ms |");
        println!("|---|---|---|---|---|");
        for (n, r) in serve_rows {
            if let Some((p, g)) = &r.paced {
                println!(
                    "| {n} | {} | {} + {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
                    budget_label(r),
                    p.n,
                    g.n,
                    p.p50,
                    p.p99,
                    p.max,
                    g.p50,
                    g.p99,
                    g.max
                );
            }
        }
    }
}

pub fn node_exporter(
    ne_rows: &[(String, Option<NodeExporterRow>)],
    serve_rows: &[(String, ServeRow)],
) {
    if !ne_rows.is_empty() {
        println!(
            "\n## node_exporter --collector.disable-defaults --collector.tcpstat, same tables\n"
        );
        println!(
            "| table | ne CPU/scrape ms | ne wall/scrape ms | ne VmHWM MiB | bindwatch CPU per full-walk poll + scrape ms | \
             ratio ne / bindwatch (walk every poll) | bindwatch CPU per 15 s at the default budget, ms (at most) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (name, n) in ne_rows {
            let Some(n) = n else {
                println!("| {name} | (did not start) | | | | | |");
                continue;
            };
            let full = serve_rows
                .iter()
                .find(|(x, r)| x == name && r.polling && r.cpu_budget == "0")
                .map(|(_, r)| r.cpu_per_poll + r.cpu_per_scrape)
                .unwrap_or_default();
            let dflt = serve_rows
                .iter()
                .find(|(x, r)| x == name && r.polling && r.cpu_budget == "0.01")
                .map(|(_, r)| {
                    // Every poll is charged to the budget: 1% of a core, unless even the
                    // listener-only polls cost more than that.
                    (r.cpu_per_poll.as_secs_f64() * 15.0).max(0.01 * 15.0) * 1e3
                })
                .unwrap_or(f64::NAN);
            println!(
                "| {name}: {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} |",
                n.census.total,
                ms(n.cpu_per_scrape),
                ms(n.wall_per_scrape),
                n.hwm_kb as f64 / 1024.0,
                ms(full),
                n.cpu_per_scrape.as_secs_f64() / full.as_secs_f64(),
                dflt,
            );
        }
    }
}

pub fn owners(o: &OwnersResult) {
    println!(
        "\n## Owner attribution: {} in {} processes\n",
        o.census, o.procs
    );
    println!("| poll | wall ms | CPU ms | full_scans | cache_hits | fds_read |");
    println!("|---|---|---|---|---|---|");
    let line = |name: &str, s: &Sample, st: Option<&Stats>| {
        let (a, b, c) = st
            .map(|x| {
                (
                    x.full_scans.to_string(),
                    x.cache_hits.to_string(),
                    x.fds_read.to_string(),
                )
            })
            .unwrap_or(("-".into(), "-".into(), "-".into()));
        println!(
            "| {name} | {:.1} | {:.1} | {a} | {b} | {c} |",
            ms(s.wall),
            ms(s.cpu)
        );
    };
    line("first (cold cache)", &o.first, Some(&o.first_stats));
    line(
        "steady, owners on (median; stats per poll)",
        &o.on,
        Some(&o.per_poll),
    );
    line("steady, owners off (median)", &o.off, None);
    line(
        "after one new listener appeared",
        &o.after_new,
        Some(&o.after_new_stats),
    );
    line("the poll after that", &o.settled, Some(&o.settled_stats));
    let share = (o.on.cpu.as_secs_f64() - o.off.cpu.as_secs_f64()) / o.on.cpu.as_secs_f64();
    println!(
            "\nSteady-state attribution: {:.1} ms CPU of a {:.1} ms poll = {:.0}% ({} sockets attributed per poll)",
            ms(o.on.cpu.saturating_sub(o.off.cpu)),
            ms(o.on.cpu),
            share * 100.0,
            o.on.count,
        );
    println!("\nThe same steps replayed one by one (median CPU per poll; the collector probes listeners and at most --probe_max others):\n");
    for (what, d) in &o.parts {
        println!("- {what}: {:.1} ms", ms(*d));
    }
}
