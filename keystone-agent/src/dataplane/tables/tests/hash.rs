//! The per-VIP table hash: equal for equal tables however they were reached, different
//! when the table sends flows elsewhere, and what the maps hold.

use sha2::{Digest, Sha256};

use super::*;

const A: &str = "198.18.1.10:8080";
const B: &str = "198.18.1.11:8080";
const C: &str = "198.18.1.12:8080";

fn hash_of(t: &Tables<FakeMaps>) -> TableHash {
    let (_, hash) = t
        .table_hashes()
        .find(|(v, _)| **v == ep(V))
        .expect("the VIP is programmed");
    hash.expect("the table was written by this Tables")
}

fn weighted(backends: &[(&str, u32)]) -> Vec<VipSpec> {
    vec![vip(
        V,
        backends.iter().map(|&(a, w)| backend(a, w)).collect(),
    )]
}

#[test]
fn equal_tables_hash_equal_whatever_the_slot_numbering_and_history() {
    let want = [(A, 1), (B, 2), (C, 3)];
    let mut first = tables();
    apply(&mut first, &weighted(&want));

    // Another gateway: backends added in the other order, after a backend that left
    // (so every slot number differs), and weights that changed and came back.
    let mut second = tables();
    apply(&mut second, &weighted(&[("198.18.1.99:8080", 1), (C, 3)]));
    apply(&mut second, &weighted(&[(C, 3), (B, 5), (A, 1)]));
    apply(&mut second, &weighted(&[(C, 3), (B, 2), (A, 1)]));
    for addr in [A, B, C] {
        assert_ne!(
            first.backend_slot(&ep(V), &ep(addr)),
            second.backend_slot(&ep(V), &ep(addr)),
            "{addr} should sit in another slot on the second gateway"
        );
    }
    assert_eq!(hash_of(&first), hash_of(&second));
}

#[test]
fn hash_changes_when_the_table_sends_flows_elsewhere() {
    let mut t = tables();
    apply(&mut t, &weighted(&[(A, 1), (B, 1)]));
    let even = hash_of(&t);
    apply(&mut t, &weighted(&[(A, 1), (B, 2)]));
    let uneven = hash_of(&t);
    assert_ne!(even, uneven, "other weights, other table");

    let mut down = weighted(&[(A, 1), (B, 1)]);
    down[0].backends[1].up = false;
    apply(&mut t, &down);
    assert_ne!(hash_of(&t), even, "a backend down leaves the table");
    assert_ne!(hash_of(&t), uneven);

    down[0].backends[0].up = false;
    apply(&mut t, &down);
    assert_eq!(
        hash_of(&t),
        table_hash(std::iter::empty()),
        "no backend up: the empty table's hash"
    );
}

#[test]
fn hash_is_what_the_maps_hold() {
    let mut t = tables();
    for backends in [
        &[(A, 1), (B, 1)][..],
        &[(A, 1), (B, 1), (C, 4)],
        &[(C, 4), (A, 2)],
    ] {
        apply(&mut t, &weighted(backends));
        assert_eq!(
            t.read_table_hash(&ep(V)).expect("read").expect("in VIPS"),
            hash_of(&t),
            "after {backends:?}"
        );
    }
    // One ring entry changed behind the agent's back shows in the read-back hash.
    let info = t.maps().vips[&ep(V)];
    let entry = info.ring_base;
    let slot = t.maps().rings[&entry];
    let other = t.backend_slot(&ep(V), &ep(A)).expect("A has a slot");
    let other = if other == slot {
        t.backend_slot(&ep(V), &ep(C)).expect("C has a slot")
    } else {
        other
    };
    t.maps_mut().rings.insert(entry, other);
    assert_ne!(
        t.read_table_hash(&ep(V)).expect("read").expect("in VIPS"),
        hash_of(&t)
    );
}

/// The documented text: `maglev <size>` and one `address:port` (or `-`) line per
/// entry; the hash is its SHA-256's first 8 bytes in hex.
#[test]
fn hash_is_the_sha256_prefix_of_the_documented_text() {
    let six: std::net::SocketAddr = "[2001:2::6]:443".parse().expect("address");
    let four: std::net::SocketAddr = A.parse().expect("address");
    let hash = table_hash([Some(four), None, Some(six)].into_iter());
    let digest = Sha256::digest(b"maglev 3\n198.18.1.10:8080\n-\n[2001:2::6]:443\n");
    assert_eq!(hash.to_string(), hex::encode(&digest[..8]));
    assert_eq!(hash.to_string().len(), 16);
}
