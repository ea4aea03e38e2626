//! The fields bindwatch reads from a `/proc/PID/stat` line: comm, parent, process group,
//! session and start time. Pure.
//!
//! Hand-written rather than `procfs::process::Stat`: that parser slices the line around
//! the comm's parentheses without checking the bounds, so a truncated or crafted line
//! (a fake `--path.procfs`, a process exiting mid-read) panics it; this one answers
//! `None`. It also reads only the five fields bindwatch uses, in every owner scan.

/// What one `/proc/PID/stat` line says of its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 2 without its parentheses.
    pub comm: String,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// Field 22, clock ticks after boot: tells a reused pid apart.
    pub start_time: u64,
}

/// Parses a `/proc/PID/stat` line. The comm may hold spaces and parentheses, so the
/// fields are counted after the last `)`; `None` for anything malformed.
pub fn parse(stat: &str) -> Option<ProcStat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut f = stat.get(close + 1..)?.split_ascii_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    // Fields 7 to 21, then field 22.
    let start_time = f.nth(15)?.parse().ok()?;
    Some(ProcStat {
        comm,
        ppid,
        pgid,
        sid,
        start_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        // Linux 6.18, x86_64: a comm with a space and parentheses.
        let line = "4242 (my (odd) daemon) S 1 4242 4242 0 -1 4194624 120 0 0 0 3 1 0 0 \
                    20 0 1 0 987654 12345678 900 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse(line),
            Some(ProcStat {
                comm: "my (odd) daemon".into(),
                ppid: 1,
                pgid: 4242,
                sid: 4242,
                start_time: 987_654,
            })
        );
        for bad in [
            "",
            "garbage",
            "(x)",
            "1 (x)",
            "1 (x) S 1",
            ")(",
            "1 (x) S a b c",
            "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
