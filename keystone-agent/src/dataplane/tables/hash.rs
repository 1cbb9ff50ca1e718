//! The per-VIP table hash: what a VIP's live Maglev table sends new flows to, as one
//! short value two gateways can compare.

use std::{collections::HashMap, fmt, net::SocketAddr, sync::OnceLock};

use keystone_common::{Backend, Endpoint, backend_flags};
use sha2::{Digest, Sha256};

use super::{MapWriter, Tables};
use crate::dataplane::MapAccessError;

/// The first 8 bytes of a SHA-256, shown as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableHash(pub [u8; 8]);

impl fmt::Display for TableHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Hashes a live table given as its entries' backend endpoints in table order
/// (`None`: an entry no backend that is up takes). The text hashed is
/// `maglev <size>\n` then one line per entry, `<address>:<port>` (`[v6]:port`) or `-`,
/// so the hash depends only on which backend each entry sends to: no slot numbers, no
/// per-host seed. Two gateways with the same config and health agree on it, whatever
/// order their backends were added in; an empty table (no backend up) is `maglev 0`.
pub fn table_hash(entries: impl ExactSizeIterator<Item = Option<SocketAddr>>) -> TableHash {
    let len = entries.len();
    let lines: Vec<String> = entries.map(line).collect();
    hash_lines(len, lines.iter().map(String::as_bytes))
}

/// One entry's line of the hashed text.
fn line(entry: Option<SocketAddr>) -> String {
    entry.map_or_else(|| "-\n".to_owned(), |addr| format!("{addr}\n"))
}

/// The hash of `maglev <len>\n` followed by `lines`.
fn hash_lines<'a>(len: usize, lines: impl Iterator<Item = &'a [u8]>) -> TableHash {
    let mut text = format!("maglev {len}\n").into_bytes();
    for l in lines {
        text.extend_from_slice(l);
    }
    digest(&text)
}

fn digest(text: &[u8]) -> TableHash {
    let digest = Sha256::digest(text);
    TableHash(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// [`table_hash`] of `ring` (backend slots) of VIP index `vip_index`, each slot's
/// endpoint from `backend` (slot → value): a slot out of range, of another VIP, or
/// whose backend is not up is `-` (the program sends no new flow there). Each slot's
/// line is formatted once (a table has many entries per backend): this runs on every
/// table change.
fn hash_slots(ring: &[u32], vip_index: u32, backend: impl Fn(u32) -> Option<Backend>) -> TableHash {
    let line_of = |slot| {
        line(
            backend(slot)
                .filter(|b| b.flags & backend_flags::UP != 0 && b.vip_index == vip_index)
                .map(|b| b.endpoint.socket_addr()),
        )
    };
    // Indexed by slot (slots are small); `NO_BACKEND` and other strays get their own.
    let mut lines: Vec<Option<String>> = Vec::new();
    let mut strays: HashMap<u32, String> = HashMap::new();
    let mut text = format!("maglev {}\n", ring.len()).into_bytes();
    for &slot in ring {
        let l = if (slot as usize) < MAX_INDEXED_SLOTS {
            if lines.len() <= slot as usize {
                lines.resize(slot as usize + 1, None);
            }
            lines[slot as usize].get_or_insert_with(|| line_of(slot))
        } else {
            strays.entry(slot).or_insert_with(|| line_of(slot))
        };
        text.extend_from_slice(l.as_bytes());
    }
    digest(&text)
}

/// Slots below this get their line from a vector, not a hash map.
const MAX_INDEXED_SLOTS: usize = 1 << 20;

/// A VIP's live table hash as `Tables` keeps it: unknown (`None`: a table found
/// pinned and not rewritten yet), or known once computed. A table this agent wrote is
/// hashed when status or metrics first ask, from the live stripe's shadow copy and
/// the backend slots: what it hashes changes only with a new table, which starts a
/// new `LiveHash`.
#[derive(Clone, Debug, Default)]
pub(super) struct LiveHash(Option<OnceLock<TableHash>>);

impl LiveHash {
    /// The hash of an empty table (no backend up).
    pub(super) fn empty() -> LiveHash {
        LiveHash(Some(OnceLock::from(table_hash(std::iter::empty()))))
    }

    /// A table just written, hashed when first read.
    pub(super) fn pending() -> LiveHash {
        LiveHash(Some(OnceLock::new()))
    }
}

impl<W: MapWriter> Tables<W> {
    /// The hash of the table VIP index `index`'s live stripe holds, from the shadow
    /// copy of what was written.
    fn shadow_hash(&self, index: u32) -> TableHash {
        let live = self.live_stripe[index as usize];
        let ring = &self.stripes[index as usize][live as usize].known;
        hash_slots(ring, index, |slot| self.slots.get(slot as usize)?.written)
    }

    /// Every programmed VIP's table hash (`None` for a VIP found pinned whose table
    /// was not rewritten yet). The first read after a table change computes it.
    pub fn table_hashes(&self) -> impl Iterator<Item = (&Endpoint, Option<TableHash>)> {
        self.vips
            .iter()
            .filter(|(_, v)| v.index < self.limits.max_vips)
            .map(|(e, v)| {
                let hash = v.hash.0.as_ref();
                (
                    e,
                    hash.map(|h| *h.get_or_init(|| self.shadow_hash(v.index))),
                )
            })
    }

    /// The VIP's table hash computed from what the maps hold now (its VIPS entry, the
    /// ring entries it points at, the backend slots): for checking the hash in
    /// [`Tables::table_hashes`] against the kernel. `None`: the VIP is not in VIPS.
    pub fn read_table_hash(&self, vip: &Endpoint) -> Result<Option<TableHash>, MapAccessError> {
        let Some((_, info)) = self.maps.read_vips()?.into_iter().find(|(e, _)| e == vip) else {
            return Ok(None);
        };
        let ring = self.maps.read_ring(info.ring_base, info.ring_size)?;
        let backends = self.maps.read_backends()?;
        Ok(Some(hash_slots(&ring, info.index, |slot| {
            backends.get(slot as usize).copied()
        })))
    }
}
