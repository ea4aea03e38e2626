//! The TIME_WAIT part of a population, kept alive across a phase.

use std::time::{Duration, Instant};

use crate::popgen::Population;
use crate::rawdiag::RawDiag;

/// Seconds a TIME_WAIT lives (TCP_TIMEWAIT_LEN).
pub const TW_LIFE: Duration = Duration::from_secs(60);

/// The TIME_WAIT part of a population. TIME_WAITs live 60 s, so they are made just
/// before a phase measures, and remade (after the old ones are gone, so the count
/// stays exact under tcp_max_tw_buckets) when a phase would outlive them.
pub struct TwKeeper<'a> {
    pub pop: &'a mut Population,
    pub count: usize,
    pub made: Option<Instant>,
    /// How often the TIME_WAITs were made.
    pub batches: u32,
}

impl TwKeeper<'_> {
    /// Makes sure the TIME_WAITs exist and live at least `need` longer.
    pub fn ensure(&mut self, raw: &mut RawDiag, need: Duration) {
        if self.count == 0 {
            return;
        }
        if let Some(t) = self.made {
            if t.elapsed() + need < TW_LIFE {
                return;
            }
            log!("   TIME_WAITs would expire mid-phase: waiting for them to go, then remaking");
            let t0 = Instant::now();
            while raw.census().time_wait > (self.count as u64) / 100
                && t0.elapsed() < Duration::from_secs(90)
            {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let made = self.pop.add_time_wait(self.count).expect("time_wait");
        self.made = Some(Instant::now());
        self.batches += 1;
        log!("   made {made} TIME_WAIT");
    }
}
