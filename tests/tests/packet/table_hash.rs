//! Two data planes given one config, reached by different histories (so their backend
//! slot numbers differ), report one table hash and send every new flow to the same
//! backend; the hash is what the kernel's maps hold.

use super::*;

#[test]
fn gateways_with_one_config_agree_on_table_hash_and_backends() {
    in_netns(|| {
        let v = ep(vip4(100), 80, PROTO_TCP);
        let spec = |order: &[u8]| {
            let backends = order
                .iter()
                .map(|&i| backend("b", ep(backend4(i), 8080, PROTO_TCP), 1 + u32::from(i)))
                .collect();
            vec![vip("v", v, mode::NAT, backends)]
        };
        let mut first = Gateway::new();
        first.apply(&spec(&[0, 1, 2]));
        let mut second = Gateway::new();
        second.apply(&spec(&[5, 2]));
        second.apply(&spec(&[2, 1, 0]));
        let slot = |gw: &Gateway, i: u8| gw.dp.backend_slot(&v, &ep(backend4(i), 8080, PROTO_TCP));
        assert!(
            (0..3).all(|i| slot(&first, i) != slot(&second, i)),
            "the two histories should give every backend another slot"
        );

        let hash = |gw: &Gateway| {
            let hashes = gw.counters().table_hashes;
            let (_, hash) = hashes
                .iter()
                .find(|(e, _)| *e == v)
                .unwrap_or_else(|| panic!("no table hash for {v:?} in {hashes:?}"));
            *hash
        };
        assert_eq!(hash(&first), hash(&second));
        for (name, gw) in [("first", &first), ("second", &second)] {
            let read = gw
                .dp
                .read_table_hash(&v)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                read,
                Some(hash(gw)),
                "{name}: the kernel's maps hold the hashed table"
            );
        }

        let mut rng = Rng(0x7461_626c_6568_6173);
        for _ in 0..2000 {
            let f = random_flow(&mut rng, v.socket_addr(), PROTO_TCP);
            assert_eq!(send(&first, &f), send(&second, &f), "flow {f:?}");
        }
    });
}
