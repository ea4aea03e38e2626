//! One poll's walk of the TCP table, listeners first, as types: [`Session`] reads the
//! listeners and becomes [`Listened`], which alone can read the rest of the table and
//! is consumed doing so. The bpf source walks the table once this way: the iterator
//! stops after the listening hash and the [`Listened`] value holds it, parked, until
//! the rest of the table is read or the value is dropped. Borrowing the table
//! exclusively, it lets no other walk run in between except the UDP dump it offers,
//! which reads through a buffer of its own.

use super::bpf::Parked;
use super::netlink::ALL_STATES;
use super::{listen_mask, SocketTable, SourceError};
use crate::model::{Protocol, Socket};

/// A walk of the TCP table that has read nothing yet (see [`SocketTable::session`]).
pub struct Session<'t> {
    pub(super) table: &'t mut SocketTable,
}

impl<'t> Session<'t> {
    /// Streams the TCP listeners; the rest of the walk is left to the [`Listened`]
    /// this returns.
    ///
    /// # Errors
    /// As [`SocketTable::dump`].
    pub fn listeners<F: FnMut(&Socket) + ?Sized>(
        self,
        sink: &mut F,
    ) -> Result<Listened<'t>, SourceError> {
        let table = self.table;
        let parked = match table.with_bpf(|b| b.listeners(&mut *sink))? {
            Some(parked) => parked,
            None => {
                table.dump_kernel_view(Protocol::Tcp, listen_mask(), sink)?;
                None
            }
        };
        Ok(Listened { table, parked })
    }
}

/// A walk of the TCP table past its listeners (see [`Session::listeners`]).
pub struct Listened<'t> {
    table: &'t mut SocketTable,
    /// The bpf source's iterator, stopped after the listeners.
    parked: Option<Parked>,
}

impl Listened<'_> {
    /// Streams the UDP sockets whose state bit is in `states`; the TCP walk keeps its
    /// place.
    ///
    /// # Errors
    /// As [`SocketTable::dump`].
    pub fn udp<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        states: u32,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        self.table.dump(Protocol::Udp, states, sink)
    }

    /// Malformed records the caller skipped, counted with the table's malformed lines.
    pub fn count_malformed(&mut self, n: u64) {
        self.table.bad_lines += n;
    }

    /// Streams every TCP socket but the listeners, ending the walk. With `narrow`, a
    /// caller that needs the full socket only on the ports in its bitmap (65,536 bits
    /// in 1,024 words) and, elsewhere, only the state counts and the ephemeral tally's
    /// key (addresses and remote port where the local port is in its inclusive range)
    /// lets the bpf source read no more of those sockets: they come with unknown flags
    /// and inode 0. The other sources have every field anyway and stream full sockets.
    ///
    /// # Errors
    /// As [`SocketTable::dump`].
    pub fn table<F: FnMut(&Socket) + ?Sized>(
        self,
        narrow: Option<(&[u64], (u16, u16))>,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        let states = ALL_STATES & !listen_mask();
        let Listened { table, parked } = self;
        if table
            .with_bpf(|b| b.rest(parked, narrow, &mut *sink))?
            .is_some()
        {
            return table.dump_bound_only(Protocol::Tcp, states, sink);
        }
        table.dump_kernel_view(Protocol::Tcp, states, sink)
    }
}
