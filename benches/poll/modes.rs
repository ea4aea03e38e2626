//! The modes that replace the benchmark run: `--profile` (build, then only poll, for
//! `perf`) and `--hold` (build, then keep the population until Enter).

use std::io::{self, BufRead, Write};
use std::path::Path;

use bindwatch::collect::{CollectOptions, Collector};
use bindwatch::source::netlink::NetlinkDiag;

use crate::args::Size;
use crate::host::fresh_netns;
use crate::measure::{full_scan_opts, measure, median, ms, user_cpu};
use crate::popgen::{Plan, Population};
use crate::rawdiag::{tcp_req, RawDiag};
use crate::serve::FIRST_PORT;

pub fn profile(size: Size, polls: usize) {
    fresh_netns();
    let plan = Plan::sized(size.total, size.listeners, size.tw, FIRST_PORT).parked(size.parked);
    let mut pop = Population::build(&plan).expect("population");
    let mut c = Collector::new(full_scan_opts(Path::new("/proc"))).expect("collector");
    c.poll(&[], &[]).expect("poll");
    pop.add_time_wait(size.tw).expect("time_wait");
    let mut raw = RawDiag::open();
    let mut raw_nocap = RawDiag::open_as_bindwatch();
    let mut nl = NetlinkDiag::open().expect("netlink");
    log!("profiling {} polls of {}", polls, raw.census());
    let (mut ps, mut ds, mut rs, mut ns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..polls {
        let u0 = user_cpu();
        let s = measure(&mut || c.poll(&[], &[]).map(|_| 0).expect("poll"));
        let su = user_cpu() - u0;
        let u0 = user_cpu();
        let d = measure(&mut || {
            let mut n = 0u64;
            nl.dump(tcp_req(libc::AF_UNSPEC), &mut |_| n += 1)
                .expect("dump");
            n
        });
        let du = user_cpu() - u0;
        let u0 = user_cpu();
        let r = measure(&mut || raw.one_walk());
        let ru = user_cpu() - u0;
        let n = measure(&mut || raw_nocap.one_walk());
        log!(
            "poll {:.1} ms CPU ({:.0} user), nl decode 1-walk {:.1} ({:.0} user), raw 1-walk {:.1} ({:.0} user), raw 1-walk no NET_ADMIN {:.1}",
            ms(s.cpu),
            ms(su),
            ms(d.cpu),
            ms(du),
            ms(r.cpu),
            ms(ru),
            ms(n.cpu)
        );
        ps.push(s.cpu);
        ds.push(d.cpu);
        rs.push(r.cpu);
        ns.push(n.cpu);
    }
    // What a poll without the table walk costs (the agent's default between walks),
    // and what every poll publishes: both exposition formats, the landing page's
    // tables, and gzip of both bodies.
    let (mut lv, mut rv, mut gz, mut lo) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut off_opts = CollectOptions::new(Path::new("/proc"));
    off_opts.owners = false;
    let mut off = Collector::new(off_opts).expect("collector");
    off.poll(&[], &[]).expect("poll");
    let selfm = bindwatch::metrics::SelfMetrics::new();
    let (mut body, mut om) = (String::new(), String::new());
    for _ in 0..polls {
        let mut snap = None;
        lv.push(
            measure(&mut || {
                snap = Some(c.poll_views(&[], &[], false).expect("poll"));
                0
            })
            .cpu,
        );
        let snap = snap.expect("snapshot");
        lo.push(
            measure(&mut || {
                off.poll_views(&[], &[], false).expect("poll");
                0
            })
            .cpu,
        );
        rv.push(
            measure(&mut || {
                let exp = bindwatch::metrics::render_all(
                    &[(None, &snap)],
                    &selfm,
                    &bindwatch::metrics::Extras::default(),
                );
                let tables = bindwatch::landing::tables(&[(None, &snap)]);
                body = exp.text;
                om = exp.openmetrics;
                (body.len() + om.len() + tables.len()) as u64
            })
            .cpu,
        );
        gz.push(
            measure(&mut || {
                use flate2::{write::GzEncoder, Compression};
                let mut n = 0;
                for b in [&body, &om] {
                    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
                    e.write_all(b.as_bytes()).expect("gzip");
                    n += e.finish().expect("gzip").len() as u64;
                }
                n
            })
            .cpu,
        );
    }
    println!(
        "median CPU: poll without the table walk {:.1} ms ({:.1} ms with owners off); render (text, OpenMetrics, landing tables) {:.1} ms and gzip of both {:.1} ms, a {:.0} KiB text body",
        ms(median(lv)),
        ms(median(lo)),
        ms(median(rv)),
        ms(median(gz)),
        body.len() as f64 / 1024.0
    );
    let (p, d, r, n) = (median(ps), median(ds), median(rs), median(ns));
    println!(
        "median CPU: poll {:.1} ms, nl decode {:.1} ms, raw {:.1} ms, raw no NET_ADMIN {:.1} ms; \
         poll/raw {:.3}, decode/raw {:.3}, poll/raw no NET_ADMIN {:.3}",
        ms(p),
        ms(d),
        ms(r),
        ms(n),
        p.as_secs_f64() / r.as_secs_f64(),
        d.as_secs_f64() / r.as_secs_f64(),
        p.as_secs_f64() / n.as_secs_f64()
    );
}

pub fn hold(size: Size) {
    fresh_netns();
    let plan = Plan::sized(size.total, size.listeners, size.tw, FIRST_PORT).parked(size.parked);
    let mut pop = Population::build(&plan).expect("population");
    pop.add_time_wait(size.tw).expect("time_wait");
    println!(
        "holding {} ({} listen, {} established, {} time_wait for 60 s) in {} processes: {:?}",
        size.name,
        pop.listeners,
        pop.established,
        pop.time_wait,
        pop.pids().len(),
        pop.pids()
    );
    println!(
        "enter the namespace with: nsenter -t {} -n; press Enter to tear down",
        pop.pids()[0]
    );
    let _ = io::stdin().lock().lines().next();
}
